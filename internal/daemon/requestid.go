package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// RequestIDHeader is the gRPC metadata key that carries a request ID, in
// both directions: a client may send one, and the server always answers with
// the one it used in its response headers.
const RequestIDHeader = "x-request-id"

// maxRequestIDLen bounds a client-chosen request ID; longer ones, or ones
// with characters outside printable ASCII, are replaced by a generated ID so
// that a caller cannot forge log lines or bloat them.
const maxRequestIDLen = 128

type requestIDKey struct{}

// RequestID returns the request ID of the call ctx belongs to, or "".
// Handlers get one in their context from the server's interceptors.
func RequestID(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey{}).(string)
	return id
}

// WithRequestID returns a context carrying id. Outgoing calls made with it
// through a client built with ClientInterceptors (or Dial) send it, so one
// ID follows a request across daemons.
func WithRequestID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, requestIDKey{}, id)
}

// NewRequestID returns a random 128-bit ID in hex.
func NewRequestID() string {
	var b [16]byte
	rand.Read(b[:]) // never fails (crypto/rand)
	return hex.EncodeToString(b[:])
}

// incomingRequestID returns the client's request ID if it sent a usable one,
// else a new one.
func incomingRequestID(ctx context.Context) string {
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get(RequestIDHeader); len(v) > 0 && validRequestID(v[0]) {
			return v[0]
		}
	}
	return NewRequestID()
}

func validRequestID(id string) bool {
	if id == "" || len(id) > maxRequestIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		if id[i] < 0x21 || id[i] > 0x7e {
			return false
		}
	}
	return true
}

// ClientInterceptors are dial options that send the request ID of the
// call's context (RequestID) as x-request-id, unless the caller already put
// one in the outgoing metadata.
func ClientInterceptors() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			return invoker(outgoingRequestID(ctx), method, req, reply, cc, opts...)
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			return streamer(outgoingRequestID(ctx), desc, cc, method, opts...)
		}),
	}
}

func outgoingRequestID(ctx context.Context) context.Context {
	id := RequestID(ctx)
	if id == "" {
		return ctx
	}
	if md, ok := metadata.FromOutgoingContext(ctx); ok && len(md.Get(RequestIDHeader)) > 0 {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, RequestIDHeader, id)
}

// LogHandler wraps h so that every record logged with a context that
// carries a request ID (Logger.InfoContext(ctx, …) inside a handler) gets a
// "request_id" attribute. New wraps Config.Logger with it, so handlers that
// log through the daemon's logger with their call's context need do nothing
// else. (Inside a WithGroup, the attribute lands in that group.)
func LogHandler(h slog.Handler) slog.Handler {
	if _, ok := h.(*requestIDHandler); ok {
		return h
	}
	return &requestIDHandler{h}
}

type requestIDHandler struct{ slog.Handler }

func (h *requestIDHandler) Handle(ctx context.Context, r slog.Record) error {
	if id := RequestID(ctx); id != "" {
		r.AddAttrs(slog.String("request_id", id))
	}
	return h.Handler.Handle(ctx, r)
}

func (h *requestIDHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &requestIDHandler{h.Handler.WithAttrs(attrs)}
}

func (h *requestIDHandler) WithGroup(name string) slog.Handler {
	return &requestIDHandler{h.Handler.WithGroup(name)}
}
