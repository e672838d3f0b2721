package daemon

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quarrynet/quarry/internal/peertls"
)

// Role is what a peer is to a daemon: "replica", "miner", "admin"… Each
// daemon names its own roles; this package only compares them.
type Role string

// Anyone, in a Roles entry, admits every caller that proved a peer ID,
// whatever role (or none) the resolver gives it.
const Anyone Role = "*"

// Roles says who may call what. Keys are full gRPC method names
// ("/quarry.ledger.v1.LedgerService/SubmitTx") or service prefixes
// ("/quarry.ledger.v1.LedgerService/"); an exact method entry wins over its
// service's entry. Values list the roles admitted.
//
// A method with no entry is denied to everyone, and Server.Run refuses to
// start while a registered method has none, so a new RPC is never public by
// accident. The gRPC health and reflection services are open to Anyone unless
// an entry names them.
type Roles map[string][]Role

// RoleResolver tells a proven peer's role. It runs on every call, after the
// TLS handshake proved id, so it must be fast and safe for concurrent use; it
// may consult changing state (current ledger membership). It returns "" for
// a peer without a role, and an error only when it cannot decide (the call
// then fails with Unavailable).
type RoleResolver func(ctx context.Context, id peer.ID) (Role, error)

// StaticRoles resolves from a fixed table; unknown peers have no role.
func StaticRoles(table map[peer.ID]Role) RoleResolver {
	t := maps.Clone(table)
	return func(_ context.Context, id peer.ID) (Role, error) { return t[id], nil }
}

// Services whose methods are open to Anyone when Roles does not name them.
var openServices = []string{
	"grpc.health.v1.Health",
	"grpc.reflection.v1.ServerReflection",
	"grpc.reflection.v1alpha.ServerReflection",
}

// Allowed returns the roles admitted to fullMethod and whether any entry
// covers it.
func (r Roles) Allowed(fullMethod string) ([]Role, bool) {
	if roles, ok := lookupMethod(r, fullMethod); ok {
		return roles, true
	}
	if slices.Contains(openServices, serviceName(fullMethod)) {
		return []Role{Anyone}, true
	}
	return nil, false
}

// Validate checks that every key is a method or service name and every entry
// admits at least one role.
func (r Roles) Validate() error {
	for key, roles := range r {
		if err := validMethodKey(key); err != nil {
			return fmt.Errorf("daemon: Roles: %w", err)
		}
		if len(roles) == 0 {
			return fmt.Errorf("daemon: Roles[%q] admits no role; remove the entry to deny everyone, or list roles (daemon.Anyone for any peer)", key)
		}
		for _, role := range roles {
			if role == "" {
				return fmt.Errorf("daemon: Roles[%q] lists an empty role", key)
			}
		}
	}
	return nil
}

var (
	// ErrUnauthenticated is the kind of a call that carries no proven peer
	// ID (a connection not secured by peertls).
	ErrUnauthenticated = errors.New("daemon: caller proved no peer ID")
	// ErrPermissionDenied is the kind of a call whose caller's role the
	// Roles policy does not admit.
	ErrPermissionDenied = errors.New("daemon: permission denied")
)

// authorize decides whether the caller in ctx may call fullMethod and
// returns its peer ID and role. Errors are gRPC status errors.
func authorize(ctx context.Context, policy Roles, resolve RoleResolver, fullMethod string) (peer.ID, Role, error) {
	id, err := peertls.PeerFromContext(ctx)
	if err != nil {
		return "", "", status.Errorf(codes.Unauthenticated,
			"%v: %s needs a connection secured with peer-ID TLS (peertls)", ErrUnauthenticated, fullMethod)
	}
	allowed, ok := policy.Allowed(fullMethod)
	if !ok {
		return id, "", status.Errorf(codes.PermissionDenied,
			"%v: %s has no role policy on this daemon, so nobody may call it", ErrPermissionDenied, fullMethod)
	}
	var role Role
	if resolve != nil {
		role, err = resolve(ctx, id)
		if err != nil {
			return id, "", status.Errorf(codes.Unavailable, "daemon: cannot tell the role of peer %s yet: %v; retry", id, err)
		}
	}
	if slices.Contains(allowed, Anyone) || (role != "" && slices.Contains(allowed, role)) {
		return id, role, nil
	}
	has := "has no role"
	if role != "" {
		has = fmt.Sprintf("has role %q", role)
	}
	return id, role, status.Errorf(codes.PermissionDenied,
		"%v: peer %s %s; %s needs one of: %s", ErrPermissionDenied, id, has, fullMethod, joinRoles(allowed))
}

func joinRoles(roles []Role) string {
	s := make([]string, len(roles))
	for i, r := range roles {
		s[i] = string(r)
	}
	return strings.Join(s, ", ")
}

// lookupMethod finds fullMethod's entry in m: the exact method, else its
// service prefix.
func lookupMethod[V any](m map[string]V, fullMethod string) (V, bool) {
	if v, ok := m[fullMethod]; ok {
		return v, true
	}
	if i := strings.LastIndexByte(fullMethod, '/'); i > 0 {
		if v, ok := m[fullMethod[:i+1]]; ok {
			return v, true
		}
	}
	var zero V
	return zero, false
}

// serviceName is "pkg.Service" of "/pkg.Service/Method".
func serviceName(fullMethod string) string {
	s := strings.TrimPrefix(fullMethod, "/")
	if i := strings.IndexByte(s, '/'); i >= 0 {
		return s[:i]
	}
	return s
}

// validMethodKey accepts "/pkg.Service/Method" and "/pkg.Service/".
func validMethodKey(key string) error {
	rest, ok := strings.CutPrefix(key, "/")
	svc, method, ok2 := strings.Cut(rest, "/")
	if !ok || !ok2 || svc == "" || strings.Contains(method, "/") {
		return fmt.Errorf("%q is neither a full method name (\"/pkg.Service/Method\") nor a service prefix (\"/pkg.Service/\")", key)
	}
	return nil
}
