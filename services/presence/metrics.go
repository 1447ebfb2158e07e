package presence

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fly-chat/chat/pkg/protocol"
)

// metrics are the presence service's Prometheus metrics; no label carries a
// handle.
type metrics struct {
	notices        *prometheus.CounterVec // type, reason
	lostGateways   prometheus.Counter
	syncs          *prometheus.CounterVec // result
	handleSeconds  *prometheus.HistogramVec
	natsReconnects prometheus.Counter
	natsDenied     prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, state func() Stats) *metrics {
	m := &metrics{
		notices: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chat_presence_notices_total",
			Help: "Join and leave notices published, by type and leave reason.",
		}, []string{"type", "reason"}),
		lostGateways: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "chat_presence_lost_gateways_total",
			Help: "Gateways declared lost after missing heartbeats.",
		}),
		syncs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chat_presence_syncs_total",
			Help: "Full-state syncs asked of gateways, by result.",
		}, []string{"result"}),
		handleSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "chat_presence_gateway_message_seconds",
			Help:    "Time to process one gateway message (heartbeat, delta, bye), by kind.",
			Buckets: []float64{1e-6, 5e-6, 25e-6, 100e-6, 500e-6, 2.5e-3, 10e-3, 50e-3},
		}, []string{"kind"}),
		natsReconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "chat_presence_nats_reconnects_total",
			Help: "Reconnections to NATS.",
		}),
		natsDenied: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "chat_presence_nats_permission_errors_total",
			Help: "Publishes or subscriptions NATS refused for lack of permission.",
		}),
	}
	// Series a dashboard graphs exist from the start, at zero.
	m.notices.WithLabelValues(protocol.TypeJoin, "")
	for _, r := range []string{protocol.ReasonClosed, protocol.ReasonTimeout, protocol.ReasonGatewayLost, protocol.ReasonShutdown} {
		m.notices.WithLabelValues(protocol.TypeLeave, r)
	}
	for _, r := range []string{"ok", "failed"} {
		m.syncs.WithLabelValues(r)
	}
	gauge := func(name, help string, f func(Stats) int) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 { return float64(f(state())) })
	}
	reg.MustRegister(m.notices, m.lostGateways, m.syncs, m.handleSeconds, m.natsReconnects, m.natsDenied,
		gauge("chat_presence_online_handles", "Handles announced online.", func(s Stats) int { return s.Online }),
		gauge("chat_presence_sessions", "Sessions over all gateways.", func(s Stats) int { return s.Sessions }),
		gauge("chat_presence_gateways", "Gateway instances being tracked.", func(s Stats) int { return s.Gateways }),
	)
	return m
}
