package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"

	"github.com/fly-chat/chat/pkg/protocol"
)

const (
	// ackTimeout is how long a published message may go without coming back
	// on this gateway's own subscription before it is published again.
	ackTimeout = time.Second
	// replayMargin reaches back before the moment NATS was lost, for
	// messages that were already in flight then, and for clock skew between
	// gateways (ids make the overlap harmless).
	replayMargin = 2 * time.Second
	// maxHistory bounds the messages kept for replays, whatever the rate.
	maxHistory = 100_000
)

// errReconnecting refuses a message while NATS is away: the client is told
// at once, and nothing is sent later behind its back.
var errReconnecting = errors.New("reconnecting to NATS")

// relay carries chat messages between this gateway and NATS so that none is
// lost without its sender hearing of it:
//
//   - Acknowledgement by echo: every message this gateway publishes comes back
//     on its own "msg" subscription. One not back within ackTimeout is
//     published again, with the same id, until DeliveryTimeout; then its
//     sender gets a not_delivered error.
//   - Deduplication: a message whose id this gateway delivered in the last
//     ReplayWindow (and a minute) is dropped, so republishing and replays
//     never show anything twice.
//   - Replay: a gateway that lost NATS asks every other gateway, once it is
//     back, for the messages they accepted since just before; it delivers
//     the ones it missed.
type relay struct {
	g *Gateway

	mu      sync.Mutex
	pending map[string]*outgoing // published here, not yet seen to come back
	history []*outgoing          // accepted here, oldest first, for replays
	seen    map[string]time.Time // ids delivered here, and when
	seenQ   []seenID             // the same, in delivery order, for expiry
	lostAt  time.Time            // when NATS was lost; zero while connected
}

type outgoing struct {
	id, cid string
	payload []byte
	at      time.Time // accepted
	sentAt  time.Time // last published
	from    *conn     // told if it fails; it may be gone by then
}

type seenID struct {
	id string
	at time.Time
}

func newRelay(g *Gateway) *relay {
	return &relay{g: g, pending: make(map[string]*outgoing), seen: make(map[string]time.Time)}
}

// send stamps a client's message and publishes it. An error means nothing
// was sent.
func (r *relay) send(from *conn, handle, text, cid string) error {
	if !r.g.nc.IsConnected() {
		return errReconnecting
	}
	now := time.Now()
	m := protocol.Message{ID: nuid.Next(), Name: handle, Message: text, TS: now.UnixMilli(), CID: cid}
	o := &outgoing{id: m.ID, cid: cid, payload: m.AppendJSON(nil), at: now, sentAt: now, from: from}
	r.mu.Lock()
	r.pending[o.id] = o // before publishing: the echo can beat Publish's return
	r.mu.Unlock()
	if err := r.publish(protocol.SubjectMsg, o); err != nil {
		r.mu.Lock()
		delete(r.pending, o.id)
		r.mu.Unlock()
		return err
	}
	r.mu.Lock()
	r.history = append(r.history, o)
	if len(r.history) > maxHistory {
		r.history[0] = nil
		r.history = r.history[1:]
	}
	r.mu.Unlock()
	r.g.m.messagesIn.Inc()
	r.g.m.bytesIn.Add(float64(len(o.payload)))
	return nil
}

func (r *relay) publish(subject string, o *outgoing) error {
	return r.g.nc.PublishMsg(&nats.Msg{
		Subject: subject,
		Header:  nats.Header{protocol.HeaderMsgID: []string{o.id}},
		Data:    o.payload,
	})
}

// deliver handles a message from "msg" or a replay: unless it was delivered
// here already, it goes to every local socket, framed once. It runs on a
// NATS subscription's goroutine and never blocks on a client.
func (r *relay) deliver(msg *nats.Msg) {
	g := r.g
	if id := msg.Header.Get(protocol.HeaderMsgID); id != "" {
		r.mu.Lock()
		_, dup := r.seen[id]
		if !dup {
			now := time.Now()
			r.seen[id] = now
			r.seenQ = append(r.seenQ, seenID{id, now})
			delete(r.pending, id) // our own, back: delivered
		}
		r.mu.Unlock()
		if dup {
			g.m.dropped.WithLabelValues("duplicate").Inc()
			return
		}
	}
	if !json.Valid(msg.Data) {
		g.m.dropped.WithLabelValues("invalid_payload").Inc()
		g.log.Warn("dropped invalid payload on "+msg.Subject, "bytes", len(msg.Data))
		return
	}
	ts, _ := protocol.MessageTS(msg.Data)
	if n, ok := g.broadcast(msg.Data, ts); ok {
		g.m.messagesOut.Add(float64(n))
		g.m.bytesOut.Add(float64(n * len(msg.Data)))
	}
}

