package daemon_test

import (
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/quarrynet/quarry/internal/daemon"
	"github.com/quarrynet/quarry/internal/identity"
)

// parse defines a daemon's flags (the shared ones with its own default
// address, plus one of its own), binds them to the environment, parses args
// and loads env.
func parse(t *testing.T, args []string, env map[string]string) (*daemon.Flags, *pflag.FlagSet, *string, error) {
	t.Helper()
	f := &daemon.Flags{GRPCAddr: "127.0.0.1:7400"}
	fs := pflag.NewFlagSet("testd", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	f.Register(fs)
	dataDir := fs.String("data-dir", "/var/lib/testd", "data directory")
	daemon.BindEnv(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	err := daemon.LoadEnv(fs, func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	return f, fs, dataDir, err
}

func TestEnvPrecedence(t *testing.T) {
	f, fs, dataDir, err := parse(t,
		[]string{"--grpc-addr=127.0.0.1:9000"},
		map[string]string{
			"QUARRY_GRPC_ADDR":     "127.0.0.1:9999", // the flag wins
			"QUARRY_LOG_LEVEL":     "debug",          // env beats the default
			"QUARRY_DRAIN_TIMEOUT": "3s",
			"QUARRY_DATA_DIR":      "/srv/testd",  // a daemon's own flag
			"GRPC_ADDR":            "127.0.0.1:1", // no prefix: ignored
		})
	if err != nil {
		t.Fatal(err)
	}
	if f.GRPCAddr != "127.0.0.1:9000" {
		t.Errorf("grpc-addr = %q; the flag should beat QUARRY_GRPC_ADDR", f.GRPCAddr)
	}
	if f.LogLevel != "debug" || f.DrainTimeout != 3*time.Second || *dataDir != "/srv/testd" {
		t.Errorf("env not applied: log-level %q drain-timeout %v data-dir %q", f.LogLevel, f.DrainTimeout, *dataDir)
	}
	if f.LogFormat != "json" || f.CallTimeout != daemon.DefaultCallTimeout || f.MaxMsgSize != daemon.DefaultMaxMsgSize || f.HTTPAddr != "" {
		t.Errorf("defaults: %+v", f)
	}
	if u := fs.Lookup("grpc-addr").Usage; !strings.HasSuffix(u, "(env QUARRY_GRPC_ADDR)") {
		t.Errorf("usage %q does not name the variable", u)
	}
	if got := daemon.EnvVar("max-msg-size"); got != "QUARRY_MAX_MSG_SIZE" {
		t.Errorf("EnvVar = %q", got)
	}

	cfg, err := f.Config(fs, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.GRPCAddr != "127.0.0.1:9000" || cfg.DrainTimeout != 3*time.Second || cfg.Deadlines.Unary != daemon.DefaultCallTimeout ||
		cfg.MaxRecvMsgSize != daemon.DefaultMaxMsgSize || !cfg.Logger.Enabled(t.Context(), slog.LevelDebug) {
		t.Errorf("Config from flags: %+v", cfg)
	}
}

// TestAdmins: --admin is repeatable and takes comma lists, QUARRY_ADMIN
// takes a comma list, and the command line replaces the environment's list
// rather than adding to it.
func TestAdmins(t *testing.T) {
	var ids []string
	for range 3 {
		k, err := identity.Generate()
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, k.PeerID().String())
	}
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want []string
	}{
		{"none", nil, nil, nil},
		{"env list", nil, map[string]string{"QUARRY_ADMIN": ids[0] + "," + ids[1]}, ids[:2]},
		{"repeated flag", []string{"--admin", ids[0], "--admin", ids[2]}, nil, []string{ids[0], ids[2]}},
		{"flag list beats env", []string{"--admin=" + ids[1] + "," + ids[2]}, map[string]string{"QUARRY_ADMIN": ids[0]}, ids[1:]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, fs, _, err := parse(t, tc.args, tc.env)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.Config(fs, io.Discard); err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, id := range f.Admins {
				got = append(got, id.String())
			}
			if strings.Join(got, ",") != strings.Join(tc.want, ",") {
				t.Fatalf("Admins = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want []string // in the error message
	}{
		{"unparsable env", nil, map[string]string{"QUARRY_DRAIN_TIMEOUT": "soon"},
			[]string{`invalid QUARRY_DRAIN_TIMEOUT="soon"`, "--drain-timeout"}},
		{"bad flag value", []string{"--log-format=xml"}, nil,
			[]string{`invalid --log-format="xml"`, "QUARRY_LOG_FORMAT", "json or text"}},
		{"bad env value", nil, map[string]string{"QUARRY_GRPC_ADDR": "localhost"},
			[]string{`invalid QUARRY_GRPC_ADDR="localhost"`, "--grpc-addr", "not host:port"}},
		{"bad level", nil, map[string]string{"QUARRY_LOG_LEVEL": "loud"},
			[]string{"QUARRY_LOG_LEVEL", "--log-level"}},
		{"non-positive timeout", []string{"--call-timeout=0s"}, nil,
			[]string{"--call-timeout", "QUARRY_CALL_TIMEOUT", "must be positive"}},
		{"non-positive size", nil, map[string]string{"QUARRY_MAX_MSG_SIZE": "-1"},
			[]string{"QUARRY_MAX_MSG_SIZE", "--max-msg-size", "must be positive"}},
		{"bad admin", nil, map[string]string{"QUARRY_ADMIN": "alice"},
			[]string{`invalid QUARRY_ADMIN="[alice]"`, "--admin", `"alice" is not a peer ID`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, fs, _, err := parse(t, tc.args, tc.env)
			if err == nil {
				_, err = f.Config(fs, io.Discard)
			}
			var fe *daemon.FlagError
			if !errors.As(err, &fe) {
				t.Fatalf("error %v is not a *daemon.FlagError", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*daemon.Config)
		want string
	}{
		{"no name", func(c *daemon.Config) { c.Name = "" }, "Config.Name"},
		{"no key", func(c *daemon.Config) { c.Key = nil }, "Config.Key"},
		{"no logger", func(c *daemon.Config) { c.Logger = nil }, "Config.Logger"},
		{"bad grpc addr", func(c *daemon.Config) { c.GRPCAddr = "nowhere" }, "Config.GRPCAddr"},
		{"bad http addr", func(c *daemon.Config) { c.HTTPAddr = ":x:" }, "Config.HTTPAddr"},
		{"bad roles key", func(c *daemon.Config) { c.Roles = daemon.Roles{"quarry.X/Y": {daemon.Anyone}} }, "neither a full method name"},
		{"empty roles entry", func(c *daemon.Config) { c.Roles = daemon.Roles{"/a.B/": nil} }, "admits no role"},
		{"negative deadline", func(c *daemon.Config) { c.Deadlines.Unary = -5 * time.Second }, "Deadlines"},
		{"zero method deadline", func(c *daemon.Config) { c.Deadlines.Methods = map[string]time.Duration{"/a.B/C": 0} }, `Methods["/a.B/C"]`},
		{"negative drain", func(c *daemon.Config) { c.DrainTimeout = -1 }, "DrainTimeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := defaultConfig(t, &logBuffer{})
			if err := cfg.Validate(); err != nil {
				t.Fatalf("the default test config is invalid: %v", err)
			}
			tc.edit(&cfg)
			err := cfg.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate = %v, want an error mentioning %q", err, tc.want)
			}
			if _, err := daemon.New(cfg); err == nil {
				t.Fatal("New accepted an invalid config")
			}
		})
	}
	cfg := defaultConfig(t, &logBuffer{})
	cfg.Deadlines = daemon.Deadlines{Unary: daemon.NoDeadline, Methods: map[string]time.Duration{"/a.B/": daemon.NoDeadline}}
	if err := cfg.Validate(); err != nil {
		t.Errorf("NoDeadline rejected: %v", err)
	}
}

func TestNewAddressInUse(t *testing.T) {
	h := start(t, nil)
	cfg := defaultConfig(t, &logBuffer{})
	cfg.GRPCAddr = h.srv.GRPCAddr()
	if _, err := daemon.New(cfg); err == nil || !strings.Contains(err.Error(), "gRPC listener") {
		t.Fatalf("New on a used address = %v", err)
	}
	cfg = defaultConfig(t, &logBuffer{})
	srv, err := daemon.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if err := srv.Run(t.Context()); !errors.Is(err, daemon.ErrStarted) {
		t.Fatalf("Run after Close = %v", err)
	}
}
