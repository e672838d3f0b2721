package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	"github.com/quarrynet/quarry/internal/identity"
	"github.com/quarrynet/quarry/internal/peertls"
)

// Defaults for the Config fields left zero.
const (
	DefaultCallTimeout  = 30 * time.Second
	DefaultDrainTimeout = 10 * time.Second
	DefaultMaxMsgSize   = 4 << 20 // gRPC's own receive default
)

// NoDeadline, as a Deadlines value, leaves calls unbounded.
const NoDeadline time.Duration = -1

// Deadlines bounds how long calls run. A call whose client set no deadline,
// or one further away than the limit, gets the limit; an earlier client
// deadline is kept. Handlers see it as their context's deadline.
type Deadlines struct {
	// Unary limits unary calls. Zero means DefaultCallTimeout.
	Unary time.Duration
	// Stream limits streaming calls. Zero means NoDeadline: following the
	// chain or retrieving a large DAG legitimately takes as long as it
	// takes. gRPC does not wake a handler blocked in RecvMsg when this
	// deadline passes; a streaming handler must watch its context.
	Stream time.Duration
	// Methods overrides Unary/Stream for full method names or service
	// prefixes, as Roles keys are written. Values must be positive or
	// NoDeadline.
	Methods map[string]time.Duration
}

func (d Deadlines) limit(fullMethod string, stream bool) time.Duration {
	if v, ok := lookupMethod(d.Methods, fullMethod); ok {
		return v
	}
	if stream {
		return d.Stream
	}
	return d.Unary
}

// Config is what a daemon's main (or an in-process devnet) decides; New
// validates it. Zero optional fields take the defaults documented on them.
type Config struct {
	// Name names the daemon in its logs ("ledgerd").
	Name string
	// Key is the daemon's identity: the peer ID its TLS handshakes prove
	// and that clients dial.
	Key *identity.Key
	// GRPCAddr is the TCP address to serve gRPC on, host:port (port 0
	// picks a free one; see Server.GRPCAddr).
	GRPCAddr string
	// HTTPAddr is the TCP address of the HTTP server for /metrics and
	// /healthz; empty means none.
	HTTPAddr string
	// Logger receives the daemon's logs; New wraps its handler with
	// LogHandler. Required: pass slog.New(slog.DiscardHandler) to drop them.
	Logger *slog.Logger
	// Registry receives the gRPC metrics and is what /metrics serves. Nil
	// means a new registry with the Go runtime and process collectors. The
	// daemon registers its own metrics on Server.Registry.
	Registry *prometheus.Registry
	// Roles says which roles may call which methods; see Roles.
	Roles Roles
	// Resolve tells a caller's role. Nil gives every caller no role, so
	// only Anyone methods are callable.
	Resolve RoleResolver
	// Admit, if set, decides during the TLS handshake whether a peer may
	// connect at all (peertls.Allow), e.g. only current ledger members.
	Admit func(peer.ID) error
	// Deadlines bounds call durations.
	Deadlines Deadlines
	// MaxRecvMsgSize and MaxSendMsgSize bound one message, in bytes; a
	// larger one fails the call with ResourceExhausted. Zero means
	// DefaultMaxMsgSize.
	MaxRecvMsgSize, MaxSendMsgSize int
	// DrainTimeout bounds how long Run waits for in-flight calls when its
	// context is cancelled before cutting them off. Zero means
	// DefaultDrainTimeout.
	DrainTimeout time.Duration
	// ServerOptions are added after the daemon's own: keepalive settings,
	// or more interceptors with grpc.ChainUnaryInterceptor /
	// ChainStreamInterceptor, which run inside the daemon's (after
	// authorization). Do not use grpc.UnaryInterceptor here: gRPC would run
	// it outside the daemon's chain, before request IDs and recovery.
	ServerOptions []grpc.ServerOption
}

// Validate checks c; zero optional fields are fine (New fills them).
func (c *Config) Validate() error {
	switch {
	case c.Name == "":
		return errors.New("daemon: Config.Name is empty; name the daemon (ledgerd, storaged, …)")
	case c.Key == nil:
		return errors.New("daemon: Config.Key is nil; the daemon needs an identity key for peer-ID TLS")
	case c.Logger == nil:
		return errors.New("daemon: Config.Logger is nil; pass slog.New(slog.DiscardHandler) to drop logs")
	case c.MaxRecvMsgSize < 0 || c.MaxSendMsgSize < 0:
		return errors.New("daemon: Config.MaxRecvMsgSize and MaxSendMsgSize must not be negative")
	case c.DrainTimeout < 0:
		return errors.New("daemon: Config.DrainTimeout must not be negative")
	}
	if err := validAddr(c.GRPCAddr); err != nil {
		return fmt.Errorf("daemon: Config.GRPCAddr: %w", err)
	}
	if c.HTTPAddr != "" {
		if err := validAddr(c.HTTPAddr); err != nil {
			return fmt.Errorf("daemon: Config.HTTPAddr: %w", err)
		}
	}
	if err := c.Roles.Validate(); err != nil {
		return err
	}
	d := c.Deadlines
	if d.Unary < 0 && d.Unary != NoDeadline || d.Stream < 0 && d.Stream != NoDeadline {
		return errors.New("daemon: Config.Deadlines: Unary and Stream must be positive, zero (default) or NoDeadline")
	}
	for key, v := range d.Methods {
		if err := validMethodKey(key); err != nil {
			return fmt.Errorf("daemon: Config.Deadlines.Methods: %w", err)
		}
		if v <= 0 && v != NoDeadline {
			return fmt.Errorf("daemon: Config.Deadlines.Methods[%q] = %v; use a positive duration or NoDeadline", key, v)
		}
	}
	return nil
}

