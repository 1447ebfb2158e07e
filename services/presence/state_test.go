package presence

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/fly-chat/chat/internal/natsconn"
	"github.com/fly-chat/chat/pkg/protocol"
)

// recorder collects what State does.
type recorder struct {
	mu      sync.Mutex
	notices []protocol.Notice
	syncs   []string
	lost    []string
}

func (r *recorder) outputs() Outputs {
	return Outputs{
		Notice: func(n protocol.Notice) { r.mu.Lock(); r.notices = append(r.notices, n); r.mu.Unlock() },
		Sync:   func(gw, _ string) { r.mu.Lock(); r.syncs = append(r.syncs, gw); r.mu.Unlock() },
		Lost:   func(gw string) { r.mu.Lock(); r.lost = append(r.lost, gw); r.mu.Unlock() },
	}
}

// take returns the notices so far, as "join alice 1" / "leave bob closed 2",
// and forgets them.
func (r *recorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, n := range r.notices {
		if n.Type == protocol.TypeLeave {
			out = append(out, fmt.Sprintf("leave %s %s %d", n.Name, n.Reason, n.V))
		} else {
			out = append(out, fmt.Sprintf("join %s %d", n.Name, n.V))
		}
	}
	r.notices = nil
	return out
}

func (r *recorder) takeSyncs() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.syncs
	r.syncs = nil
	return s
}

func expect(t *testing.T, r *recorder, want ...string) {
	t.Helper()
	synctest.Wait()
	if got := r.take(); !slices.Equal(got, want) {
		t.Fatalf("notices %q, want %q", got, want)
	}
}

const grace = 3 * time.Second

// fakeGateway drives State the way a gateway's messages would.
type fakeGateway struct {
	s        *State
	id, inst string
	seq      uint64
	counts   map[string]int
	digest   protocol.Digest
	interval time.Duration
}

// newGateway introduces a gateway with the given sessions: a heartbeat,
// the sync it triggers, and its answer.
func newGateway(t *testing.T, s *State, r *recorder, id string, counts map[string]int) *fakeGateway {
	t.Helper()
	g := &fakeGateway{s: s, id: id, inst: id + "-1", counts: map[string]int{}, interval: 2 * time.Second}
	for h, n := range counts {
		g.counts[h] = n
		g.digest.Update(h, 0, n)
	}
	s.Heartbeat(g.heartbeat())
	if got := r.takeSyncs(); !slices.Equal(got, []string{id}) {
		t.Fatalf("a new gateway's heartbeat asked for syncs %v", got)
	}
	s.Synced(g.full())
	return g
}

func (g *fakeGateway) heartbeat() protocol.Heartbeat {
	return protocol.Heartbeat{Gateway: g.id, Instance: g.inst, IntervalMS: g.interval.Milliseconds(), Seq: g.seq, Digest: g.digest.String()}
}

// full is the gateway's sync answer. Its handles are all unconfirmed: it
// has seen none of them announced.
func (g *fakeGateway) full() protocol.SyncChunk {
	return protocol.SyncChunk{Gateway: g.id, Instance: g.inst, IntervalMS: g.interval.Milliseconds(), Seq: g.seq, Parts: 1,
		Handles: g.counts, Unconfirmed: slices.Sorted(maps.Keys(g.counts))}
}

// set changes a handle's sessions and sends the delta.
func (g *fakeGateway) set(handle string, n int, reason string) {
	g.digest.Update(handle, g.counts[handle], n)
	g.counts[handle] = n
	if n == 0 {
		delete(g.counts, handle)
	}
	g.seq++
	g.s.Delta(protocol.Delta{Gateway: g.id, Instance: g.inst, Seq: g.seq, Handle: handle, Sessions: n, Reason: reason})
}

// started returns a State past its warm-up.
func started(t *testing.T) (*State, *recorder) {
	r := &recorder{}
	s := NewState(grace, r.outputs())
	s.Warmup(0)
	synctest.Wait()
	return s, r
}

