// Package daemon is the plumbing every Quarry daemon (ledgerd, storaged,
// retrievald) shares: how it is configured, what its network face looks
// like, what every call goes through, and how it stops. A daemon's own
// package holds its logic; this one makes it a well-behaved server.
//
// # What a Server is
//
// New builds a Server from a Config and binds its two listeners:
//
//   - gRPC on Config.GRPCAddr, secured with peer-ID TLS (internal/peertls):
//     both sides prove a libp2p peer ID, so every handler knows who calls
//     (peertls.PeerFromContext) and clients dial a peer ID, not a host name.
//     Config.Admit can refuse peers during the handshake. The gRPC health
//     service (grpc.health.v1) and server reflection are registered.
//   - HTTP on Config.HTTPAddr: GET /metrics (Prometheus, from the daemon's
//     own Registry, never the global one) and GET /healthz (200 "ok" while
//     the health service's overall status is SERVING, 503 otherwise — so a
//     daemon that sets "" to NOT_SERVING while it catches up, and every
//     daemon while it drains, reports not ready).
//
// The daemon registers its services on the Server (a grpc.ServiceRegistrar)
// and calls Run.
//
// # What every call goes through
//
// The interceptors, outermost first (unary and streaming alike):
//
//  1. Request ID and observation. The client's x-request-id (RequestIDHeader,
//     printable ASCII up to 128 bytes) or a new random one is put in the
//     handler's context (RequestID) and in the response headers. When the
//     handler returns, one log line "grpc call" records method, type, proven
//     peer ID, code, duration and address (errors at Error level for
//     Internal/Unknown/DataLoss/Unimplemented, Warn for DeadlineExceeded and
//     Unavailable, Info otherwise), and the call is counted:
//     grpc_server_started_total, grpc_server_handled_total{grpc_code},
//     grpc_server_handling_seconds (labels grpc_type, grpc_service,
//     grpc_method, as go-grpc-prometheus names them).
//  2. Panic recovery. A handler panic becomes codes.Internal with the request
//     ID in its message; the panic value and stack are logged and
//     grpc_req_panics_recovered_total counts it. The server keeps serving.
//  3. Deadlines. A call without a client deadline, or with one further away
//     than the limit, gets the limit (Deadlines: unary calls 30 s by
//     default, streams unbounded unless configured, per-method overrides).
//     An earlier client deadline is kept.
//  4. Roles. The caller's proven peer ID is resolved to a Role
//     (Config.Resolve) and checked against the Roles policy, keyed by full
//     method name or service prefix. No proven peer: Unauthenticated. Wrong
//     or no role: PermissionDenied, naming the peer, its role and the roles
//     the method needs. Resolver failure: Unavailable. A registered method
//     with no policy entry stops Run from starting, so nothing becomes public
//     by accident; health and reflection are open to Anyone unless listed.
//     Handlers read the role with RoleFromContext.
//
// Messages larger than Config.MaxRecvMsgSize / MaxSendMsgSize fail with
// ResourceExhausted. Calls to unknown methods never reach interceptors (gRPC
// answers Unimplemented), so they are neither logged nor counted; and a
// response that fails after its handler returned (too large to send) is
// logged and counted with the handler's code.
//
// Logs: Config.Logger is wrapped by LogHandler, so any record logged with a
// handler's context — srv.Logger().InfoContext(ctx, …) — carries
// "request_id"; every Server log line carries "daemon". Give a daemon's
// services srv.Logger(). An outgoing call made with a handler's context
// through Dial (or ClientInterceptors) forwards the request ID, so one ID
// follows a request from daemon to daemon.
//
// # How it stops
//
// Stopping is cancelling Run's context (SignalContext turns SIGINT and
// SIGTERM into that). Run then marks health NOT_SERVING, closes Draining,
// stops accepting gRPC calls and lets in-flight ones finish for up to
// Config.DrainTimeout before cancelling them, and only then shuts the HTTP
// server down (so /healthz reports the drain). A cancelled context is not
// an error: Run returns nil. Long-lived stream handlers (a block follower)
// should select on Draining and return, or the drain waits the full timeout
// for them.
//
// # How a daemon is put together
//
// Every daemon follows Config → Validate → New → Run(ctx), with a thin main.
// internal/daemon/internal/exampled is the smallest complete one; in outline:
//
//	func newCommand() *cobra.Command {
//		flags := daemon.Flags{GRPCAddr: "127.0.0.1:7400", HTTPAddr: "127.0.0.1:7401"}
//		var dataDir string
//		cmd := &cobra.Command{Use: "ledgerd", RunE: func(cmd *cobra.Command, _ []string) error {
//			ctx, stop := daemon.SignalContext() // first, so an early SIGTERM is clean
//			defer stop()
//			if err := daemon.LoadEnv(cmd.Flags(), os.LookupEnv); err != nil {
//				return err // names QUARRY_X and --x
//			}
//			cfg, err := flags.Config(cmd.Flags(), os.Stderr) // logger, addresses, limits
//			if err != nil {
//				return err
//			}
//			if dataDir == "" {
//				return daemon.InvalidFlag(cmd.Flags(), "data-dir", errors.New("required"))
//			}
//			cfg.Name, cfg.Key = "ledgerd", key // identity.Load from the data dir
//			cfg.Roles = daemon.Roles{
//				"/quarry.ledger.v1.LedgerService/": {daemon.Anyone},
//				"/quarry.ledger.v1.RaftService/":   {"replica"},
//				"/quarry.ledger.v1.AdminService/":  {"admin"},
//			}
//			// peer ID → "replica", "admin" (a replica, or one of the
//			// operator keys --admin named: flags.Admins) or ""
//			cfg.Resolve = membership.Role
//			srv, err := daemon.New(cfg)
//			if err != nil {
//				return err
//			}
//			// The daemon's own parts: Config → Validate → New, given
//			// srv.Logger() and srv.Registry().
//			node, err := consensus.New(…)
//			ledgerv1.RegisterLedgerServiceServer(srv, api)
//			// Serve first, stop the node after the drain, so in-flight
//			// calls still have a node to talk to.
//			nodeCtx, stopNode := context.WithCancel(context.WithoutCancel(ctx))
//			nodeDone := make(chan error, 1)
//			go func() { nodeDone <- node.Run(nodeCtx) }()
//			err = srv.Run(ctx)
//			stopNode()
//			return errors.Join(err, <-nodeDone)
//		}}
//		flags.Register(cmd.Flags())
//		cmd.Flags().StringVar(&dataDir, "data-dir", "", "data directory")
//		daemon.BindEnv(cmd.Flags()) // after every flag: --x ⇔ QUARRY_X
//		return cmd
//	}
//
// Flags holds what every daemon takes: --grpc-addr, --http-addr,
// --log-format, --log-level, --call-timeout, --drain-timeout,
// --max-msg-size and --admin (operator peer IDs for the admin role).
//
// Settings come from flags, then QUARRY_<FLAG_NAME> environment variables,
// then defaults (BindEnv, LoadEnv); a bad value fails with a *FlagError that
// names both the flag and the variable and says which one supplied it. An
// in-process network (quarry devnet, tests) skips flags and fills Config
// directly: 127.0.0.1:0 addresses, one Registry per daemon, a logger per
// daemon.
//
// Tests serve over real gRPC on 127.0.0.1:0 (GRPCAddr reports the port),
// dial with Dial and a test identity, and stop by cancelling Run's context.
package daemon
