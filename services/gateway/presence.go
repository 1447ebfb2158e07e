package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/fly-chat/chat/pkg/protocol"
)

// goneTTL is how long the tracker remembers a handle whose last session
// here ended, for a restarting presence service to finish its leave. It
// only needs to outlast any sane LEAVE_GRACE.
const goneTTL = 30 * time.Second

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

	mu       sync.Mutex // guards the fields below; held while publishing, so Deltas leave in Seq order
	sessions map[string]int
	total    int // sessions over all handles
	gone     map[string]goneHandle
	seq      uint64
	digest   protocol.Digest
	closed   bool // said goodbye: nothing more is reported
}

type goneHandle struct {
	reason string
	at     time.Time
}

func newTracker(nc *nats.Conn, log *slog.Logger, id, inst, region string, interval time.Duration) *tracker {
	return &tracker{
		nc: nc, log: log, id: id, inst: inst, region: region, interval: interval,
		sessions: make(map[string]int), gone: make(map[string]goneHandle),
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
	if n == 0 {
		delete(t.sessions, handle)
		t.gone[handle] = goneHandle{reason: reason, at: time.Now()}
	} else {
		t.sessions[handle] = n
		delete(t.gone, handle)
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

// answerSync sends the full state, in chunks, to the reply subject of a
// sync request.
func (t *tracker) answerSync(msg *nats.Msg) {
	if msg.Reply == "" {
		return
	}
	t.mu.Lock()
	base := protocol.SyncChunk{
		Gateway: t.id, Instance: t.inst, Region: t.region, IntervalMS: t.interval.Milliseconds(),
		Seq: t.seq, V: t.lastV.Load(),
	}
	sessions := maps.Clone(t.sessions)
	var gone []protocol.Gone
	for h, g := range t.gone {
		gone = append(gone, protocol.Gone{Handle: h, Reason: g.reason, AgoMS: time.Since(g.at).Milliseconds()})
	}
	t.mu.Unlock()

	parts := splitHandles(sessions, syncChunkBytes)
	for i, part := range parts {
		c := base
		c.Part, c.Parts, c.Handles = i, len(parts), part
		if i == 0 {
			c.Gone = gone
		}
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

// splitHandles cuts a handle → sessions map into maps whose JSON stays
// under about limit bytes each. There is always at least one.
func splitHandles(all map[string]int, limit int) []map[string]int {
	parts := []map[string]int{{}}
	size := 0
	for h, n := range all {
		entry := len(h) + 16 // quotes, escapes in the common case, colon, count, comma
		if size+entry > limit && len(parts[len(parts)-1]) > 0 {
			parts = append(parts, map[string]int{})
			size = 0
		}
		parts[len(parts)-1][h] = n
		size += entry
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
	g.broadcast(msg.Data)
}