func TestJoinAtOnceLeaveAfterGrace(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, r := started(t)
		a := newGateway(t, s, r, "a", nil)
		a.set("alice", 1, "")
		expect(t, r, "join alice 1")
		a.set("alice", 2, "") // a second tab
		expect(t, r)
		a.set("alice", 1, protocol.ReasonClosed)
		expect(t, r)
		a.set("alice", 0, protocol.ReasonTimeout)
		time.Sleep(grace - time.Millisecond)
		expect(t, r)
		time.Sleep(time.Millisecond)
		expect(t, r, "leave alice timeout 2")
	})
}

func TestComebackWithinGraceIsSilent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, r := started(t)
		a, b := newGateway(t, s, r, "a", nil), newGateway(t, s, r, "b", nil)
		a.set("alice", 1, "")
		expect(t, r, "join alice 1")
		a.set("alice", 0, protocol.ReasonClosed) // a refresh, landing on another gateway
		time.Sleep(grace / 2)
		b.set("alice", 1, "")
		time.Sleep(2 * grace)
		expect(t, r)
		if got, err := s.Roster(context.Background(), protocol.OnlineRequest{}); err != nil || !slices.Equal(got.Handles, []string{"alice"}) || got.V != 1 {
			t.Fatalf("roster %+v", got)
		}
	})
}

func TestSessionsOnTwoGateways(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, r := started(t)
		a, b := newGateway(t, s, r, "a", nil), newGateway(t, s, r, "b", nil)
		a.set("alice", 1, "")
		b.set("alice", 1, "")
		expect(t, r, "join alice 1")
		a.set("alice", 0, protocol.ReasonClosed)
		time.Sleep(2 * grace)
		expect(t, r)
		b.set("alice", 0, protocol.ReasonClosed)
		time.Sleep(grace)
		expect(t, r, "leave alice closed 2")
	})
}

// A gateway that stops heartbeating is lost after three intervals (and a
// quarter of slack); its handles with no session elsewhere leave at once.
func TestGatewayLost(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, r := started(t)
		a := newGateway(t, s, r, "a", map[string]int{"alice": 1, "carol": 1})
		b := newGateway(t, s, r, "b", map[string]int{"carol": 1, "bob": 1})
		expect(t, r, "join alice 1", "join carol 2", "join bob 3")
		stop := make(chan struct{})
		go func() { // b keeps heartbeating
			for {
				select {
				case <-stop:
					return
				case <-time.After(b.interval):
					s.Heartbeat(b.heartbeat())
				}
			}
		}()
		defer close(stop)
		silentSince := time.Now() // a's last heartbeat was at newGateway
		time.Sleep(3*a.interval + a.interval/4 - time.Millisecond)
		expect(t, r)
		time.Sleep(time.Millisecond)
		expect(t, r, "leave alice gateway-lost 4")
		if got := time.Since(silentSince); got > 3*a.interval+time.Second {
			t.Fatalf("lost after %v", got)
		}
		r.mu.Lock()
		lost := slices.Clone(r.lost)
		r.mu.Unlock()
		if !slices.Equal(lost, []string{"a"}) {
			t.Fatalf("lost %v", lost)
		}
	})
}

// While presence has no NATS connection, gateways' silence proves nothing.
func TestPausedPresenceLosesNoGateway(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, r := started(t)
		a := newGateway(t, s, r, "a", map[string]int{"alice": 1})
		expect(t, r, "join alice 1")
		s.Pause()
		time.Sleep(time.Minute)
		s.Resume()
		// The gateway may take up to MaxBackoff longer than presence to
		// reconnect; after that, silence counts again.
		time.Sleep(natsconn.MaxBackoff + 3*a.interval)
		s.Heartbeat(a.heartbeat())
		time.Sleep(3 * a.interval)
		expect(t, r)
		time.Sleep(a.interval/4 + a.interval)
		expect(t, r, "leave alice gateway-lost 2")
	})
}

