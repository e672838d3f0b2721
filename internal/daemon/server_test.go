package daemon_test

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"github.com/quarrynet/quarry/internal/daemon"
	testingv1 "github.com/quarrynet/quarry/proto/quarry/testing/v1"
)

var hexID = regexp.MustCompile(`^[0-9a-f]{32}$`)

func wantCode(t testing.TB, err error, want codes.Code) *status.Status {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != want {
		t.Fatalf("got %v (%v), want code %v", st.Code(), err, want)
	}
	return st
}

func TestRequestID(t *testing.T) {
	h := start(t, nil)
	c := h.client(t, replicaSeed)

	t.Run("from client metadata", func(t *testing.T) {
		ctx := metadata.AppendToOutgoingContext(callCtx(t), daemon.RequestIDHeader, "req-from-client")
		var hdr metadata.MD
		resp, err := c.Echo(ctx, &testingv1.EchoRequest{}, grpc.Header(&hdr))
		if err != nil {
			t.Fatal(err)
		}
		if resp.RequestId != "req-from-client" {
			t.Errorf("handler saw request ID %q, want the client's", resp.RequestId)
		}
		if got := hdr.Get(daemon.RequestIDHeader); len(got) != 1 || got[0] != "req-from-client" {
			t.Errorf("response header %s = %q, want the client's ID", daemon.RequestIDHeader, got)
		}
		// The access log line and the handler's own line carry it.
		var access map[string]any
		for _, rec := range h.logs.records(t, "grpc call") {
			if rec["request_id"] == "req-from-client" {
				access = rec
			}
		}
		if access == nil {
			t.Fatalf("no grpc call log line with the request ID:\n%s", h.logs)
		}
		want := map[string]any{
			"method": probeService + "Echo", "type": "unary", "code": "OK",
			"peer": key(t, replicaSeed).PeerID().String(), "daemon": "testd", "level": "INFO",
		}
		for k, v := range want {
			if access[k] != v {
				t.Errorf("log %s = %v, want %v", k, access[k], v)
			}
		}
		if _, ok := access["duration"].(float64); !ok {
			t.Errorf("log line has no duration: %v", access)
		}
		found := false
		for _, rec := range h.logs.records(t, "probe answered") {
			found = found || rec["request_id"] == "req-from-client"
		}
		if !found {
			t.Errorf("the handler's InfoContext line has no request_id:\n%s", h.logs)
		}
	})

	t.Run("generated when absent or unusable", func(t *testing.T) {
		seen := map[string]bool{}
		for _, sent := range []string{"", strings.Repeat("x", 200)} {
			ctx := callCtx(t)
			if sent != "" {
				ctx = metadata.AppendToOutgoingContext(ctx, daemon.RequestIDHeader, sent)
			}
			var hdr metadata.MD
			resp, err := c.Echo(ctx, &testingv1.EchoRequest{}, grpc.Header(&hdr))
			if err != nil {
				t.Fatal(err)
			}
			if !hexID.MatchString(resp.RequestId) {
				t.Errorf("sent %q: handler saw request ID %q, want a generated 32-hex ID", sent, resp.RequestId)
			}
			if got := hdr.Get(daemon.RequestIDHeader); len(got) != 1 || got[0] != resp.RequestId {
				t.Errorf("header %q, handler %q: want the same ID", got, resp.RequestId)
			}
			seen[resp.RequestId] = true
		}
		if len(seen) != 2 {
			t.Errorf("two calls got the same generated ID: %v", seen)
		}
	})

	t.Run("propagated from the caller's context", func(t *testing.T) {
		// What a handler calling another daemon does: its context carries
		// its own request ID, and Dial's interceptors forward it.
		ctx := daemon.WithRequestID(callCtx(t), "req-upstream")
		resp, err := c.Echo(ctx, &testingv1.EchoRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if resp.RequestId != "req-upstream" {
			t.Errorf("got request ID %q, want the caller context's", resp.RequestId)
		}
	})

	t.Run("streams", func(t *testing.T) {
		ctx := metadata.AppendToOutgoingContext(callCtx(t), daemon.RequestIDHeader, "req-stream")
		stream, err := c.EchoStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for range 2 {
			if err := stream.Send(&testingv1.EchoRequest{}); err != nil {
				t.Fatal(err)
			}
			resp, err := stream.Recv()
			if err != nil {
				t.Fatal(err)
			}
			if resp.RequestId != "req-stream" {
				t.Errorf("stream handler saw %q", resp.RequestId)
			}
		}
		hdr, err := stream.Header()
		if err != nil {
			t.Fatal(err)
		}
		if got := hdr.Get(daemon.RequestIDHeader); len(got) != 1 || got[0] != "req-stream" {
			t.Errorf("stream header %q", got)
		}
		stream.CloseSend()
		if _, err := stream.Recv(); err == nil {
			t.Fatal("stream did not end")
		}
		eventually(t, 5*time.Second, func() error {
			for _, rec := range h.logs.records(t, "grpc call") {
				if rec["request_id"] == "req-stream" && rec["type"] == "bidi_stream" && rec["code"] == "OK" {
					return nil
				}
			}
			return errors.New("no log line for the stream")
		})
	})
}

func TestPanicRecovery(t *testing.T) {
	h := start(t, nil)
	c := h.client(t, replicaSeed)

	ctx := metadata.AppendToOutgoingContext(callCtx(t), daemon.RequestIDHeader, "req-panic")
	var hdr metadata.MD
	_, err := c.Echo(ctx, &testingv1.EchoRequest{Panic: true}, grpc.Header(&hdr))
	st := wantCode(t, err, codes.Internal)
	if !strings.Contains(st.Message(), "req-panic") || strings.Contains(st.Message(), "asked to panic") {
		t.Errorf("message %q: want the request ID and not the panic value", st.Message())
	}
	if got := hdr.Get(daemon.RequestIDHeader); len(got) != 1 || got[0] != "req-panic" {
		t.Errorf("a failed call's header %s = %q", daemon.RequestIDHeader, got)
	}
	recs := h.logs.records(t, "panic in gRPC handler")
	if len(recs) != 1 {
		t.Fatalf("%d panic log lines, want 1:\n%s", len(recs), h.logs)
	}
	if stack, _ := recs[0]["stack"].(string); !strings.Contains(stack, "harness_test.go") {
		t.Errorf("logged stack does not reach the panicking handler:\n%s", stack)
	}
	if recs[0]["request_id"] != "req-panic" || recs[0]["panic"] != "probe: asked to panic" || recs[0]["level"] != "ERROR" {
		t.Errorf("panic log line: %v", recs[0])
	}

	// The server still serves, on the same connection.
	if _, err := c.Echo(callCtx(t), &testingv1.EchoRequest{Payload: []byte("after")}); err != nil {
		t.Fatalf("call after a panic: %v", err)
	}

	// A panicking stream handler too.
	stream, err := c.EchoStream(callCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&testingv1.EchoRequest{Panic: true}); err != nil {
		t.Fatal(err)
	}
	_, err = stream.Recv()
	wantCode(t, err, codes.Internal)
	if _, err := c.Echo(callCtx(t), &testingv1.EchoRequest{}); err != nil {
		t.Fatalf("call after a stream panic: %v", err)
	}
	_, body := h.get(t, "/metrics")
	wantMetric(t, body, "grpc_req_panics_recovered_total", 2)
	wantMetric(t, body, `grpc_server_handled_total{grpc_code="Internal",grpc_method="Echo",grpc_service="quarry.testing.v1.ProbeService",grpc_type="unary"}`, 1)
}

func TestRoles(t *testing.T) {
	h := start(t, func(c *daemon.Config) {
		c.Roles = daemon.Roles{
			probeService:          {daemon.Anyone},
			probeService + "Echo": {"replica"}, // the exact method wins
		}
	})
	echo := func(seed byte) (*testingv1.EchoResponse, error) {
		return h.client(t, seed).Echo(callCtx(t), &testingv1.EchoRequest{})
	}

	resp, err := echo(replicaSeed)
	if err != nil {
		t.Fatalf("replica calling a replica method: %v", err)
	}
	if resp.Role != "replica" || resp.PeerId != key(t, replicaSeed).PeerID().String() {
		t.Errorf("handler saw role %q peer %s", resp.Role, resp.PeerId)
	}

	_, err = echo(adminSeed)
	st := wantCode(t, err, codes.PermissionDenied)
	for _, want := range []string{key(t, adminSeed).PeerID().String(), `has role "admin"`, probeService + "Echo needs one of: replica"} {
		if !strings.Contains(st.Message(), want) {
			t.Errorf("message %q lacks %q", st.Message(), want)
		}
	}
	_, err = echo(strangerSeed)
	st = wantCode(t, err, codes.PermissionDenied)
	if !strings.Contains(st.Message(), "has no role") {
		t.Errorf("message %q", st.Message())
	}
	_, err = echo(brokenSeed)
	st = wantCode(t, err, codes.Unavailable)
	if !strings.Contains(st.Message(), "membership not loaded") {
		t.Errorf("message %q", st.Message())
	}

	// The service entry admits Anyone to the stream, with or without a role.
	stream, err := h.client(t, strangerSeed).EchoStream(callCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&testingv1.EchoRequest{}); err != nil {
		t.Fatal(err)
	}
	if resp, err := stream.Recv(); err != nil || resp.Role != "" {
		t.Fatalf("stranger on an Anyone stream: %v, role %q", err, resp.GetRole())
	}
	// Denials are logged and counted like any call.
	_, body := h.get(t, "/metrics")
	wantMetric(t, body, `grpc_server_handled_total{grpc_code="PermissionDenied",grpc_method="Echo",grpc_service="quarry.testing.v1.ProbeService",grpc_type="unary"}`, 2)
}

func TestAdmit(t *testing.T) {
	stranger := key(t, strangerSeed).PeerID()
	h := start(t, func(c *daemon.Config) {
		c.Admit = func(id peer.ID) error {
			if id == stranger {
				return errors.New("not a member")
			}
			return nil
		}
	})
	if _, err := h.client(t, replicaSeed).Echo(callCtx(t), &testingv1.EchoRequest{}); err != nil {
		t.Fatal(err)
	}
	_, err := h.client(t, strangerSeed).Echo(callCtx(t), &testingv1.EchoRequest{})
	wantCode(t, err, codes.Unavailable) // the handshake fails
}

func TestRunRefusesMethodsWithoutPolicy(t *testing.T) {
	logs := &logBuffer{}
	cfg := defaultConfig(t, logs)
	cfg.Roles = daemon.Roles{probeService + "Echo": {daemon.Anyone}}
	srv, err := daemon.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	testingv1.RegisterProbeServiceServer(srv, newProbe())
	err = srv.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), probeService+"EchoStream") || strings.Contains(err.Error(), probeService+"Echo]") {
		t.Fatalf("Run = %v, want an error naming EchoStream only", err)
	}
	if err := srv.Run(context.Background()); !errors.Is(err, daemon.ErrStarted) {
		t.Fatalf("second Run = %v", err)
	}
}

