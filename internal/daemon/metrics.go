package daemon

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
)

// Call types, as the grpc_type label spells them (the names
// go-grpc-prometheus used, so existing dashboards work).
const (
	typeUnary        = "unary"
	typeClientStream = "client_stream"
	typeServerStream = "server_stream"
	typeBidiStream   = "bidi_stream"
)

func streamType(clientStream, serverStream bool) string {
	switch {
	case clientStream && serverStream:
		return typeBidiStream
	case clientStream:
		return typeClientStream
	case serverStream:
		return typeServerStream
	}
	return typeUnary
}

// metrics are a server's gRPC metrics. Their names and labels follow
// go-grpc-prometheus (grpc_server_handled_total{grpc_type, grpc_service,
// grpc_method, grpc_code} …). Label values come only from registered methods
// and gRPC codes (unknown methods never reach interceptors), so cardinality
// is bounded.
type metrics struct {
	started  *prometheus.CounterVec
	handled  *prometheus.CounterVec
	duration *prometheus.HistogramVec
	panics   prometheus.Counter
}

// handlingBuckets span 0.5 ms (a local read) to a minute (a long unary call
// at the edge of its deadline); streams that run longer land in +Inf.
var handlingBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		started: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grpc_server_started_total",
			Help: "RPCs started on the server.",
		}, []string{"grpc_type", "grpc_service", "grpc_method"}),
		handled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grpc_server_handled_total",
			Help: "RPCs completed on the server, by status code.",
		}, []string{"grpc_type", "grpc_service", "grpc_method", "grpc_code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "grpc_server_handling_seconds",
			Help:    "Time from an RPC's start to its handler's return, in seconds.",
			Buckets: handlingBuckets,
		}, []string{"grpc_type", "grpc_service", "grpc_method"}),
		panics: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "grpc_req_panics_recovered_total",
			Help: "Handler panics recovered and answered with codes.Internal.",
		}),
	}
	for _, c := range []prometheus.Collector{m.started, m.handled, m.duration, m.panics} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// initMethods creates the series of every registered method at zero, so a
// rate() over a method that has not been called yet is 0, not absent.
func (m *metrics) initMethods(services map[string]grpc.ServiceInfo) {
	for svc, info := range services {
		for _, mi := range info.Methods {
			typ := streamType(mi.IsClientStream, mi.IsServerStream)
			m.started.WithLabelValues(typ, svc, mi.Name)
			m.duration.WithLabelValues(typ, svc, mi.Name)
			m.handled.WithLabelValues(typ, svc, mi.Name, codes.OK.String())
		}
	}
}

func (m *metrics) start(typ, svc, method string) {
	m.started.WithLabelValues(typ, svc, method).Inc()
}

func (m *metrics) done(typ, svc, method string, code codes.Code, d time.Duration) {
	m.handled.WithLabelValues(typ, svc, method, code.String()).Inc()
	m.duration.WithLabelValues(typ, svc, method).Observe(d.Seconds())
}