// A restarted gateway (a new instance) replaces its old sessions: those not
// back within the grace period leave.
func TestRestartedGatewayReplacesSessions(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, r := started(t)
		a := newGateway(t, s, r, "a", map[string]int{"alice": 1, "bob": 1})
		expect(t, r, "join alice 1", "join bob 2")
		a2 := &fakeGateway{s: s, id: "a", inst: "a-2", counts: map[string]int{"bob": 1}, interval: a.interval}
		a2.digest.Update("bob", 0, 1)
		s.Heartbeat(a2.heartbeat())
		if got := r.takeSyncs(); !slices.Equal(got, []string{"a"}) {
			t.Fatalf("syncs %v", got)
		}
		s.Synced(a2.full())
		// A late message from the old instance changes nothing.
		s.Delta(protocol.Delta{Gateway: "a", Instance: "a-1", Seq: 1, Handle: "mallory", Sessions: 1})
		time.Sleep(grace)
		expect(t, r, "leave alice gateway-lost 3")
	})
}

// A missed delta (a gap in Seq) or a digest that disagrees makes presence
// ask for a full sync, and the sync puts things right.
func TestDriftTriggersSync(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, r := started(t)
		a := newGateway(t, s, r, "a", nil)
		a.set("alice", 1, "")
		expect(t, r, "join alice 1")

		// bob's delta is lost on the way; carol's arrives with a gap.
		a.counts["bob"], a.seq = 1, a.seq+1
		a.digest.Update("bob", 0, 1)
		a.set("carol", 1, "")
		if got := r.takeSyncs(); !slices.Equal(got, []string{"a"}) {
			t.Fatalf("a gap asked for syncs %v", got)
		}
		s.Synced(a.full())
		expect(t, r, "join bob 2", "join carol 3")

		// Same Seq, different digest: presence asks again.
		s.Heartbeat(a.heartbeat())
		if got := r.takeSyncs(); got != nil {
			t.Fatalf("an agreeing heartbeat asked for syncs %v", got)
		}
		hb := a.heartbeat()
		hb.Digest = "0"
		s.Heartbeat(hb)
		if got := r.takeSyncs(); !slices.Equal(got, []string{"a"}) {
			t.Fatalf("a disagreeing digest asked for syncs %v", got)
		}
	})
}

// A Delta that arrives while the sync is under way is applied after it.
func TestDeltaDuringSync(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, r := started(t)
		g := &fakeGateway{s: s, id: "a", inst: "a-1", counts: map[string]int{"alice": 1}, seq: 4, interval: 2 * time.Second}
		g.digest.Update("alice", 0, 1)
		s.Heartbeat(g.heartbeat())
		snapshot := g.full()
		snapshot.Handles = map[string]int{"alice": 1}
		g.set("bob", 1, "") // seq 5, before the snapshot is applied
		s.Synced(snapshot)  // the snapshot was taken at seq 4
		expect(t, r, "join alice 1", "join bob 2")
	})
}

// A restarted presence service rebuilds its state from gateways without a
// word, continues v from what gateways saw, and finishes the leaves nobody
// saw announced: its predecessor's pending ones, and those that happened
// while no presence ran.
func TestWarmupAnnouncesNothingThatDidNotChange(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := &recorder{}
		s := NewState(grace, r.outputs())
		s.Warmup(3 * time.Second)
		a := &fakeGateway{s: s, id: "a", inst: "a-1", counts: map[string]int{"alice": 1, "bob": 2}, seq: 7, interval: 2 * time.Second}
		a.digest.Update("alice", 0, 1)
		a.digest.Update("bob", 0, 2)
		hb := a.heartbeat()
		hb.V = 12
		s.Heartbeat(hb)
		full := a.full()
		full.V, full.Unconfirmed = 12, nil // the gateway saw alice and bob announced
		full.Gone = []protocol.Gone{{Handle: "dave", Reason: protocol.ReasonClosed, AgoMS: 1000}, {Handle: "erin", Reason: protocol.ReasonClosed, AgoMS: 60000}}
		s.Synced(full)
		time.Sleep(3 * time.Second)
		expect(t, r, "leave dave closed 13", "leave erin closed 14") // both went more than a grace period ago
		roster, _ := s.Roster(context.Background(), protocol.OnlineRequest{})
		if !slices.Equal(roster.Handles, []string{"alice", "bob"}) || roster.V != 14 {
			t.Fatalf("roster %+v", roster)
		}
		a.set("carol", 1, "")
		expect(t, r, "join carol 15")
	})
}

