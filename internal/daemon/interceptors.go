package daemon

import (
	"context"
	"errors"
	"log/slog"
	"runtime/debug"
	"strings"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	grpcpeer "google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/quarrynet/quarry/internal/peertls"
)

// The server's interceptors, outermost first:
//
//  1. observe: picks the request ID (the client's x-request-id or a new one),
//     puts it in the context and the response headers, and when the handler
//     returns, logs one line (method, peer, code, duration) and counts the
//     call in the metrics. It sees the final code of every call, including
//     the ones the inner interceptors refuse or recover.
//  2. recovery (go-grpc-middleware's): a panic becomes codes.Internal, with
//     its stack logged; the server goroutine survives.
//  3. deadline: bounds the call's context (Deadlines).
//  4. authorize: proven peer ID → role → Roles policy. It runs inside the
//     deadline because a RoleResolver may read state, and inside recovery so
//     a resolver bug is a 500, not a crash.
//
// Request ID, logging and metrics are one interceptor of our own rather than
// go-grpc-middleware's logging interceptor plus a metrics provider: they share
// one start time, one code and one peer lookup, the log line must carry the
// proven peer ID (not the socket address) and the request ID, and together
// they are shorter than the adapters. Recovery is the middleware's, as is.
// Its selector package is not used: the Roles policy itself names the open
// methods (health, reflection), so there is no second, hidden list.

// callRole is the context key of the caller's role.
type callRole struct{}

// RoleFromContext returns the role the RoleResolver gave the caller of the
// handler whose context this is ("" for a peer without a role, or outside a
// handler). The caller's peer ID is peertls.PeerFromContext(ctx).
func RoleFromContext(ctx context.Context) Role {
	r, _ := ctx.Value(callRole{}).(Role)
	return r
}

func (s *Server) unaryInterceptors() []grpc.UnaryServerInterceptor {
	return []grpc.UnaryServerInterceptor{
		s.observeUnary,
		recovery.UnaryServerInterceptor(recovery.WithRecoveryHandlerContext(s.recovered)),
		s.deadlineUnary,
		s.authorizeUnary,
	}
}

func (s *Server) streamInterceptors() []grpc.StreamServerInterceptor {
	return []grpc.StreamServerInterceptor{
		s.observeStream,
		recovery.StreamServerInterceptor(recovery.WithRecoveryHandlerContext(s.recovered)),
		s.deadlineStream,
		s.authorizeStream,
	}
}

// serverStream replaces a stream's context.
type serverStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (ss *serverStream) Context() context.Context { return ss.ctx }

func (s *Server) observeUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	id := incomingRequestID(ctx)
	ctx = WithRequestID(ctx, id)
	// Fails only if headers were already sent, which they cannot be here.
	_ = grpc.SetHeader(ctx, metadata.Pairs(RequestIDHeader, id))
	svc, method := splitMethod(info.FullMethod)
	s.metrics.start(typeUnary, svc, method)
	resp, err := handler(ctx, req)
	s.finish(ctx, typeUnary, info.FullMethod, svc, method, start, err)
	return resp, err
}

func (s *Server) observeStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	start := time.Now()
	id := incomingRequestID(ss.Context())
	_ = ss.SetHeader(metadata.Pairs(RequestIDHeader, id))
	ctx := WithRequestID(ss.Context(), id)
	typ := streamType(info.IsClientStream, info.IsServerStream)
	svc, method := splitMethod(info.FullMethod)
	s.metrics.start(typ, svc, method)
	err := handler(srv, &serverStream{ss, ctx})
	s.finish(ctx, typ, info.FullMethod, svc, method, start, err)
	return err
}

// finish counts and logs a completed call.
func (s *Server) finish(ctx context.Context, typ, fullMethod, svc, method string, start time.Time, err error) {
	d := time.Since(start)
	code := codeOf(err)
	s.metrics.done(typ, svc, method, code, d)
	level := levelOf(code)
	if !s.log.Enabled(ctx, level) {
		return
	}
	attrs := make([]slog.Attr, 0, 7)
	attrs = append(attrs,
		slog.String("method", fullMethod),
		slog.String("type", typ),
		slog.String("peer", callerID(ctx)),
		slog.String("code", code.String()),
		slog.Duration("duration", d),
	)
	if p, ok := grpcpeer.FromContext(ctx); ok && p.Addr != nil {
		attrs = append(attrs, slog.String("addr", p.Addr.String()))
	}
	if err != nil {
		attrs = append(attrs, slog.String("error", status.Convert(err).Message()))
	}
	s.log.LogAttrs(ctx, level, "grpc call", attrs...)
}

// recovered turns a handler's panic into codes.Internal. The panic value
// and stack go to the log; the client gets only the request ID to quote.
func (s *Server) recovered(ctx context.Context, p any) error {
	s.metrics.panics.Inc()
	method, _ := grpc.Method(ctx)
	s.log.LogAttrs(ctx, slog.LevelError, "panic in gRPC handler",
		slog.String("method", method),
		slog.String("peer", callerID(ctx)),
		slog.Any("panic", p),
		slog.String("stack", string(debug.Stack())),
	)
	return status.Errorf(codes.Internal, "internal error in %s (request ID %s); the server logged the details", method, RequestID(ctx))
}

func (s *Server) deadlineUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if limit := s.cfg.Deadlines.limit(info.FullMethod, false); limit > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, limit) // keeps an earlier client deadline
		defer cancel()
	}
	return handler(ctx, req)
}

func (s *Server) deadlineStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if limit := s.cfg.Deadlines.limit(info.FullMethod, true); limit > 0 {
		ctx, cancel := context.WithTimeout(ss.Context(), limit)
		defer cancel()
		ss = &serverStream{ss, ctx}
	}
	return handler(srv, ss)
}

func (s *Server) authorizeUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	_, role, err := authorize(ctx, s.cfg.Roles, s.cfg.Resolve, info.FullMethod)
	if err != nil {
		return nil, err
	}
	return handler(context.WithValue(ctx, callRole{}, role), req)
}

func (s *Server) authorizeStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	_, role, err := authorize(ss.Context(), s.cfg.Roles, s.cfg.Resolve, info.FullMethod)
	if err != nil {
		return err
	}
	return handler(srv, &serverStream{ss, context.WithValue(ss.Context(), callRole{}, role)})
}

// codeOf is the code gRPC will send for a handler's error: a status error's
// own, DeadlineExceeded or Canceled for context errors, Unknown otherwise.
func codeOf(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	if st, ok := status.FromError(err); ok {
		return st.Code()
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		return codes.Canceled
	}
	return codes.Unknown
}

// levelOf logs server faults as errors, overload and timeouts as warnings,
// and everything the client caused or asked for as info.
func levelOf(code codes.Code) slog.Level {
	switch code {
	case codes.Internal, codes.Unknown, codes.DataLoss, codes.Unimplemented:
		return slog.LevelError
	case codes.DeadlineExceeded, codes.Unavailable:
		return slog.LevelWarn
	}
	return slog.LevelInfo
}

// callerID is the proven peer ID of the caller, or "-".
func callerID(ctx context.Context) string {
	id, err := peertls.PeerFromContext(ctx)
	if err != nil {
		return "-"
	}
	return id.String()
}

// splitMethod splits "/pkg.Service/Method" into "pkg.Service", "Method".
func splitMethod(fullMethod string) (string, string) {
	s := strings.TrimPrefix(fullMethod, "/")
	if i := strings.IndexByte(s, '/'); i >= 0 {
		return s[:i], s[i+1:]
	}
	return "unknown", s
}