// run ticks four times per ackTimeout until ctx ends.
func (r *relay) run(ctx context.Context) {
	t := time.NewTicker(ackTimeout / 4)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			r.tick(now)
		}
	}
}

// tick republishes what has not come back, fails what has been tried for
// too long, and forgets old history and ids.
func (r *relay) tick(now time.Time) {
	cfg := r.g.cfg
	connected := r.g.nc.IsConnected()
	var resend, failed []*outgoing
	r.mu.Lock()
	for id, o := range r.pending {
		switch {
		case now.Sub(o.at) > cfg.DeliveryTimeout:
			delete(r.pending, id)
			failed = append(failed, o)
		case connected && now.Sub(o.sentAt) > ackTimeout:
			o.sentAt = now
			resend = append(resend, o)
		}
	}
	for len(r.history) > 0 && now.Sub(r.history[0].at) > cfg.ReplayWindow {
		r.history[0] = nil
		r.history = r.history[1:]
	}
	keep := cfg.ReplayWindow + time.Minute
	n := 0
	for n < len(r.seenQ) && now.Sub(r.seenQ[n].at) > keep {
		delete(r.seen, r.seenQ[n].id)
		n++
	}
	r.seenQ = r.seenQ[n:]
	r.mu.Unlock()

	for _, o := range resend {
		if err := r.publish(protocol.SubjectMsg, o); err == nil {
			r.g.m.republished.Inc()
		}
	}
	for _, o := range failed {
		r.g.m.dropped.WithLabelValues("not_delivered").Inc()
		r.g.log.Warn("message not confirmed delivered", "id", o.id, "age", now.Sub(o.at).Round(time.Millisecond))
		o.from.sendError(&protocol.Error{Code: protocol.CodeNotDelivered, CID: o.cid,
			Message: "your message may not have reached everyone: chat was unreachable"})
	}
}

// lost notes when NATS went away, for the replay.
func (r *relay) lost() {
	r.mu.Lock()
	if r.lostAt.IsZero() {
		r.lostAt = time.Now()
	}
	r.mu.Unlock()
}

// reconnected republishes what is pending at once, and asks the other
// gateways for what this one missed while NATS was away.
func (r *relay) reconnected() {
	r.mu.Lock()
	since := r.lostAt
	r.lostAt = time.Time{}
	var resend []*outgoing
	now := time.Now()
	for _, o := range r.pending {
		o.sentAt = now
		resend = append(resend, o)
	}
	r.mu.Unlock()
	for _, o := range resend {
		if r.publish(protocol.SubjectMsg, o) == nil {
			r.g.m.republished.Inc()
		}
	}
	if since.IsZero() {
		return
	}
	req, _ := json.Marshal(protocol.ReplayRequest{Gateway: r.g.id, SinceMS: since.Add(-replayMargin).UnixMilli()})
	if err := r.g.nc.Publish(protocol.SubjectReplay, req); err != nil {
		r.g.log.Warn("replay request not sent", "err", err)
	}
}

// answerReplay sends another gateway the messages accepted here since the
// time it asks for.
func (r *relay) answerReplay(msg *nats.Msg) {
	var req protocol.ReplayRequest
	if json.Unmarshal(msg.Data, &req) != nil || req.Gateway == r.g.id || !protocol.ValidID(req.Gateway) {
		return
	}
	since := time.UnixMilli(req.SinceMS)
	r.mu.Lock()
	var out []*outgoing
	for i := len(r.history) - 1; i >= 0 && !r.history[i].at.Before(since); i-- {
		out = append(out, r.history[i])
	}
	r.mu.Unlock()
	subject := protocol.ReplaySubject(req.Gateway)
	for i := len(out) - 1; i >= 0; i-- { // oldest first
		if err := r.publish(subject, out[i]); err != nil {
			r.g.log.Warn("replay cut short", "to", req.Gateway, "err", err)
			return
		}
	}
	if len(out) > 0 {
		r.g.log.Info("replayed messages", "to", req.Gateway, "count", len(out))
	}
}