// Changes during the warm-up are announced when it ends.
func TestWarmupDefersChanges(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := &recorder{}
		s := NewState(grace, r.outputs())
		s.Warmup(3 * time.Second)
		a := quietGateway(t, s, r, "a", map[string]int{"alice": 1}, nil, nil) // alice was announced before the restart
		a.set("bob", 1, "")
		a.set("alice", 0, protocol.ReasonClosed)
		time.Sleep(time.Second)
		expect(t, r)
		time.Sleep(2 * time.Second)
		expect(t, r, "join bob 1")
		time.Sleep(grace)
		expect(t, r, "leave alice closed 2")
	})
}

// A gateway's roster request waits for its own deltas, so a client's
// connect is in the roster it gets.
func TestRosterWaitsForTheAskingGateway(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, r := started(t)
		a := newGateway(t, s, r, "a", nil)
		got := make(chan protocol.Roster)
		go func() {
			r, _ := s.Roster(context.Background(), protocol.OnlineRequest{Gateway: "a", Instance: "a-1", Seq: 1})
			got <- r
		}()
		synctest.Wait()
		select {
		case r := <-got:
			t.Fatalf("answered %+v before the delta", r)
		default:
		}
		a.set("alice", 1, "")
		if r := <-got; !slices.Equal(r.Handles, []string{"alice"}) || r.V != 1 {
			t.Fatalf("roster %+v", r)
		}
	})
}

// A draining gateway's handles leave after the grace period, reason
// shutdown, unless they reconnect elsewhere.
func TestByeLeavesWithShutdown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, r := started(t)
		a := newGateway(t, s, r, "a", map[string]int{"alice": 1, "bob": 1})
		b := newGateway(t, s, r, "b", nil)
		expect(t, r, "join alice 1", "join bob 2")
		s.Bye(protocol.Bye{Gateway: "a", Instance: a.inst})
		b.set("bob", 1, "")
		time.Sleep(grace)
		expect(t, r, "leave alice shutdown 3")
	})
}

// quietGateway introduces a gateway to a State that is warming up.
func quietGateway(t *testing.T, s *State, r *recorder, id string, counts map[string]int, unconfirmed []string, gone []protocol.Gone) *fakeGateway {
	t.Helper()
	g := &fakeGateway{s: s, id: id, inst: id + "-1", counts: map[string]int{}, interval: 2 * time.Second}
	for h, n := range counts {
		g.counts[h] = n
		g.digest.Update(h, 0, n)
	}
	s.Heartbeat(g.heartbeat())
	r.takeSyncs()
	full := g.full()
	full.Unconfirmed, full.Gone = unconfirmed, gone
	s.Synced(full)
	return g
}

// After a restart, a join that happened while no presence ran (nobody saw
// it) is announced; one everybody saw is not.
func TestRestartAnnouncesJoinsNobodySaw(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := &recorder{}
		s := NewState(grace, r.outputs())
		s.Warmup(3 * time.Second)
		quietGateway(t, s, r, "a", map[string]int{"alice": 1, "bob": 1}, []string{"bob"}, nil)
		quietGateway(t, s, r, "b", map[string]int{"bob": 1}, []string{"bob"}, nil)
		time.Sleep(3 * time.Second)
		expect(t, r, "join bob 1")
	})
}

// A refresh during the warm-up: the gateway she left saw no leave, the one
// she came back on has not confirmed her yet. Nothing happened, so nothing
// is said.
func TestRefreshDuringWarmupIsSilent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := &recorder{}
		s := NewState(grace, r.outputs())
		s.Warmup(3 * time.Second)
		quietGateway(t, s, r, "a", nil, nil, []protocol.Gone{{Handle: "alice", Reason: protocol.ReasonClosed, AgoMS: 500}})
		quietGateway(t, s, r, "b", map[string]int{"alice": 1}, []string{"alice"}, nil)
		time.Sleep(4 * time.Second) // past the warm-up, and past her grace
		expect(t, r)
	})
}