func TestDeadlines(t *testing.T) {
	const unary = 5 * time.Second
	h := start(t, func(c *daemon.Config) {
		c.Deadlines = daemon.Deadlines{
			Unary: unary,
		}
	})
	c := h.client(t, replicaSeed)
	echo := func(ctx context.Context) *testingv1.EchoResponse {
		t.Helper()
		resp, err := c.Echo(ctx, &testingv1.EchoRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}

	// No client deadline: the handler gets the server's.
	resp := echo(context.Background())
	if !resp.HasDeadline || resp.DeadlineMillis > unary.Milliseconds() || resp.DeadlineMillis < unary.Milliseconds()-2000 {
		t.Errorf("no client deadline: handler has %v, %d ms; want about %v", resp.HasDeadline, resp.DeadlineMillis, unary)
	}
	// A shorter client deadline is kept.
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if resp := echo(ctx); !resp.HasDeadline || resp.DeadlineMillis > 1000 {
		t.Errorf("1s client deadline: handler has %v, %d ms", resp.HasDeadline, resp.DeadlineMillis)
	}
	// A longer one is brought in to the server's limit.
	ctx, cancel = context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	if resp := echo(ctx); !resp.HasDeadline || resp.DeadlineMillis > unary.Milliseconds() {
		t.Errorf("1h client deadline: handler has %v, %d ms; want at most %v", resp.HasDeadline, resp.DeadlineMillis, unary)
	}
	// Streams are unbounded by default.
	stream, err := c.EchoStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&testingv1.EchoRequest{}); err != nil {
		t.Fatal(err)
	}
	sresp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if sresp.HasDeadline {
		t.Errorf("stream without a client deadline got one: %d ms", sresp.DeadlineMillis)
	}
	stream.CloseSend()

	// A per-method limit applies to a stream, and ends it.
	h2 := start(t, func(c *daemon.Config) {
		c.Deadlines.Methods = map[string]time.Duration{probeService + "EchoStream": time.Second}
	})
	stream, err = h2.client(t, replicaSeed).EchoStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&testingv1.EchoRequest{}); err != nil {
		t.Fatal(err)
	}
	if sresp, err = stream.Recv(); err != nil {
		t.Fatal(err)
	}
	if !sresp.HasDeadline || sresp.DeadlineMillis > 1000 {
		t.Errorf("stream with a 1s method limit: handler has %v, %d ms", sresp.HasDeadline, sresp.DeadlineMillis)
	}
	if err := stream.Send(&testingv1.EchoRequest{Block: true}); err != nil {
		t.Fatal(err)
	}
	_, err = stream.Recv()
	wantCode(t, err, codes.DeadlineExceeded)
}

