package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/fly-chat/chat/pkg/protocol"
)

// goneTTL bounds how long the tracker remembers a handle whose last session
// here ended and whose leave it has not seen announced (normally it sees it
// within LEAVE_GRACE).
const goneTTL = 10 * time.Minute

// syncChunkBytes bounds one SyncChunk, well under NATS's 1 MiB default
// payload limit.
const syncChunkBytes = 256 << 10

// tracker is the gateway's side of the presence protocol: it counts each
// handle's sessions here, reports every change at once as a Delta,
// heartbeats every interval, answers presence's sync requests with its full
// state, and says goodbye when the gateway drains.
type tracker struct {
	nc               *nats.Conn
	log              *slog.Logger
	id, inst, region string
	interval         time.Duration

	lastV atomic.Uint64 // the newest notice v seen on presence.events

	mu          sync.Mutex // guards the fields below; held while publishing, so Deltas leave in Seq order
	sessions    map[string]int
	total       int                   // sessions over all handles
	unconfirmed map[string]struct{}   // handles with sessions here whose join has not been seen announced
	gone        map[string]goneHandle // handles gone from here, announced once, whose leave has not been seen
	seq         uint64
	digest      protocol.Digest
	closed      bool // said goodbye: nothing more is reported
}

type goneHandle struct {
	reason string
	at     time.Time
}

func newTracker(nc *nats.Conn, log *slog.Logger, id, inst, region string, interval time.Duration) *tracker {
	return &tracker{
		nc: nc, log: log, id: id, inst: inst, region: region, interval: interval,
		sessions: make(map[string]int), unconfirmed: make(map[string]struct{}), gone: make(map[string]goneHandle),
	}
}

// connect counts a session binding handle and returns the Seq that reports
// it.
func (t *tracker) connect(handle string) uint64 { return t.change(handle, 1, "") }

// disconnect counts a session of handle ending, for reason.
func (t *tracker) disconnect(handle, reason string) { t.change(handle, -1, reason) }

func (t *tracker) change(handle string, delta int, reason string) uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return t.seq
	}
	old := t.sessions[handle]
	n := max(old+delta, 0)
	t.total += n - old
	t.digest.Update(handle, old, n)
	switch {
	case n == 0:
		delete(t.sessions, handle)
		if _, never := t.unconfirmed[handle]; !never {
			t.gone[handle] = goneHandle{reason: reason, at: time.Now()}
		}
		delete(t.unconfirmed, handle)
	case old == 0:
		t.sessions[handle] = n
		if _, back := t.gone[handle]; back {
			delete(t.gone, handle) // back before its leave: still announced
		} else {
			t.unconfirmed[handle] = struct{}{}
		}
	default:
		t.sessions[handle] = n
	}
	t.seq++
	t.publish(protocol.KindDelta, protocol.Delta{
		Gateway: t.id, Instance: t.inst, Seq: t.seq, Handle: handle, Sessions: n, Reason: reason,
	})
	return t.seq
}

// seqNow is the Seq of the last Delta.
func (t *tracker) seqNow() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.seq
}

// publish sends a message to presence. Called with mu held.
func (t *tracker) publish(kind string, v any) {
	data, err := json.Marshal(v)
	if err == nil {
		err = t.nc.Publish(protocol.GatewaySubject(t.id, kind), data)
	}
	if err != nil {
		t.log.Warn("presence report not sent", "kind", kind, "err", err)
	}
}

// heartbeat publishes one heartbeat, and forgets old goodbyes.
func (t *tracker) heartbeat() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return
	}
	for h, g := range t.gone {
		if time.Since(g.at) > goneTTL {
			delete(t.gone, h)
		}
	}
	t.publish(protocol.KindHeartbeat, protocol.Heartbeat{
		Gateway: t.id, Instance: t.inst, Region: t.region, IntervalMS: t.interval.Milliseconds(),
		Seq: t.seq, Digest: t.digest.String(), Handles: len(t.sessions), Sessions: t.total, V: t.lastV.Load(),
	})
}