func validAddr(addr string) error {
	if addr == "" {
		return errors.New("empty address; want host:port")
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return fmt.Errorf("%q is not host:port: %w", addr, err)
	}
	return nil
}

// withDefaults fills the zero optional fields.
func (c Config) withDefaults() Config {
	if c.Deadlines.Unary == 0 {
		c.Deadlines.Unary = DefaultCallTimeout
	}
	if c.Deadlines.Stream == 0 {
		c.Deadlines.Stream = NoDeadline
	}
	if c.MaxRecvMsgSize == 0 {
		c.MaxRecvMsgSize = DefaultMaxMsgSize
	}
	if c.MaxSendMsgSize == 0 {
		c.MaxSendMsgSize = DefaultMaxMsgSize
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = DefaultDrainTimeout
	}
	return c
}

// Server is a daemon's network face: a gRPC server secured by peer-ID TLS
// with the interceptors described in the package doc, the gRPC health and
// reflection services, and an HTTP server for /metrics and /healthz.
//
// Register services on it (it is a grpc.ServiceRegistrar) between New and
// Run.
type Server struct {
	cfg      Config
	log      *slog.Logger
	registry *prometheus.Registry
	metrics  *metrics
	grpc     *grpc.Server
	health   *health.Server
	http     *http.Server // nil without HTTPAddr

	grpcLn, httpLn net.Listener // httpLn nil without HTTPAddr
	draining       chan struct{}

	// mu guards started: Run and Close each take the listeners once.
	mu      sync.Mutex
	started bool
}

// New validates cfg, builds the servers and binds their listeners, so that
// an address in use fails here, before anything starts, and GRPCAddr and
// HTTPAddr report the bound addresses. Call Run to serve, or Close to release
// the listeners without serving.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	s := &Server{
		cfg:      cfg,
		log:      slog.New(LogHandler(cfg.Logger.Handler())).With("daemon", cfg.Name),
		registry: cfg.Registry,
		draining: make(chan struct{}),
	}
	if s.registry == nil {
		s.registry = prometheus.NewRegistry()
		s.registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	var err error
	if s.metrics, err = newMetrics(s.registry); err != nil {
		return nil, fmt.Errorf("daemon: registering gRPC metrics: %w", err)
	}
	cert, err := peertls.New(cfg.Key)
	if err != nil {
		return nil, err
	}
	var tlsOpts []peertls.ServerOption
	if cfg.Admit != nil {
		tlsOpts = append(tlsOpts, peertls.Allow(cfg.Admit))
	}
	opts := []grpc.ServerOption{
		grpc.Creds(cert.Server(tlsOpts...)),
		grpc.ChainUnaryInterceptor(s.unaryInterceptors()...),
		grpc.ChainStreamInterceptor(s.streamInterceptors()...),
		grpc.MaxRecvMsgSize(cfg.MaxRecvMsgSize),
		grpc.MaxSendMsgSize(cfg.MaxSendMsgSize),
	}
	s.grpc = grpc.NewServer(append(opts, cfg.ServerOptions...)...)
	s.health = health.NewServer()
	healthpb.RegisterHealthServer(s.grpc, s.health)
	reflection.Register(s.grpc)

	if s.grpcLn, err = net.Listen("tcp", cfg.GRPCAddr); err != nil {
		return nil, fmt.Errorf("daemon: gRPC listener: %w", err)
	}
	if cfg.HTTPAddr != "" {
		if s.httpLn, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
			s.grpcLn.Close()
			return nil, fmt.Errorf("daemon: HTTP listener: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", promhttp.HandlerFor(s.registry, promhttp.HandlerOpts{Registry: s.registry}))
		mux.HandleFunc("GET /healthz", s.healthz)
		s.http = &http.Server{
			Handler:           mux,
			ReadHeaderTimeout: 10 * time.Second,
			ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		}
	}
	return s, nil
}

// RegisterService implements grpc.ServiceRegistrar; call it before Run.
func (s *Server) RegisterService(desc *grpc.ServiceDesc, impl any) {
	s.mu.Lock()
	started := s.started
	s.mu.Unlock()
	if started {
		panic(fmt.Sprintf("daemon: RegisterService(%s) after Run or Close", desc.ServiceName))
	}
	s.grpc.RegisterService(desc, impl)
}

// PeerID is the identity the server proves; clients dial it.
func (s *Server) PeerID() peer.ID { return s.cfg.Key.PeerID() }