func TestDeadlineExceeded(t *testing.T) {
	h := start(t, func(c *daemon.Config) { c.Deadlines.Unary = 100 * time.Millisecond })
	_, err := h.client(t, replicaSeed).Echo(context.Background(), &testingv1.EchoRequest{Block: true})
	wantCode(t, err, codes.DeadlineExceeded)
	eventually(t, 5*time.Second, func() error {
		for _, rec := range h.logs.records(t, "grpc call") {
			if rec["code"] == "DeadlineExceeded" && rec["level"] == "WARN" {
				return nil
			}
		}
		return errors.New("no WARN log line with code DeadlineExceeded")
	})
}

// wantMetric checks that the exposition body has the series with value.
func wantMetric(t testing.TB, body, series string, value float64) {
	t.Helper()
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			if v != fmt.Sprint(value) {
				t.Errorf("%s = %s, want %v", series, v, value)
			}
			return
		}
	}
	t.Errorf("no series %s in /metrics:\n%s", series, body)
}

func TestMetrics(t *testing.T) {
	h := start(t, func(c *daemon.Config) {
		c.Roles = daemon.Roles{probeService: {"replica"}}
	})
	for range 3 {
		if _, err := h.client(t, replicaSeed).Echo(callCtx(t), &testingv1.EchoRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	_, err := h.client(t, strangerSeed).Echo(callCtx(t), &testingv1.EchoRequest{})
	wantCode(t, err, codes.PermissionDenied)

	code, body := h.get(t, "/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	const labels = `grpc_method="Echo",grpc_service="quarry.testing.v1.ProbeService",grpc_type="unary"`
	wantMetric(t, body, `grpc_server_handled_total{grpc_code="OK",`+labels+`}`, 3)
	wantMetric(t, body, `grpc_server_handled_total{grpc_code="PermissionDenied",`+labels+`}`, 1)
	wantMetric(t, body, `grpc_server_started_total{`+labels+`}`, 4)
	wantMetric(t, body, `grpc_server_handling_seconds_count{`+labels+`}`, 4)
	// Registered methods not called yet are exported at zero.
	wantMetric(t, body, `grpc_server_handled_total{grpc_code="OK",grpc_method="EchoStream",grpc_service="quarry.testing.v1.ProbeService",grpc_type="bidi_stream"}`, 0)
	// The per-daemon registry has the runtime collectors.
	if !strings.Contains(body, "go_goroutines ") || !strings.Contains(body, "process_cpu_seconds_total ") {
		t.Error("/metrics lacks the Go and process collectors")
	}
}

func TestHealthAndReflection(t *testing.T) {
	h := start(t, nil)
	cc := h.conn(t, strangerSeed) // open to peers without a role

	health := healthpb.NewHealthClient(cc)
	for _, svc := range []string{"", "quarry.testing.v1.ProbeService"} {
		resp, err := health.Check(callCtx(t), &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health %q: %v %v", svc, resp.GetStatus(), err)
		}
	}
	if code, body := h.get(t, "/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz: %d %q", code, body)
	}

	stream, err := reflectionpb.NewServerReflectionClient(cc).ServerReflectionInfo(callCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{
		MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{},
	}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.Name)
	}
	for _, want := range []string{"quarry.testing.v1.ProbeService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"} {
		if !strings.Contains(strings.Join(names, " "), want) {
			t.Errorf("reflection lists %v, missing %s", names, want)
		}
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{
		MessageRequest: &reflectionpb.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: "quarry.testing.v1.ProbeService"},
	}); err != nil {
		t.Fatal(err)
	}
	if resp, err := stream.Recv(); err != nil || len(resp.GetFileDescriptorResponse().GetFileDescriptorProto()) == 0 {
		t.Errorf("reflection of the probe service's file: %v %v", err, resp.GetErrorResponse())
	}
}

