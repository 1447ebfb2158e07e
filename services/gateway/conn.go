package gateway

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gobwas/ws"

	"github.com/fly-chat/chat/pkg/protocol"
)

// closeGrace bounds the closing handshake: once the gateway has queued a
// close frame, the peer has this long to answer it, and a writer still
// blocked after teardown starts has this long to finish.
const closeGrace = 2 * time.Second

// Reasons a connection ended, for the disconnects metric and logs. The close
// code says what the client was told; the reason says why.
const (
	reasonClient       = "client_close"  // the client sent a close frame
	reasonEOF          = "eof"           // the socket ended without a close frame
	reasonTimeout      = "timeout"       // no answer to a ping: a dead peer
	reasonSlowConsumer = "slow_consumer" // its send queue overflowed
	reasonWriteTimeout = "write_timeout" // a socket write blocked too long
	reasonTooBig       = "too_big"
	reasonInvalidUTF8  = "invalid_utf8"
	reasonBinary       = "binary"
	reasonProtocol     = "protocol_error"
	reasonBadHandle    = "bad_handle"
	reasonShutdown     = "shutdown"
	reasonFlood        = "flood" // it kept exceeding the rate limit
)

// A conn is one websocket client.
//
// Reading: the epoll poller (io_linux.go) hands the connection to a worker
// when its socket has bytes, and consume (read.go) parses them; elsewhere a
// goroutine per connection reads (readLoop). Either way, one reader at a
// time, under readMu. An idle connection has no goroutine and no buffer.
//
// Writing (write.go): anyone queues frames; the connection's shard writes
// them without blocking; a writer goroutine exists only while a socket is
// backed up.
type conn struct {
	g        *Gateway
	nc       net.Conn
	raw      syscall.RawConn // nc's, for reads and writes that must not block; nil if nc has none
	sh       *shard          // whose flusher writes this connection
	slot     int             // its index in sh.conns; -1 when not there; guarded by sh.mu
	born     time.Time       // monotonic base for the times below kept as int64
	ip       string          // the address admission counted it against
	admitted atomic.Bool     // its admission is to be given back, once
	pollID   uint64          // its id in the poller, once polled; guarded by the poller's mu

	readMu sync.Mutex // held by the reader: the fields below are the reader's
	rd     reader
	handle string // bound once

	// The rate limit, a token bucket owned by the reader.
	tokens     float64
	tokensAt   int64 // nanoseconds since born when tokens was last topped up
	floodSince int64 // when the current run of refused frames began; 0 if none
	lastDenied int64 // when a frame was last refused

	lastRead   atomic.Int64 // nanoseconds since born of the last frame read
	pingSentAt atomic.Int64 // nanoseconds since born of the unanswered ping; 0 if none; the shard's sweep's
	rosterBusy atomic.Bool  // a roster request is under way
	ended      sync.Once    // teardown

	writers sync.WaitGroup // counts a write under way (fast or slow); teardown waits for it

	mu            sync.Mutex // guards the fields below
	queue         []outFrame
	spare         []outFrame  // the last written batch, emptied, reused as the next queue
	queued        int         // bytes in queue
	inflight      int         // frames being written now
	inflightBytes int         // and their bytes; both count against the send limits
	held          bool        // before the upgrade response: frames queue, nothing is written
	writing       bool        // a write is under way: its writer owns the socket
	dirty         bool        // on its shard's flush list
	closing       bool        // a close frame is queued or the socket is going; nothing more is queued
	closed        bool        // teardown began: no new write starts but the one teardown starts
	linger        *time.Timer // after the close frame: the peer's time to answer
	closeBy       time.Time   // set by teardown: no write may block past it
	closeCode     int         // what ended the connection, first cause wins
	closeReason   string
}

// newConn returns a connection whose writes are held: frames queue up, but
// nothing touches the socket until start, after the upgrade response. That
// lets the hub include it before the client learns it is connected.
func newConn(g *Gateway, nc net.Conn) *conn {
	c := &conn{g: g, nc: nc, born: time.Now(), held: true, tokens: float64(g.cfg.RateBurst), sh: g.hub.pick(), slot: -1}
	if sc, ok := nc.(syscall.Conn); ok {
		c.raw, _ = sc.SyscallConn()
	}
	return c
}

func (c *conn) now() int64 { return int64(time.Since(c.born)) }

// remote is the client's address, for logs: formatted only if logged.
func (c *conn) remote() slog.LogValuer { return remoteAddr{c} }

type remoteAddr struct{ c *conn }

func (r remoteAddr) LogValue() slog.Value { return slog.StringValue(r.c.nc.RemoteAddr().String()) }

