package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Commands that only read (or remove) refuse a repo that is not there, with
// one line, and do not create it: a mistyped --repo must not become a new
// empty repo.
func TestReadCommandsNeedARepo(t *testing.T) {
	tmp := t.TempDir()
	home := filepath.Join(tmp, "home")
	os.MkdirAll(home, 0o755)
	t.Setenv("HOME", home)
	t.Setenv("QUARRY_PATH", "")
	const c = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
	reads := [][]string{
		{"cat", c}, {"get", c, "-o", filepath.Join(tmp, "out")}, {"ls", c},
		{"export", c}, {"export", c, "-o", filepath.Join(tmp, "out.car")}, {"rm", c}, {"pieces"}, {"pieces", "--json"},
	}
	missing := filepath.Join(tmp, "typo")
	for _, where := range []struct {
		flags []string
		env   string
		dir   string
		from  string
	}{
		{[]string{"--repo", missing}, "", missing, ""},
		{nil, missing, missing, "$QUARRY_PATH; "},
		{nil, "", filepath.Join(home, ".quarry"), "the default; "},
	} {
		t.Setenv("QUARRY_PATH", where.env)
		for _, args := range reads {
			stdout, stderr, code := runQ(t, append(where.flags, args...)...)
			want := "quarry: no repo at " + where.dir + " (" + where.from + `run "quarry add" or "quarry key new" to create one, or pass --repo)` + "\n"
			if code != 1 || stderr != want || stdout != "" {
				t.Errorf("quarry %v %v (QUARRY_PATH=%q): %d %q %q; want %q", where.flags, args, where.env, code, stdout, stderr, want)
			}
			if _, err := os.Stat(where.dir); !os.IsNotExist(err) {
				t.Fatalf("quarry %v created the repo %s", args, where.dir)
			}
		}
	}
	if ents, _ := os.ReadDir(tmp); len(ents) != 1 {
		t.Fatalf("read commands left %v", ents)
	}

	// A file is not a repo.
	t.Setenv("QUARRY_PATH", "")
	file := filepath.Join(tmp, "file")
	os.WriteFile(file, nil, 0o644)
	if _, stderr, code := runQ(t, "--repo", file, "pieces"); code != 1 || !strings.Contains(stderr, "not a directory") {
		t.Errorf("pieces with a file as the repo: %d %q", code, stderr)
	}
}

// A repo that exists but has nothing stored (made by key new) reads as
// empty, and reading it does not create its store.
func TestRepoWithoutStoreIsEmpty(t *testing.T) {
	repo := t.TempDir()
	mustRun(t, repo, "key", "new")
	if out := mustRun(t, repo, "pieces", "--json"); strings.TrimSpace(out) != "[]" {
		t.Errorf("pieces --json of an empty repo: %q", out)
	}
	if out := mustRun(t, repo, "pieces"); out != "" {
		t.Errorf("pieces of an empty repo: %q", out)
	}
	const c = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
	for _, cmd := range []string{"cat", "ls", "export", "rm"} {
		_, stderr, code := runQ(t, "--repo", repo, cmd, c)
		if want := "quarry: " + c + " is not in this repo (quarry add or quarry import it first)\n"; code != 1 || stderr != want {
			t.Errorf("%s in an empty repo: %d %q", cmd, code, stderr)
		}
	}
	if _, err := os.Stat(filepath.Join(repo, "store")); !os.IsNotExist(err) {
		t.Fatalf("reading an empty repo created its store: %v", err)
	}
}

// The commands that write create the repo.
func TestWritesCreateTheRepo(t *testing.T) {
	tmp := t.TempDir()
	src := filepath.Join(tmp, "f.bin")
	writeKS(t, src, 0, 1000)
	added := filepath.Join(tmp, "added", "repo")
	root := strings.TrimSpace(mustRun(t, added, "add", "-Q", src))
	car := filepath.Join(tmp, "f.car")
	mustRun(t, added, "export", root, "-o", car)
	imported := filepath.Join(tmp, "imported")
	if got := strings.TrimSpace(mustRun(t, imported, "import", "-Q", car)); got != root {
		t.Fatalf("import printed %q", got)
	}
	keyed := filepath.Join(tmp, "keyed")
	mustRun(t, keyed, "key", "new")
	for _, dir := range []string{added, imported, keyed} {
		if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
			t.Errorf("%s not created: %v", dir, err)
		}
	}
}

// The repo is --repo, else $QUARRY_PATH, else ~/.quarry.
func TestRepoLocationPrecedence(t *testing.T) {
	tmp := t.TempDir()
	home := filepath.Join(tmp, "home")
	os.MkdirAll(home, 0o755)
	t.Setenv("HOME", home)
	t.Setenv("QUARRY_PATH", "")
	files := make([]string, 3)
	for i := range files {
		files[i] = filepath.Join(tmp, "f"+string(rune('0'+i)))
		writeKS(t, files[i], int64(i)*1000, 5000)
	}
	add := func(file string, flags ...string) string {
		t.Helper()
		stdout, stderr, code := runQ(t, append(flags, "add", "-Q", file)...)
		if code != 0 {
			t.Fatalf("add %s %v: %s", file, flags, stderr)
		}
		return strings.TrimSpace(stdout)
	}
	byDefault := add(files[0])
	envRepo := filepath.Join(tmp, "env")
	t.Setenv("QUARRY_PATH", envRepo)
	byEnv := add(files[1])
	flagRepo := filepath.Join(tmp, "flag")
	byFlag := add(files[2], "--repo", flagRepo)

	roots := func(repo string) []string {
		t.Helper()
		var ps []struct{ Root string }
		if err := json.Unmarshal([]byte(mustRun(t, repo, "pieces", "--json")), &ps); err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, p := range ps {
			out = append(out, p.Root)
		}
		return out
	}
	for repo, want := range map[string]string{filepath.Join(home, ".quarry"): byDefault, envRepo: byEnv, flagRepo: byFlag} {
		if got := roots(repo); len(got) != 1 || got[0] != want {
			t.Errorf("%s holds %v, want just %s", repo, got, want)
		}
	}
	// Reads follow the same order: with QUARRY_PATH set, ~/.quarry is not read.
	if _, stderr, code := runQ(t, "cat", byDefault); code != 1 || !strings.Contains(stderr, "is not in this repo") {
		t.Errorf("cat with QUARRY_PATH set read ~/.quarry: %d %q", code, stderr)
	}
	t.Setenv("QUARRY_PATH", "")
	if stdout, stderr, code := runQ(t, "cat", byDefault); code != 0 || len(stdout) != 5000 {
		t.Errorf("cat from ~/.quarry: %d %q", code, stderr)
	}
}
