package daemon_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/grpc"

	"github.com/quarrynet/quarry/internal/daemon"
	"github.com/quarrynet/quarry/internal/identity"
	"github.com/quarrynet/quarry/internal/peertls"
	testingv1 "github.com/quarrynet/quarry/proto/quarry/testing/v1"
)

// Seeds of the test identities.
const (
	serverSeed   = 1
	replicaSeed  = 2 // has role "replica"
	strangerSeed = 3 // has no role
	adminSeed    = 4 // has role "admin"
	brokenSeed   = 5 // the resolver fails for it
)

const probeService = "/quarry.testing.v1.ProbeService/"

func key(t testing.TB, seed byte) *identity.Key {
	t.Helper()
	k, err := identity.FromSeed(bytes.Repeat([]byte{seed}, identity.SeedSize))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// probe implements the test service. Handlers that are asked to block
// announce themselves on entered and wait for release (or their context).
type probe struct {
	testingv1.UnimplementedProbeServiceServer
	log     *slog.Logger
	entered chan struct{}
	release chan struct{}
}

func newProbe() *probe {
	return &probe{entered: make(chan struct{}, 16), release: make(chan struct{})}
}

func (p *probe) answer(ctx context.Context, req *testingv1.EchoRequest) (*testingv1.EchoResponse, error) {
	if req.GetPanic() {
		panic("probe: asked to panic")
	}
	if req.GetBlock() {
		p.entered <- struct{}{}
		select {
		case <-p.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	resp := &testingv1.EchoResponse{
		Payload:   req.GetPayload(),
		RequestId: daemon.RequestID(ctx),
		Role:      string(daemon.RoleFromContext(ctx)),
	}
	if id, err := peertls.PeerFromContext(ctx); err == nil {
		resp.PeerId = id.String()
	}
	if dl, ok := ctx.Deadline(); ok {
		resp.HasDeadline = true
		resp.DeadlineMillis = time.Until(dl).Milliseconds()
	}
	p.log.InfoContext(ctx, "probe answered")
	return resp, nil
}

func (p *probe) Echo(ctx context.Context, req *testingv1.EchoRequest) (*testingv1.EchoResponse, error) {
	return p.answer(ctx, req)
}

func (p *probe) EchoStream(stream grpc.BidiStreamingServer[testingv1.EchoRequest, testingv1.EchoResponse]) error {
	for {
		req, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		resp, err := p.answer(stream.Context(), req)
		if err != nil {
			return err
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

// logBuffer collects JSON log records; safe for concurrent use.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// records returns the logged records whose msg is msg.
func (b *logBuffer) records(t testing.TB, msg string) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(b.String()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var rec map[string]any
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatalf("log line is not JSON: %v: %s", err, sc.Bytes())
		}
		if rec["msg"] == msg {
			out = append(out, rec)
		}
	}
	return out
}

// harness is one daemon.Server serving the probe over 127.0.0.1.
type harness struct {
	srv    *daemon.Server
	probe  *probe
	logs   *logBuffer
	cancel context.CancelFunc
	done   chan error // Run's result
}

// defaultConfig admits Anyone to the probe service, resolves the test
// identities' roles, and logs JSON at debug level into logs.
func defaultConfig(t testing.TB, logs *logBuffer) daemon.Config {
	roles := map[string]daemon.Role{
		key(t, replicaSeed).PeerID().String(): "replica",
		key(t, adminSeed).PeerID().String():   "admin",
	}
	broken := key(t, brokenSeed).PeerID()
	logger, err := daemon.NewLogger(logs, "json", slog.LevelDebug)
	if err != nil {
		t.Fatal(err)
	}
	return daemon.Config{
		Name:     "testd",
		Key:      key(t, serverSeed),
		GRPCAddr: "127.0.0.1:0",
		HTTPAddr: "127.0.0.1:0",
		Logger:   logger,
		Roles:    daemon.Roles{probeService: {daemon.Anyone}},
		Resolve: func(_ context.Context, id peer.ID) (daemon.Role, error) {
			if id == broken {
				return "", fmt.Errorf("membership not loaded")
			}
			return roles[id.String()], nil
		},
	}
}

// start runs a server built from defaultConfig as changed by edit. The
// test's cleanup stops it and checks that Run returned nil.
func start(t *testing.T, edit func(*daemon.Config)) *harness {
	t.Helper()
	h := &harness{probe: newProbe(), logs: &logBuffer{}, done: make(chan error, 1)}
	cfg := defaultConfig(t, h.logs)
	if edit != nil {
		edit(&cfg)
	}
	srv, err := daemon.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.srv = srv
	h.probe.log = srv.Logger()
	testingv1.RegisterProbeServiceServer(srv, h.probe)
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { h.done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := h.wait(t); err != nil {
			t.Errorf("Run: %v", err)
		}
		if t.Failed() {
			t.Logf("server log:\n%s", h.logs)
		}
	})
	return h
}

// wait returns Run's result, failing the test if Run does not return
// within 10 s. It may be called more than once.
func (h *harness) wait(t testing.TB) error {
	t.Helper()
	select {
	case err := <-h.done:
		h.done <- err
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return within 10s of its context being cancelled")
		return nil
	}
}

// conn dials the server as the identity of seed.
func (h *harness) conn(t testing.TB, seed byte) *grpc.ClientConn {
	t.Helper()
	cert, err := peertls.New(key(t, seed))
	if err != nil {
		t.Fatal(err)
	}
	cc, err := daemon.Dial(h.srv.GRPCAddr(), cert, h.srv.PeerID())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func (h *harness) client(t testing.TB, seed byte) testingv1.ProbeServiceClient {
	return testingv1.NewProbeServiceClient(h.conn(t, seed))
}

// get fetches a path from the HTTP server: status and body.
func (h *harness) get(t testing.TB, path string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + h.srv.HTTPAddr() + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// eventually polls cond every 10 ms until it returns nil or timeout passes.
func eventually(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %v", timeout, err)
		}
		<-tick.C
	}
}

// callCtx is a test call's context: bounded, so a hung server fails the
// test instead of hanging it.
func callCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}
