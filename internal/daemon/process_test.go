package daemon_test

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/quarrynet/quarry/internal/daemon"
	"github.com/quarrynet/quarry/internal/identity"
	"github.com/quarrynet/quarry/internal/peertls"
)

// TestProcessSIGTERM builds the example daemon (internal/exampled), runs it
// as a child process configured by flags and QUARRY_* variables, checks
// /healthz and gRPC health, sends SIGTERM and expects exit code 0 with a
// clean shutdown logged.
func TestProcessSIGTERM(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go tool is needed to build the example daemon: %v", err)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "exampled")
	build := exec.Command(goTool, "build", "-o", bin, "./internal/exampled")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building exampled: %v\n%s", err, out)
	}

	keyFile := filepath.Join(dir, "exampled.key")
	cmd := exec.Command(bin, "--grpc-addr=127.0.0.1:0", "--key-file="+keyFile)
	cmd.Env = append(os.Environ(), "QUARRY_HTTP_ADDR=127.0.0.1:0", "QUARRY_LOG_FORMAT=json", "QUARRY_DRAIN_TIMEOUT=5s")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	var (
		mu    sync.Mutex
		lines []string
	)
	serving := make(chan map[string]any, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			mu.Lock()
			lines = append(lines, sc.Text())
			mu.Unlock()
			var rec map[string]any
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec["msg"] == "serving" {
				serving <- rec
			}
		}
		io.Copy(io.Discard, stderr)
		exited <- cmd.Wait() // after the last read, as exec requires
	}()
	log := func() string {
		mu.Lock()
		defer mu.Unlock()
		return strings.Join(lines, "\n")
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("exampled stderr:\n%s", log())
		}
	})

	var rec map[string]any
	select {
	case rec = <-serving:
	case err := <-exited:
		t.Fatalf("exampled exited before serving: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("exampled did not log 'serving' within 30s")
	}
	httpAddr, _ := rec["http_addr"].(string)
	grpcAddr, _ := rec["grpc_addr"].(string)
	id, err := peer.Decode(fmt.Sprint(rec["peer_id"]))
	if err != nil || httpAddr == "" || grpcAddr == "" {
		t.Fatalf("serving line %v: %v", rec, err)
	}
	// The key file was created and is the identity served.
	if k, err := identity.Load(keyFile); err != nil || k.PeerID() != id {
		t.Fatalf("key file: %v (peer %v, serving %v)", err, k, id)
	}

	resp, err := http.Get("http://" + httpAddr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("/healthz: %d", resp.StatusCode)
	}
	cert, err := peertls.New(key(t, replicaSeed))
	if err != nil {
		t.Fatal(err)
	}
	cc, err := daemon.Dial(grpcAddr, cert, id)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	hresp, err := healthpb.NewHealthClient(cc).Check(callCtx(t), &healthpb.HealthCheckRequest{})
	if err != nil || hresp.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("gRPC health: %v %v", hresp.GetStatus(), err)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("exampled exited with %v after SIGTERM, want code 0", ee.ProcessState)
		} else if err != nil {
			t.Fatal(err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("exampled did not exit within 15s of SIGTERM")
	}
	var stopping, stopped bool
	for _, line := range strings.Split(log(), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) != nil {
			t.Errorf("stderr line is not a JSON record: %s", line)
			continue
		}
		stopping = stopping || rec["msg"] == "stopping" && rec["cause"] == "terminated signal received"
		stopped = stopped || rec["msg"] == "stopped"
	}
	if !stopping || !stopped {
		t.Errorf("stderr lacks the stopping (SIGTERM) or stopped lines")
	}
}
