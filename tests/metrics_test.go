package tests

import (
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/fly-chat/chat/internal/testkit"
	"github.com/fly-chat/chat/pkg/protocol"
)

// Both services' /metrics, parsed with the Prometheus text parser, move
// with what users do: a connect, a message, a leave.
func TestMetricsFollowActivity(t *testing.T) {
	ns := testkit.StartNATS(t)
	pp := startPresence(t, ns.ClientURL())
	pg, url := startGateway(t, ns.ClientURL())
	gm, pm := "http://"+pg.Attrs["ops_addr"]+"/metrics", "http://"+pp.Attrs["ops_addr"]+"/metrics"
	value := func(url, name string, labels ...string) float64 {
		return testkit.Value(testkit.Scrape(t, url), name, labels...)
	}
	is := func(want float64) func(float64) bool { return func(v float64) bool { return v == want } }

	if v := value(gm, "chat_gateway_connections"); v != 0 {
		t.Fatalf("connections %v before anyone came", v)
	}
	alice, _ := connect(t, url, "alice")
	testkit.WaitMetric(t, gm, wait, is(1), "chat_gateway_connections")
	testkit.WaitMetric(t, gm, wait, is(1), "chat_gateway_upgrades_total", "result", "ok")
	testkit.WaitMetric(t, pm, wait, is(1), "chat_presence_online_handles")
	testkit.WaitMetric(t, pm, wait, is(1), "chat_presence_sessions")
	testkit.WaitMetric(t, pm, wait, is(1), "chat_presence_gateways")
	testkit.WaitMetric(t, pm, wait, is(1), "chat_presence_notices_total", "type", "join")

	in := value(gm, "chat_gateway_messages_total", "direction", "in")
	alice.Send(`{"type":"message","message":"counted"}`)
	alice.ExpectMessage("alice", "counted", wait)
	testkit.WaitMetric(t, gm, wait, is(in+1), "chat_gateway_messages_total", "direction", "in")
	testkit.WaitMetric(t, gm, wait, is(1), "chat_gateway_messages_total", "direction", "out")
	testkit.WaitMetric(t, gm, wait, func(v float64) bool { return v > 0 }, "chat_gateway_message_bytes_total", "direction", "in")
	if h := histogramCount(testkit.Scrape(t, gm), "chat_gateway_delivery_latency_seconds"); h != 1 {
		t.Errorf("delivery latency observed %d times, want 1", h)
	}

	alice.Send(`{"type":"bogus"}`)
	alice.ExpectError(protocol.CodeUnknownType, wait)
	testkit.WaitMetric(t, gm, wait, is(1), "chat_gateway_client_errors_total", "code", protocol.CodeUnknownType)

	notices := value(pm, "chat_presence_notices_total")
	alice.Conn.Close()
	testkit.WaitMetric(t, gm, wait, is(0), "chat_gateway_connections")
	testkit.WaitMetric(t, gm, wait, is(1), "chat_gateway_disconnects_total", "code", "1006", "reason", "eof")
	testkit.WaitMetric(t, pm, wait, is(notices+1), "chat_presence_notices_total")
	testkit.WaitMetric(t, pm, wait, is(1), "chat_presence_notices_total", "type", "leave", "reason", protocol.ReasonClosed)
	testkit.WaitMetric(t, pm, wait, is(0), "chat_presence_online_handles")
}

func histogramCount(fams map[string]*dto.MetricFamily, name string) uint64 {
	var n uint64
	if f, ok := fams[name]; ok {
		for _, m := range f.GetMetric() {
			n += m.GetHistogram().GetSampleCount()
		}
	}
	return n
}

// Every metric of both services is named for its service (or is one of the
// standard Go and process collectors), counters end in _total, and no label
// could carry a handle or an address.
func TestMetricNamesAndLabels(t *testing.T) {
	ns := testkit.StartNATS(t)
	pp := startPresence(t, ns.ClientURL())
	pg, url := startGateway(t, ns.ClientURL())
	connect(t, url, "alice") // so that labelled series exist
	for service, addr := range map[string]string{"gateway": pg.Attrs["ops_addr"], "presence": pp.Attrs["ops_addr"]} {
		for name, f := range testkit.Scrape(t, "http://"+addr+"/metrics") {
			if strings.HasPrefix(name, "go_") || strings.HasPrefix(name, "process_") || strings.HasPrefix(name, "promhttp_") {
				continue
			}
			if !strings.HasPrefix(name, "chat_"+service+"_") {
				t.Errorf("%s exports %s", service, name)
			}
			if f.GetType() == dto.MetricType_COUNTER && !strings.HasSuffix(name, "_total") {
				t.Errorf("counter %s does not end in _total", name)
			}
			for _, m := range f.GetMetric() {
				for _, l := range m.GetLabel() {
					switch l.GetName() {
					case "handle", "name", "user", "remote", "addr", "ip", "id":
						t.Errorf("%s has a label %q", name, l.GetName())
					}
				}
			}
		}
	}
}
