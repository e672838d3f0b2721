package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/quarrynet/quarry/internal/identity"
)

// runKey runs `quarry key ARGS...` against repo and returns stdout, stderr
// and the command's error.
func runKey(t *testing.T, repo string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := newKeyCmd(func() (string, error) { return repo, nil })
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs(args)
	err = cmd.Execute()
	return out.String(), errOut.String(), err
}

func mustPeerID(t *testing.T, s string) peer.ID {
	t.Helper()
	id, err := peer.Decode(strings.TrimSpace(s))
	if err != nil {
		t.Fatalf("output %q is not a peer ID: %v", s, err)
	}
	return id
}

func TestKeyNewThenShow(t *testing.T) {
	repo := t.TempDir()
	out, _, err := runKey(t, repo, "new")
	if err != nil {
		t.Fatal(err)
	}
	created := mustPeerID(t, out)

	path := filepath.Join(repo, "keys", "self.key")
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatalf("default key not at <repo>/keys/self.key: %v", err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("key file mode %04o, want 0600", perm)
	}
	k, err := identity.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if k.PeerID() != created {
		t.Errorf("printed %s, file holds %s", created, k.PeerID())
	}

	out, _, err = runKey(t, repo, "show")
	if err != nil {
		t.Fatal(err)
	}
	if got := mustPeerID(t, out); got != created {
		t.Errorf("show printed %s, new printed %s", got, created)
	}
}

func TestKeyShowJSON(t *testing.T) {
	repo := t.TempDir()
	out, _, err := runKey(t, repo, "new", "--name", "miner-1")
	if err != nil {
		t.Fatal(err)
	}
	created := mustPeerID(t, out)

	out, _, err = runKey(t, repo, "show", "--name", "miner-1", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		Name   string `json:"name"`
		PeerID string `json:"peer_id"`
		Path   string `json:"path"`
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("show --json printed %q: %v", out, err)
	}
	if info.Name != "miner-1" || info.PeerID != created.String() || info.Path != filepath.Join(repo, "keys", "miner-1.key") {
		t.Errorf("show --json = %+v, want name miner-1, peer %s", info, created)
	}
}

func TestKeyNewRefusesToOverwriteWithoutForce(t *testing.T) {
	repo := t.TempDir()
	out, _, err := runKey(t, repo, "new")
	if err != nil {
		t.Fatal(err)
	}
	first := mustPeerID(t, out)

	out, _, err = runKey(t, repo, "new")
	if err == nil {
		t.Fatal("second `key new` replaced the key without --force")
	}
	if out != "" {
		t.Errorf("refused `key new` printed %q", out)
	}
	for _, want := range []string{`"self" already exists`, first.String(), "--force"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q should contain %q", err, want)
		}
	}
	out, _, err = runKey(t, repo, "show")
	if err != nil {
		t.Fatal(err)
	}
	if got := mustPeerID(t, out); got != first {
		t.Fatalf("key changed from %s to %s after a refused `key new`", first, got)
	}

	out, _, err = runKey(t, repo, "new", "--force")
	if err != nil {
		t.Fatalf("key new --force: %v", err)
	}
	second := mustPeerID(t, out)
	if second == first {
		t.Fatal("--force kept the old key")
	}
	out, _, err = runKey(t, repo, "show")
	if err != nil {
		t.Fatal(err)
	}
	if got := mustPeerID(t, out); got != second {
		t.Errorf("show after --force printed %s, want %s", got, second)
	}
}

func TestKeyShowErrors(t *testing.T) {
	repo := t.TempDir()

	_, _, err := runKey(t, repo, "show")
	if err == nil || !strings.Contains(err.Error(), `no key "self"`) || !strings.Contains(err.Error(), "quarry key new") {
		t.Errorf("show without a key: %v, want a hint to run `quarry key new`", err)
	}

	if _, _, err := runKey(t, repo, "new"); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(repo, "keys", "self.key")
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	_, _, err = runKey(t, repo, "show")
	if !errors.Is(err, identity.ErrInsecurePermissions) || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("show of a world-readable key: %v, want a refusal with the chmod fix", err)
	}

	for _, bad := range []string{"../escape", "a/b", ".hidden", "", strings.Repeat("x", 65)} {
		if _, _, err := runKey(t, repo, "new", "--name", bad); err == nil || !strings.Contains(err.Error(), "invalid key name") {
			t.Errorf("new --name %q: %v, want invalid key name", bad, err)
		}
	}
	if _, err := os.Stat(filepath.Join(repo, "escape.key")); err == nil {
		t.Error("--name ../escape wrote outside keys/")
	}
}

func TestKeyRepoError(t *testing.T) {
	cmd := newKeyCmd(func() (string, error) { return "", errors.New("no repo: set --repo or QUARRY_PATH") })
	cmd.SetOut(new(bytes.Buffer))
	cmd.SetErr(new(bytes.Buffer))
	cmd.SetArgs([]string{"show"})
	if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), "no repo") {
		t.Errorf("repo error not passed through: %v", err)
	}
}