// A gateway that is only synced after the warm-up (its heartbeat came late)
// is believed about what was announced, like one synced during it.
func TestLateGatewayIsBelieved(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, r := started(t)
		late := &fakeGateway{s: s, id: "late", inst: "late-1", counts: map[string]int{"alice": 1, "carol": 1}, interval: 2 * time.Second}
		late.digest.Update("alice", 0, 1)
		late.digest.Update("carol", 0, 1)
		s.Heartbeat(late.heartbeat())
		full := late.full()
		full.Unconfirmed = []string{"carol"}
		full.Gone = []protocol.Gone{{Handle: "dave", Reason: protocol.ReasonTimeout, AgoMS: 1000}}
		s.Synced(full)
		expect(t, r, "join carol 1")
		time.Sleep(grace - time.Second)
		expect(t, r, "leave dave timeout 2")
	})
}

// A sync answer that arrives after its gateway said goodbye does not bring
// the gateway back.
func TestSyncAfterByeIsIgnored(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, r := started(t)
		a := newGateway(t, s, r, "a", map[string]int{"alice": 1})
		expect(t, r, "join alice 1")
		hb := a.heartbeat()
		hb.Digest = "0" // drift: presence asks for a sync
		s.Heartbeat(hb)
		if got := r.takeSyncs(); !slices.Equal(got, []string{"a"}) {
			t.Fatalf("syncs %v", got)
		}
		s.Bye(protocol.Bye{Gateway: "a", Instance: a.inst})
		s.Synced(a.full()) // the answer, late
		s.Heartbeat(a.heartbeat())
		time.Sleep(grace)
		expect(t, r, "leave alice shutdown 2")
		if st := s.Stats(); st.Gateways != 0 {
			t.Fatalf("%d gateways after the goodbye", st.Gateways)
		}
	})
}

// A snapshot older than what was applied since is ignored; so is a
// heartbeat older than the last snapshot.
func TestStaleSnapshotAndHeartbeatAreIgnored(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, r := started(t)
		a := newGateway(t, s, r, "a", nil)
		old := a.heartbeat()
		stale := a.full() // seq 0, nobody
		a.set("alice", 1, "")
		expect(t, r, "join alice 1")
		hb := a.heartbeat()
		hb.Digest = "0"
		s.Heartbeat(hb)
		r.takeSyncs()
		s.Synced(stale)
		expect(t, r)
		s.Heartbeat(old)
		if got := r.takeSyncs(); got != nil {
			t.Fatalf("an old heartbeat asked for syncs %v", got)
		}
	})
}

// A gateway lost during the warm-up is announced when it ends, at once.
func TestGatewayLostDuringWarmupLeavesAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := &recorder{}
		s := NewState(grace, r.outputs())
		s.Warmup(10 * time.Second)
		quietGateway(t, s, r, "a", map[string]int{"alice": 1}, nil, nil)
		time.Sleep(10 * time.Second) // a is lost after 6.5 s, quietly
		expect(t, r, "leave alice gateway-lost 1")
	})
}

// A roster lists at most MaxRosterHandles, and counts them all.
func TestRosterIsCapped(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, r := started(t)
		counts := map[string]int{}
		for i := range protocol.MaxRosterHandles + 5 {
			counts[fmt.Sprintf("u%05d", i)] = 1
		}
		newGateway(t, s, r, "a", counts)
		ro, err := s.Roster(context.Background(), protocol.OnlineRequest{})
		if err != nil || len(ro.Handles) != protocol.MaxRosterHandles || ro.Count != protocol.MaxRosterHandles+5 || ro.Handles[0] != "u00000" {
			t.Fatalf("roster of %d handles, count %d, first %q: %v", len(ro.Handles), ro.Count, ro.Handles[0], err)
		}
	})
}
