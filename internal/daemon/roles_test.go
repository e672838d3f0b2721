package daemon

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestRolesAllowed(t *testing.T) {
	r := Roles{
		"/q.v1.Ledger/":                {Anyone},
		"/q.v1.Ledger/AddPeer":         {"admin"},
		"/q.v1.Raft/":                  {"replica"},
		"/grpc.health.v1.Health/Check": {"admin"}, // overrides the open default
	}
	for _, tc := range []struct {
		method string
		want   []Role
		ok     bool
	}{
		{"/q.v1.Ledger/Submit", []Role{Anyone}, true},
		{"/q.v1.Ledger/AddPeer", []Role{"admin"}, true},
		{"/q.v1.Raft/Send", []Role{"replica"}, true},
		{"/q.v1.Other/X", nil, false},
		{"/q.v1.LedgerX/Submit", nil, false}, // a prefix is a whole service
		{"/grpc.health.v1.Health/Watch", []Role{Anyone}, true},
		{"/grpc.health.v1.Health/Check", []Role{"admin"}, true},
		{"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", []Role{Anyone}, true},
	} {
		got, ok := r.Allowed(tc.method)
		if ok != tc.ok || strings.Join(roleStrings(got), ",") != strings.Join(roleStrings(tc.want), ",") {
			t.Errorf("Allowed(%s) = %v %v, want %v %v", tc.method, got, ok, tc.want, tc.ok)
		}
	}
}

func roleStrings(rs []Role) []string {
	s := make([]string, len(rs))
	for i, r := range rs {
		s[i] = string(r)
	}
	return s
}

// A connection not secured by peertls has no proven peer: Unauthenticated.
// (The server always uses peertls, so this is tested below the network.)
func TestAuthorizeWithoutPeer(t *testing.T) {
	_, _, err := authorize(context.Background(), Roles{"/a.B/": {Anyone}}, nil, "/a.B/C")
	st := status.Convert(err)
	if st.Code() != codes.Unauthenticated || !strings.Contains(st.Message(), "peer-ID TLS") {
		t.Fatalf("got %v", err)
	}
}

func TestRequestIDValidation(t *testing.T) {
	for id, ok := range map[string]bool{
		"abc-123":                true,
		"":                       false,
		"has space":              false,
		"tab\t":                  false,
		"é":                      false,
		strings.Repeat("a", 128): true,
		strings.Repeat("a", 129): false,
	} {
		if validRequestID(id) != ok {
			t.Errorf("validRequestID(%q) = %v", id, !ok)
		}
	}
}