// run heartbeats every interval, starting now, until ctx ends.
func (t *tracker) run(ctx context.Context) {
	tick := time.NewTicker(t.interval)
	defer tick.Stop()
	for {
		t.heartbeat()
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// seen records a notice from presence: a join confirms the handle here, a
// leave settles one gone from here, or unconfirms one still here (the world
// was told it left).
func (t *tracker) seen(typ, handle string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch typ {
	case protocol.TypeJoin:
		delete(t.unconfirmed, handle)
	case protocol.TypeLeave:
		delete(t.gone, handle)
		if t.sessions[handle] > 0 {
			t.unconfirmed[handle] = struct{}{}
		}
	}
}

// confirmed records a roster that lists handle: everyone has been told it
// is online. A roster older than a notice already seen proves nothing.
func (t *tracker) confirmed(handle string, r protocol.Roster) {
	if _, listed := slices.BinarySearch(r.Handles, handle); !listed || r.V < t.lastV.Load() {
		return
	}
	t.mu.Lock()
	if t.sessions[handle] > 0 {
		delete(t.unconfirmed, handle)
	}
	t.mu.Unlock()
}

// answerSync sends the full state, in chunks, to the reply subject of a
// sync request. A gateway that said goodbye answers nothing.
func (t *tracker) answerSync(msg *nats.Msg) {
	if msg.Reply == "" {
		return
	}
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return
	}
	base := protocol.SyncChunk{
		Gateway: t.id, Instance: t.inst, Region: t.region, IntervalMS: t.interval.Milliseconds(),
		Seq: t.seq, V: t.lastV.Load(),
	}
	parts := splitState(t.sessions, t.unconfirmed, t.gone, syncChunkBytes)
	t.mu.Unlock()

	for i, c := range parts {
		c.Gateway, c.Instance, c.Region, c.IntervalMS, c.Seq, c.V = base.Gateway, base.Instance, base.Region, base.IntervalMS, base.Seq, base.V
		c.Part, c.Parts = i, len(parts)
		data, err := json.Marshal(c)
		if err == nil {
			err = t.nc.Publish(msg.Reply, data)
		}
		if err != nil {
			t.log.Warn("sync answer not sent", "err", err)
			return
		}
	}
}

// splitState copies the tracker's state into chunks whose JSON stays under
// about limit bytes each. There is always at least one.
func splitState(sessions map[string]int, unconfirmed map[string]struct{}, gone map[string]goneHandle, limit int) []protocol.SyncChunk {
	parts := []protocol.SyncChunk{{Handles: map[string]int{}}}
	size := 0
	add := func(entry int) *protocol.SyncChunk { // entry: bytes it takes, roughly
		if size+entry > limit && size > 0 {
			parts = append(parts, protocol.SyncChunk{Handles: map[string]int{}})
			size = 0
		}
		size += entry
		return &parts[len(parts)-1]
	}
	for h, n := range sessions {
		add(len(h) + 16).Handles[h] = n
	}
	for h := range unconfirmed {
		c := add(len(h) + 4)
		c.Unconfirmed = append(c.Unconfirmed, h)
	}
	now := time.Now()
	for h, g := range gone {
		c := add(len(h) + 40)
		c.Gone = append(c.Gone, protocol.Gone{Handle: h, Reason: g.reason, AgoMS: now.Sub(g.at).Milliseconds()})
	}
	return parts
}

// bye tells presence this gateway is draining; nothing is reported after.
func (t *tracker) bye() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.closed {
		t.publish(protocol.KindBye, protocol.Bye{Gateway: t.id, Instance: t.inst})
		t.closed = true
	}
}

// presenceReason maps why a connection ended to why its handle leaves.
func presenceReason(closeReason string) string {
	switch closeReason {
	case reasonTimeout, reasonWriteTimeout:
		return protocol.ReasonTimeout
	case reasonShutdown:
		return protocol.ReasonShutdown
	}
	return protocol.ReasonClosed
}

// rosterTimeout bounds the wait for presence's answer; it covers a
// presence service that is still warming up.
const rosterTimeout = 5 * time.Second

// roster asks presence who is online, once it has applied this gateway's
// reports up to seq.
func (g *Gateway) roster(seq uint64) (protocol.Roster, error) {
	var r protocol.Roster
	req, _ := json.Marshal(protocol.OnlineRequest{Gateway: g.id, Instance: g.tracker.inst, Seq: seq})
	msg, err := g.nc.Request(protocol.SubjectOnline, req, rosterTimeout)
	if err != nil {
		return r, err
	}
	if code := msg.Header.Get(micro.ErrorCodeHeader); code != "" {
		return r, errors.New("presence: " + code + " " + msg.Header.Get(micro.ErrorHeader))
	}
	err = json.Unmarshal(msg.Data, &r)
	return r, err
}

// deliverNotice forwards a join or leave from presence to every local
// socket, unchanged, and remembers its v for a restarting presence.
func (g *Gateway) deliverNotice(msg *nats.Msg) {
	var n struct {
		Type string `json:"type"`
		Name string `json:"name"`
		V    uint64 `json:"v"`
	}
	if err := json.Unmarshal(msg.Data, &n); err != nil || n.Type != protocol.TypeJoin && n.Type != protocol.TypeLeave {
		g.m.dropped.WithLabelValues("invalid_payload").Inc()
		g.log.Warn("dropped invalid payload on "+protocol.SubjectEvents, "bytes", len(msg.Data))
		return
	}
	if n.V > g.tracker.lastV.Load() { // only this subscription's goroutine writes it
		g.tracker.lastV.Store(n.V)
	}
	g.tracker.seen(n.Type, n.Name)
	g.broadcast(msg.Data, 0)
}