// start runs the connection from the moment the upgrade response is
// written: early is what the client sent right behind its request. handle
// is the upgrade URL's ?handle=, bound at once when present; registered
// says whether the hub took the connection (it refuses during shutdown).
func (c *conn) start(early []byte, handle string, hasHandle, registered bool) {
	g := c.g
	c.mu.Lock()
	c.held = false // release the writes newConn held
	mark := len(c.queue) > 0 && !c.dirty
	c.dirty = c.dirty || mark
	c.mu.Unlock()
	if mark {
		c.sh.markDirty(c)
	}
	if !registered {
		c.sendClose(protocol.CloseGoingAway, "going away", reasonShutdown, false)
	} else {
		g.m.connections.Inc()
		g.log.Debug("connection opened", "remote", c.remote())
		c.lastRead.Store(c.now())
		if g.natsDown.Load() {
			c.send(reconnectingFrame)
		}
		if hasHandle {
			c.readMu.Lock()
			if !c.rd.ended { // a failed write may have ended it already: then it never had a handle
				c.bind(handle)
			}
			c.readMu.Unlock()
		}
	}
	if len(early) > 0 && !c.consume(early) {
		c.teardown()
		return
	}
	// Under readMu, so teardown either comes first (and nothing is
	// registered) or sees the registration it must undo.
	c.readMu.Lock()
	ended, polled := c.rd.ended, false
	if !ended && g.poller != nil && c.raw != nil {
		polled = g.poller.add(c) == nil
	}
	c.readMu.Unlock()
	if ended || polled {
		return // teardown has it, or the poller's workers read it from now on
	}
	c.readLoop(c.nc)
}

// abort closes the socket at once, for a peer that is dead, cannot be
// written, or did not answer the close frame in time; teardown follows.
func (c *conn) abort() {
	c.nc.Close()
	go c.teardown()
}

// teardown runs once, whoever notices the end first: the reader, a timer, a
// failed write. It stops the reading, lets what is queued (the close frame,
// usually) be written within closeGrace, closes the socket, and only then
// leaves the hub, so shutdown waits for every socket to be closed.
func (c *conn) teardown() {
	c.ended.Do(func() {
		g := c.g
		c.readMu.Lock()
		c.rd.ended = true
		handle := c.handle
		c.readMu.Unlock()
		if g.poller != nil {
			g.poller.remove(c) // if it ever had it
		}
		c.mu.Lock()
		if c.linger != nil {
			c.linger.Stop()
		}
		c.closing, c.closed = true, true
		c.closeBy = time.Now().Add(closeGrace)
		c.nc.SetWriteDeadline(c.closeBy)
		if !c.writing && !c.held && len(c.queue) > 0 {
			c.startSlow() // the close frame, if nobody wrote it yet
		}
		code, reason := c.closeCode, c.closeReason
		c.mu.Unlock()
		c.writers.Wait()
		c.nc.Close()
		if handle != "" {
			g.tracker.disconnect(handle, presenceReason(reason))
		}
		g.m.disconnects.WithLabelValues(strconv.Itoa(code), reason).Inc()
		if g.log.Enabled(context.Background(), slog.LevelDebug) {
			g.log.Debug("connection closed", "remote", c.remote(), "handle", handle, "code", code, "reason", reason,
				"duration", time.Since(c.born).Round(time.Millisecond))
		}
		if g.hub.remove(c) {
			g.m.connections.Dec()
		}
		if c.admitted.Swap(false) {
			g.admit.release(c.ip)
		}
	})
}

// handleText handles one complete, valid UTF-8 text message.
func (c *conn) handleText(msg []byte) {
	if protocol.IsPing(msg) {
		if c.allow() {
			c.send(pingReply)
		}
		return
	}
	f, err := protocol.DecodeClient(msg)
	if !c.allow() {
		if f.Type == protocol.TypeMessage && !c.isClosing() {
			c.sendError(&protocol.Error{Code: protocol.CodeRateLimited, CID: f.CID,
				Message: "you are sending messages too fast; this one was not sent"})
		}
		return
	}
	if err != nil {
		c.sendError(err)
		return
	}
	switch f.Type {
	case protocol.TypeStatus:
		if c.handle == "" {
			c.bind(f.Name)
		}
	case protocol.TypeMessage:
		c.message(f.Message, f.CID)
	case protocol.TypeWho:
		c.sendRoster(c.g.tracker.seqNow(), true)
	}
}