// GRPCAddr is the bound gRPC address (host:port).
func (s *Server) GRPCAddr() string { return s.grpcLn.Addr().String() }

// HTTPAddr is the bound HTTP address, or "" without one.
func (s *Server) HTTPAddr() string {
	if s.httpLn == nil {
		return ""
	}
	return s.httpLn.Addr().String()
}

// Logger is the daemon's logger (Config.Logger with request IDs added to
// records logged with a handler's context).
func (s *Server) Logger() *slog.Logger { return s.log }

// Registry is the daemon's metrics registry, for its own metrics.
func (s *Server) Registry() *prometheus.Registry { return s.registry }

// Health is the gRPC health service. Run marks every registered service
// SERVING when it starts and everything NOT_SERVING when it begins to drain;
// a daemon may change a service's status in between (a replica that has not
// caught up).
func (s *Server) Health() *health.Server { return s.health }

// Draining is closed when Run begins to shut down. Long-lived stream
// handlers (following blocks) should select on it and return, so that
// graceful shutdown does not wait for them until DrainTimeout.
func (s *Server) Draining() <-chan struct{} { return s.draining }

// healthz answers 200 while the server is serving and 503 once it drains.
func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	resp, err := s.health.Check(r.Context(), &healthpb.HealthCheckRequest{})
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		http.Error(w, "not serving", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintln(w, "ok")
}

// ErrStarted is returned by a second Run, or Run after Close.
var ErrStarted = errors.New("daemon: server already started or closed")

// Run serves until ctx is cancelled, then shuts down: health turns
// NOT_SERVING, Draining closes, the gRPC server stops accepting calls and
// waits up to DrainTimeout for in-flight ones (then cancels them), and the
// HTTP server (kept up until then, so /healthz reports the drain) shuts
// down. A cancelled ctx is the normal way to stop: Run then returns nil. It
// returns an error if a server fails, or if a registered method has no Roles
// entry (nothing is served then).
func (s *Server) Run(ctx context.Context) error {
	s.mu.Lock()
	if s.started {
		s.mu.Unlock()
		return ErrStarted
	}
	s.started = true
	s.mu.Unlock()

	services := s.grpc.GetServiceInfo()
	if err := s.checkPolicies(services); err != nil {
		s.closeListeners()
		return err
	}
	s.metrics.initMethods(services)
	for name := range services {
		s.health.SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
	}

	errc := make(chan error, 2)
	servers := 1
	go func() { errc <- serveErr("gRPC", s.grpc.Serve(s.grpcLn)) }()
	if s.http != nil {
		servers++
		go func() { errc <- serveErr("HTTP", s.http.Serve(s.httpLn)) }()
	}
	s.log.Info("serving", "peer_id", s.PeerID().String(), "grpc_addr", s.GRPCAddr(), "http_addr", s.HTTPAddr())

	var runErr error
	select {
	case <-ctx.Done():
		s.log.Info("stopping", "cause", context.Cause(ctx).Error())
	case runErr = <-errc:
		servers--
		s.log.Error("server failed; stopping", "err", runErr)
	}
	s.health.Shutdown()
	close(s.draining)
	s.drainGRPC()
	if s.http != nil {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		if err := s.http.Shutdown(sctx); err != nil {
			s.http.Close()
		}
		cancel()
	}
	for ; servers > 0; servers-- {
		if err := <-errc; err != nil && runErr == nil {
			runErr = err
		}
	}
	if runErr == nil {
		s.log.Info("stopped")
	}
	return runErr
}

// drainGRPC stops the gRPC server gracefully, and forcibly after
// DrainTimeout.
func (s *Server) drainGRPC() {
	done := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(done)
	}()
	t := time.NewTimer(s.cfg.DrainTimeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		s.log.Warn("drain timeout: cancelling the calls still in flight", "drain_timeout", s.cfg.DrainTimeout)
		s.grpc.Stop()
		<-done
	}
}

// serveErr maps a server's normal return after a stop to nil.
func serveErr(what string, err error) error {
	if err == nil || errors.Is(err, grpc.ErrServerStopped) || errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("daemon: %s server: %w", what, err)
}

// Close releases the listeners of a server that will not Run. After Run
// has started, cancel its context instead.
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return ErrStarted
	}
	s.started = true
	s.grpc.Stop()
	return s.closeListeners()
}

func (s *Server) closeListeners() error {
	err := s.grpcLn.Close()
	if s.httpLn != nil {
		err = errors.Join(err, s.httpLn.Close())
	}
	return err
}

// checkPolicies fails if a registered method has no Roles entry.
func (s *Server) checkPolicies(services map[string]grpc.ServiceInfo) error {
	var missing []string
	for svc, info := range services {
		for _, m := range info.Methods {
			full := "/" + svc + "/" + m.Name
			if _, ok := s.cfg.Roles.Allowed(full); !ok {
				missing = append(missing, full)
			}
		}
	}
	if len(missing) == 0 {
		return nil
	}
	sort.Strings(missing)
	return fmt.Errorf("daemon: no Roles entry for %v; every registered method needs one (daemon.Anyone for any peer)", missing)
}
