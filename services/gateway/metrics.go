package gateway

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the gateway's Prometheus metrics. No label carries a handle or
// an address: cardinality stays fixed however many people chat.
type metrics struct {
	connections    prometheus.Gauge
	upgrades       *prometheus.CounterVec // result
	disconnects    *prometheus.CounterVec // code, reason
	messages       *prometheus.CounterVec // direction: in (from clients), out (written to sockets)
	bytes          *prometheus.CounterVec // direction, payload bytes
	dropped        *prometheus.CounterVec // reason
	clientErrors   *prometheus.CounterVec // code
	natsReconnects prometheus.Counter
	natsDenied     prometheus.Counter
	republished    prometheus.Counter
	// deliveryLatency is from a message's server timestamp (the accepting
	// gateway's clock) to its write to a socket here.
	deliveryLatency prometheus.Histogram

	// Children resolved once, for the per-message paths.
	messagesIn, messagesOut, bytesIn, bytesOut prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		connections: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "chat_gateway_connections",
			Help: "Open websocket connections.",
		}),
		upgrades: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chat_gateway_upgrades_total",
			Help: "Websocket upgrade attempts by result: ok, rejected (a bad handshake), draining, or the HTTP status a refused one got (403 origin, 429 per-address limit, 503 gateway full).",
		}, []string{"result"}),
		disconnects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chat_gateway_disconnects_total",
			Help: "Closed websocket connections by close code (1006: no close frame) and reason.",
		}, []string{"code", "reason"}),
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chat_gateway_messages_total",
			Help: "Chat messages: in = accepted from clients and published, out = queued to sockets.",
		}, []string{"direction"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chat_gateway_message_bytes_total",
			Help: "Payload bytes of chat messages, by direction as in chat_gateway_messages_total.",
		}, []string{"direction"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chat_gateway_dropped_messages_total",
			Help: "Frames not delivered, by reason.",
		}, []string{"reason"}),
		clientErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chat_gateway_client_errors_total",
			Help: "Error frames sent to clients, by error code.",
		}, []string{"code"}),
		natsReconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "chat_gateway_nats_reconnects_total",
			Help: "Reconnections to NATS.",
		}),
		deliveryLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "chat_gateway_delivery_latency_seconds",
			Help:    "Time from a chat message's server timestamp to its write to a socket of this gateway.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		natsDenied: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "chat_gateway_nats_permission_errors_total",
			Help: "Publishes or subscriptions NATS refused for lack of permission.",
		}),
		republished: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "chat_gateway_republished_messages_total",
			Help: "Messages published again because they had not come back from NATS in time.",
		}),
	}
	m.messagesIn, m.messagesOut = m.messages.WithLabelValues("in"), m.messages.WithLabelValues("out")
	m.bytesIn, m.bytesOut = m.bytes.WithLabelValues("in"), m.bytes.WithLabelValues("out")
	// Series a dashboard graphs exist from the start, at zero.
	for _, r := range []string{reasonSlowConsumer, "invalid_payload", "duplicate", "not_delivered", "rate_limited"} {
		m.dropped.WithLabelValues(r)
	}
	for _, d := range []struct {
		code   int
		reason string
	}{
		{1006, reasonEOF}, {1006, reasonTimeout}, {1006, reasonWriteTimeout}, {1008, reasonSlowConsumer},
		{1001, reasonShutdown}, {1009, reasonTooBig}, {1007, reasonInvalidUTF8}, {1003, reasonBinary},
		{1002, reasonProtocol}, {1008, reasonBadHandle}, {1008, reasonFlood},
	} {
		m.disconnects.WithLabelValues(strconv.Itoa(d.code), d.reason)
	}
	for _, r := range []string{"ok", "rejected", "draining", "403", "429", "503"} {
		m.upgrades.WithLabelValues(r)
	}
	reg.MustRegister(m.connections, m.upgrades, m.disconnects, m.messages, m.bytes, m.dropped, m.clientErrors, m.natsReconnects, m.natsDenied, m.republished, m.deliveryLatency)
	return m
}
