package daemon

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/spf13/pflag"
)

// EnvPrefix starts the name of every environment variable bound to a flag.
const EnvPrefix = "QUARRY_"

// Flag annotations this file uses.
const (
	annotEnv     = "quarry_env"      // the flag is bound to an environment variable
	annotFromEnv = "quarry_from_env" // its value came from that variable
)

// EnvVar is the environment variable bound to a flag: "grpc-addr" →
// "QUARRY_GRPC_ADDR".
func EnvVar(flag string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// BindEnv binds every flag now defined on fs to its environment variable
// (EnvVar) and says so in the flag's usage text, for --help. Call it after
// defining the flags; LoadEnv then reads the variables.
func BindEnv(fs *pflag.FlagSet) {
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Name == "help" || f.Annotations[annotEnv] != nil {
			return
		}
		env := EnvVar(f.Name)
		f.Usage += fmt.Sprintf(" (env %s)", env)
		_ = fs.SetAnnotation(f.Name, annotEnv, []string{env}) // the flag exists
	})
}

// LoadEnv sets every bound flag that the command line did not set from its
// environment variable, if that is set: a flag beats the environment, and the
// environment beats the default. lookup is os.LookupEnv outside tests. A bad
// value fails with a *FlagError naming the variable and the flag.
func LoadEnv(fs *pflag.FlagSet, lookup func(string) (string, bool)) error {
	var errs []error
	fs.VisitAll(func(f *pflag.Flag) {
		envs := f.Annotations[annotEnv]
		if len(envs) == 0 || f.Changed {
			return
		}
		v, ok := lookup(envs[0])
		if !ok {
			return
		}
		if err := fs.Set(f.Name, v); err != nil {
			errs = append(errs, &FlagError{Flag: f.Name, Env: envs[0], Value: v, FromEnv: true, Err: err})
			return
		}
		_ = fs.SetAnnotation(f.Name, annotFromEnv, []string{"true"})
	})
	return errors.Join(errs...)
}

// FlagError is a bad setting; its message names both the flag and its
// environment variable, and which of them supplied the value.
type FlagError struct {
	Flag    string // without dashes
	Env     string // "" if the flag is not bound to one
	Value   string
	FromEnv bool // the value came from Env, not the command line
	Err     error
}

func (e *FlagError) Error() string {
	switch {
	case e.FromEnv:
		return fmt.Sprintf("invalid %s=%q (the environment variable for --%s): %v", e.Env, e.Value, e.Flag, e.Err)
	case e.Env != "":
		return fmt.Sprintf("invalid --%s=%q (also settable as %s): %v", e.Flag, e.Value, e.Env, e.Err)
	}
	return fmt.Sprintf("invalid --%s=%q: %v", e.Flag, e.Value, e.Err)
}

func (e *FlagError) Unwrap() error { return e.Err }

// InvalidFlag returns a *FlagError for the current value of fs's flag name,
// for a daemon's own checks of its own flags.
func InvalidFlag(fs *pflag.FlagSet, name string, err error) error {
	fe := &FlagError{Flag: name, Err: err}
	if f := fs.Lookup(name); f != nil {
		fe.Value = f.Value.String()
		if envs := f.Annotations[annotEnv]; len(envs) > 0 {
			fe.Env = envs[0]
		}
		fe.FromEnv = f.Annotations[annotFromEnv] != nil
	}
	return fe
}

// Flags are the settings every daemon takes from its command line or
// environment. Set fields to the daemon's defaults (its own ports) before
// Register; zero fields get this package's.
type Flags struct {
	GRPCAddr     string        // --grpc-addr
	HTTPAddr     string        // --http-addr ("" disables /metrics and /healthz)
	LogFormat    string        // --log-format: json or text
	LogLevel     string        // --log-level: debug, info, warn, error
	CallTimeout  time.Duration // --call-timeout: Deadlines.Unary
	DrainTimeout time.Duration // --drain-timeout
	MaxMsgSize   int           // --max-msg-size, bytes, both directions
	// Admins are the peer IDs --admin names (repeatable, or a comma list;
	// QUARRY_ADMIN takes the comma list): keys an operator holds, which
	// the daemon gives its admin role. Config parses them.
	Admins []peer.ID

	admins []string // --admin as given
}

