package presence

import (
	"encoding/json"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/fly-chat/chat/pkg/protocol"
)

// benchGateways builds a State holding gateways × perGateway distinct
// handles, one session each, the way a running system gets there: a
// heartbeat, then a full sync, per gateway. The handles are new to presence
// (unconfirmed), so each is announced with a join. It returns the heartbeat
// each gateway sends in steady state.
func benchGateways(b testing.TB, gateways, perGateway int) (*State, []protocol.Heartbeat) {
	b.Helper()
	var notices int
	built := false
	s := NewState(3*time.Second, Outputs{
		Notice: func(protocol.Notice) { notices++ },
		Sync: func(gw, _ string) {
			if built { // a steady heartbeat whose digest does not match
				b.Errorf("gateway %s asked for a sync after the state was built", gw)
			}
		},
		Lost: func(gw string) { b.Errorf("gateway %s lost during the benchmark", gw) },
	})
	s.endQuiet()
	// A long interval keeps gateways from being lost while the state is
	// built; the interval does not change the cost of a heartbeat.
	const interval = time.Hour
	hbs := make([]protocol.Heartbeat, gateways)
	for g := range gateways {
		id := fmt.Sprintf("gw%03d", g)
		c := protocol.SyncChunk{Gateway: id, Instance: id + "-1", IntervalMS: interval.Milliseconds(), Seq: 1, Parts: 1,
			Handles: make(map[string]int, perGateway), Unconfirmed: make([]string, 0, perGateway)}
		var d protocol.Digest
		for u := range perGateway {
			h := fmt.Sprintf("user-%03d-%05d", g, u)
			c.Handles[h] = 1
			c.Unconfirmed = append(c.Unconfirmed, h)
			d.Update(h, 0, 1)
		}
		hbs[g] = protocol.Heartbeat{Gateway: id, Instance: c.Instance, IntervalMS: interval.Milliseconds(), Seq: 1, Digest: d.String(), Handles: perGateway, Sessions: perGateway}
		s.Heartbeat(hbs[g])
		s.Synced(c)
	}
	if st := s.Stats(); notices != gateways*perGateway || st.Online != gateways*perGateway {
		b.Fatalf("%d joins and %d online for %d handles", notices, st.Online, gateways*perGateway)
	}
	built = true
	return s, hbs
}

// The benchmarks' state is what it claims to be: everyone joined, every
// heartbeat matches, and a heartbeat round changes nothing. (Benchmarks do
// not run with the tests; this keeps their setup from rotting unseen.)
func TestBenchmarkState(t *testing.T) {
	s, hbs := benchGateways(t, 3, 10)
	before := s.Stats()
	for _, hb := range hbs {
		s.Heartbeat(hb)
	}
	if after := s.Stats(); after != before || after.Online != 30 || after.Gateways != 3 {
		t.Fatalf("after a heartbeat round %+v, before %+v", after, before)
	}
}

// BenchmarkPresence100x10000 is presence with 100 gateways of 10,000 handles
// each (1,000,000 handles): the memory the state takes, and the cost of one
// heartbeat round (a heartbeat from every gateway, in steady state). It
// also reports the heartbeat's size, which does not depend on the handles.
func BenchmarkPresence100x10000(b *testing.B) {
	const gateways, perGateway = 100, 10000
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	s, hbs := benchGateways(b, gateways, perGateway)
	runtime.GC()
	runtime.ReadMemStats(&after)
	heap := float64(after.HeapAlloc - before.HeapAlloc)

	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		for _, hb := range hbs {
			s.Heartbeat(hb)
		}
	}
	b.StopTimer()
	b.ReportMetric(heap/(1<<20), "state-MiB")
	b.ReportMetric(heap/float64(gateways*perGateway), "state-B/handle")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*gateways), "ns/heartbeat")

	// What a gateway of 10,000 handles sends per second in steady state at
	// the default HEARTBEAT_INTERVAL of 2s: one heartbeat (fly machine ids
	// are 14 characters, instance ids 22).
	hb := hbs[0]
	hb.Gateway, hb.Instance, hb.IntervalMS, hb.Region, hb.V = "e784e903a55e18", "sbffeA2bjC72ezbp3iTSeK", 2000, "ams", 123456
	data, _ := json.Marshal(hb)
	b.ReportMetric(float64(len(data))/2, "hb-B/gw/s")
	runtime.KeepAlive(s)
}

// BenchmarkPresenceDelta is one session connecting and one leaving, on a
// State that already holds 1,000,000 handles: the work presence does per
// connect or disconnect anywhere.
func BenchmarkPresenceDelta(b *testing.B) {
	s, hbs := benchGateways(b, 100, 10000)
	gw := hbs[0]
	seq := gw.Seq
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		h := fmt.Sprintf("extra-%d", i%1000)
		seq++
		s.Delta(protocol.Delta{Gateway: gw.Gateway, Instance: gw.Instance, Seq: seq, Handle: h, Sessions: 1})
		seq++
		s.Delta(protocol.Delta{Gateway: gw.Gateway, Instance: gw.Instance, Seq: seq, Handle: h, Sessions: 0, Reason: protocol.ReasonClosed})
	}
}