func TestGracefulShutdown(t *testing.T) {
	h := start(t, nil)
	c := h.client(t, replicaSeed)
	result := make(chan error, 1)
	go func() {
		resp, err := c.Echo(callCtx(t), &testingv1.EchoRequest{Block: true, Payload: []byte("in flight")})
		if err == nil && string(resp.Payload) != "in flight" {
			err = fmt.Errorf("payload %q", resp.Payload)
		}
		result <- err
	}()
	select {
	case <-h.probe.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the blocking call never reached its handler")
	}

	h.cancel()
	// Draining: /healthz says so (the HTTP server outlives the gRPC drain),
	// and new connections are refused.
	eventually(t, 5*time.Second, func() error {
		if code, _ := h.get(t, "/healthz"); code != 503 {
			return fmt.Errorf("/healthz %d while draining, want 503", code)
		}
		return nil
	})
	select {
	case <-h.srv.Draining():
	default:
		t.Error("Draining not closed while draining")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := h.client(t, replicaSeed).Echo(ctx, &testingv1.EchoRequest{}); err == nil {
		t.Error("a new connection was served while draining")
	}
	select {
	case err := <-h.done:
		t.Fatalf("Run returned (%v) while a call was in flight", err)
	default:
	}

	close(h.probe.release)
	if err := <-result; err != nil {
		t.Fatalf("in-flight call during graceful shutdown: %v", err)
	}
	if err := h.wait(t); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	if len(h.logs.records(t, "stopped")) != 1 {
		t.Errorf("no 'stopped' log line:\n%s", h.logs)
	}
}

func TestDrainTimeout(t *testing.T) {
	h := start(t, func(c *daemon.Config) { c.DrainTimeout = 200 * time.Millisecond })
	result := make(chan error, 1)
	go func() {
		_, err := h.client(t, replicaSeed).Echo(callCtx(t), &testingv1.EchoRequest{Block: true})
		result <- err
	}()
	select {
	case <-h.probe.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the blocking call never reached its handler")
	}
	start := time.Now()
	h.cancel()
	if err := h.wait(t); err != nil {
		t.Fatalf("Run = %v, want nil after cutting off the call", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Run took %v to return with a 200ms drain timeout", d)
	}
	if err := <-result; status.Code(err) != codes.Unavailable && status.Code(err) != codes.Canceled {
		t.Errorf("cut-off call: %v, want Unavailable or Canceled", err)
	}
	if len(h.logs.records(t, "drain timeout: cancelling the calls still in flight")) != 1 {
		t.Errorf("no drain-timeout log line:\n%s", h.logs)
	}
}

func TestMessageSize(t *testing.T) {
	h := start(t, func(c *daemon.Config) {
		c.MaxRecvMsgSize = 4 << 10
		c.MaxSendMsgSize = 16 << 10
	})
	c := h.client(t, replicaSeed)
	if _, err := c.Echo(callCtx(t), &testingv1.EchoRequest{Payload: make([]byte, 3<<10)}); err != nil {
		t.Fatalf("3 KiB under a 4 KiB limit: %v", err)
	}
	_, err := c.Echo(callCtx(t), &testingv1.EchoRequest{Payload: make([]byte, 8<<10)})
	wantCode(t, err, codes.ResourceExhausted)
	if _, err := c.Echo(callCtx(t), &testingv1.EchoRequest{}); err != nil {
		t.Fatalf("call after an oversized one: %v", err)
	}

	h2 := start(t, func(c *daemon.Config) {
		c.MaxRecvMsgSize = 64 << 10
		c.MaxSendMsgSize = 4 << 10
	})
	_, err = h2.client(t, replicaSeed).Echo(callCtx(t), &testingv1.EchoRequest{Payload: make([]byte, 8<<10)})
	wantCode(t, err, codes.ResourceExhausted)
}