// Register defines the flags on fs, with f's values as defaults.
func (f *Flags) Register(fs *pflag.FlagSet) {
	def := func(v, d string) string {
		if v == "" {
			return d
		}
		return v
	}
	fs.StringVar(&f.GRPCAddr, "grpc-addr", def(f.GRPCAddr, "127.0.0.1:0"), "gRPC listen address, host:port")
	fs.StringVar(&f.HTTPAddr, "http-addr", f.HTTPAddr, `HTTP listen address for /metrics and /healthz, host:port ("" for none)`)
	fs.StringVar(&f.LogFormat, "log-format", def(f.LogFormat, "json"), "log format: json or text")
	fs.StringVar(&f.LogLevel, "log-level", def(f.LogLevel, "info"), "log level: debug, info, warn or error")
	fs.DurationVar(&f.CallTimeout, "call-timeout", orDuration(f.CallTimeout, DefaultCallTimeout), "longest a unary gRPC call may run (the deadline of calls that set none)")
	fs.DurationVar(&f.DrainTimeout, "drain-timeout", orDuration(f.DrainTimeout, DefaultDrainTimeout), "on shutdown, how long in-flight calls may finish before they are cancelled")
	fs.IntVar(&f.MaxMsgSize, "max-msg-size", orInt(f.MaxMsgSize, DefaultMaxMsgSize), "largest gRPC message accepted or sent, in bytes")
	f.admins = nil
	for _, id := range f.Admins {
		f.admins = append(f.admins, id.String())
	}
	fs.StringSliceVar(&f.admins, "admin", f.admins, "peer ID of an operator key given the admin role (repeatable, or comma-separated)")
}

func orDuration(v, d time.Duration) time.Duration {
	if v == 0 {
		return d
	}
	return v
}

func orInt(v, d int) int {
	if v == 0 {
		return d
	}
	return v
}

// Config checks the flag values (errors are *FlagError, naming the flag and
// its environment variable) and returns the Config fields they decide, with
// a logger writing to w. The daemon adds Name, Key, Roles and Resolve; it
// reads f.Admins (parsed here) into its role resolver.
func (f *Flags) Config(fs *pflag.FlagSet, w io.Writer) (Config, error) {
	bad := func(name string, err error) (Config, error) { return Config{}, InvalidFlag(fs, name, err) }
	if err := validAddr(f.GRPCAddr); err != nil {
		return bad("grpc-addr", err)
	}
	if f.HTTPAddr != "" {
		if err := validAddr(f.HTTPAddr); err != nil {
			return bad("http-addr", err)
		}
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.LogLevel)); err != nil {
		return bad("log-level", errors.New("want debug, info, warn or error"))
	}
	logger, err := NewLogger(w, f.LogFormat, level)
	if err != nil {
		return bad("log-format", err)
	}
	if f.CallTimeout <= 0 {
		return bad("call-timeout", errors.New("must be positive"))
	}
	if f.DrainTimeout <= 0 {
		return bad("drain-timeout", errors.New("must be positive"))
	}
	if f.MaxMsgSize <= 0 {
		return bad("max-msg-size", errors.New("must be positive"))
	}
	admins := make([]peer.ID, 0, len(f.admins))
	for _, s := range f.admins {
		id, err := peer.Decode(strings.TrimSpace(s))
		if err != nil {
			return bad("admin", fmt.Errorf("%q is not a peer ID: %v", s, err))
		}
		admins = append(admins, id)
	}
	f.Admins = admins
	return Config{
		GRPCAddr:       f.GRPCAddr,
		HTTPAddr:       f.HTTPAddr,
		Logger:         logger,
		Deadlines:      Deadlines{Unary: f.CallTimeout},
		MaxRecvMsgSize: f.MaxMsgSize,
		MaxSendMsgSize: f.MaxMsgSize,
		DrainTimeout:   f.DrainTimeout,
	}, nil
}

// NewLogger returns a logger writing JSON or text records at level and
// above to w, with request IDs (LogHandler).
func NewLogger(w io.Writer, format string, level slog.Leveler) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler
	switch format {
	case "json":
		h = slog.NewJSONHandler(w, opts)
	case "text":
		h = slog.NewTextHandler(w, opts)
	default:
		return nil, errors.New("want json or text")
	}
	return slog.New(LogHandler(h)), nil
}