// allow takes a token from the client's rate limit: RateBurst tokens,
// refilled at RateLimit a second. A client still over the limit
// FloodTimeout after it first went over is closed with 1008: a run of
// refusals ends once a second passes without one.
func (c *conn) allow() bool {
	cfg := c.g.cfg
	now := c.now()
	c.tokens = min(float64(cfg.RateBurst), c.tokens+float64(now-c.tokensAt)/float64(time.Second)*cfg.RateLimit)
	c.tokensAt = now
	if c.tokens >= 1 {
		c.tokens--
		return true
	}
	if c.floodSince == 0 || time.Duration(now-c.lastDenied) > time.Second {
		c.floodSince = now
	}
	c.lastDenied = now
	c.g.m.dropped.WithLabelValues("rate_limited").Inc()
	if time.Duration(now-c.floodSince) >= cfg.FloodTimeout {
		c.fail(protocol.ClosePolicy, "rate limit exceeded", reasonFlood)
	}
	return false
}

// bind sets the connection's handle, or tells the client why it cannot and
// closes with 1008.
func (c *conn) bind(name string) {
	h, err := protocol.NormalizeHandle(name)
	if err != nil {
		c.sendError(err)
		c.fail(protocol.ClosePolicy, "bad handle", reasonBadHandle)
		return
	}
	c.handle = strings.Clone(h) // not a piece of the request it came in
	c.g.log.Debug("handle bound", "remote", c.remote(), "handle", h)
	c.sendRoster(c.g.tracker.connect(h), false)
}

// sendRoster sends the client who is online, once presence has seen this
// gateway's reports up to seq. One request per connection is under way at a
// time; a "who" meanwhile gets that answer. If presence cannot answer, a
// client that asked (asked) is told so; the roster after binding a handle
// is simply skipped, so a presence outage does not greet everyone with an
// error.
func (c *conn) sendRoster(seq uint64, asked bool) {
	if !c.rosterBusy.CompareAndSwap(false, true) {
		return
	}
	handle := c.handle // read here, by the reader: it may bind it meanwhile
	go func() {
		defer c.rosterBusy.Store(false)
		r, err := c.g.roster(seq)
		if err == nil && handle != "" {
			c.g.tracker.confirmed(handle, r)
		}
		if err != nil {
			c.g.log.Warn("roster request failed", "remote", c.remote(), "err", err)
			if asked {
				c.sendError(&protocol.Error{Code: protocol.CodeUnavailable, Message: "who is online is unavailable right now"})
			}
			return
		}
		c.send(compileFrame(ws.OpText, r.AppendClientJSON(nil)))
	}()
}

// message relays a chat message through NATS. The sender sees it when NATS
// delivers it back, like everyone else; errors name the client's cid.
func (c *conn) message(text, cid string) {
	switch {
	case c.handle == "":
		c.sendError(&protocol.Error{Code: protocol.CodeNoHandle, CID: cid, Message: "choose a handle before sending messages"})
	case strings.TrimSpace(text) == "":
		c.sendError(&protocol.Error{Code: protocol.CodeEmptyMessage, CID: cid, Message: "message is empty"})
	default:
		if err := c.g.relay.send(c, c.handle, text, cid); err != nil {
			c.g.log.Debug("message refused", "remote", c.remote(), "err", err)
			c.sendError(&protocol.Error{Code: protocol.CodeUnavailable, CID: cid, Message: "message not sent: chat is reconnecting, try again"})
		}
	}
}

func (c *conn) sendError(err error) {
	var perr *protocol.Error
	if !errors.As(err, &perr) {
		perr = &protocol.Error{Code: protocol.CodeUnavailable, Message: "internal error"}
	}
	c.g.m.clientErrors.WithLabelValues(perr.Code).Inc()
	c.send(compileFrame(ws.OpText, perr.AppendJSON(nil)))
}

// fail starts closing the connection because of what the client sent.
func (c *conn) fail(code int, text, reason string) {
	c.g.log.Debug("closing connection", "remote", c.remote(), "handle", c.handle, "code", code, "reason", reason)
	c.sendClose(code, text, reason, false)
}

// checkAlive is the keepalive, run by the shard's sweep every
// keepaliveTick: it reports whether to ping the client, quiet for
// PingInterval, or to drop it, as it has not answered a ping within
// PongTimeout. Any frame from the client counts as an answer.
func (c *conn) checkAlive(pingInterval, pongTimeout time.Duration) (ping, dead bool) {
	now, last := c.now(), c.lastRead.Load()
	if sent := c.pingSentAt.Load(); sent != 0 {
		if last < sent {
			return false, time.Duration(now-sent) >= pongTimeout
		}
		c.pingSentAt.Store(0) // answered
	}
	if time.Duration(now-last) < pingInterval {
		return false, false
	}
	c.pingSentAt.Store(now)
	return true, false
}

// setCause records why the connection ended, unless a cause is known.
func (c *conn) setCause(code int, reason string) {
	c.mu.Lock()
	if c.closeReason == "" {
		c.closeCode, c.closeReason = code, reason
	}
	c.mu.Unlock()
}
