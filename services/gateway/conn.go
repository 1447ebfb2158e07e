package gateway

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/gobwas/ws"
	"golang.org/x/time/rate"

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

// A conn is one websocket client. Its reader runs in the goroutine that
// calls serve; its writer, flush, runs only while frames are queued. Only the
// writer writes to the socket, and nothing a client does can block anyone
// else: other goroutines only append to the bounded queue.
type conn struct {
	g       *Gateway
	nc      net.Conn
	r       io.Reader // nc, after any bytes the HTTP server had already read
	remote  string
	born    time.Time // monotonic base for lastRead and pingSentAt
	handle  string    // bound once; owned by the reader goroutine
	release func()    // gives back its admission slot; called by teardown

	// The rate limit, owned by the reader goroutine.
	limiter    *rate.Limiter
	floodSince time.Time // when the current run of refused frames began; zero if none
	lastDenied time.Time // when a frame was last refused

	lastRead   atomic.Int64 // nanoseconds since born of the last frame read
	pingSentAt atomic.Int64 // nanoseconds since born of the unanswered ping; 0 if none
	keepalive  *time.Timer  // runs checkAlive; stopped by teardown

	writers    sync.WaitGroup // the running flush, if any
	rosterBusy atomic.Bool    // a roster request is under way

	mu            sync.Mutex // guards the fields below
	queue         []outFrame
	spare         []outFrame // the writer's last batch, emptied, reused as the next queue
	queued        int        // bytes in queue
	inflight      int        // frames the writer is writing now
	inflightBytes int        // and their bytes; both count against the send limits
	writing       bool       // a flush goroutine is running, or writes are held (see newConn)
	closing       bool       // a close frame is queued or the socket is going; nothing more is queued
	closeBy       time.Time  // set by teardown: no write may block past it
	closeCode     int        // what ended the connection, first cause wins
	closeReason   string
}

// newConn returns a connection whose writes are held: frames queue up, but
// nothing touches the socket until serve starts, after the upgrade response.
// That lets the hub include it before the client learns it is connected.
func newConn(g *Gateway, nc net.Conn) *conn {
	return &conn{g: g, nc: nc, r: nc, remote: nc.RemoteAddr().String(), born: time.Now(), writing: true,
		release: func() {}, limiter: rate.NewLimiter(rate.Limit(g.cfg.RateLimit), g.cfg.RateBurst)}
}

func (c *conn) now() int64 { return int64(time.Since(c.born)) }

// serve runs the connection until it ends, from the moment the upgrade
// response is written. handle is the upgrade URL's ?handle=, bound at once
// when present; registered says whether the hub took the connection (it
// refuses during shutdown).
func (c *conn) serve(handle string, hasHandle, registered bool) {
	defer c.teardown()
	g := c.g
	c.mu.Lock()
	c.writing = false // release the writes newConn held
	if len(c.queue) > 0 {
		c.startWriter()
	}
	c.mu.Unlock()
	if !registered {
		c.sendClose(protocol.CloseGoingAway, "going away", reasonShutdown, false)
		c.readLoop()
		return
	}
	g.m.connections.Inc()
	g.log.Debug("connection opened", "remote", c.remote)
	c.lastRead.Store(c.now())
	// Armed only once the field is set, so checkAlive always sees it.
	c.keepalive = time.AfterFunc(math.MaxInt64, c.checkAlive)
	c.keepalive.Reset(g.cfg.PingInterval)
	if g.natsDown.Load() {
		c.send(reconnectingFrame)
	}
	if hasHandle {
		c.bind(handle)
	}
	c.readLoop()
}

// readLoop reads frames until the connection ends. Once the gateway has sent
// a close frame it keeps reading, discarding, so the peer gets to read the
// close frame instead of a reset, until the peer's own close frame, EOF or
// the close deadline.
func (c *conn) readLoop() {
	var (
		hbuf   = make([]byte, 2, ws.MaxHeaderSize-2)
		msg    []byte // the text message being assembled from fragments
		inFrag bool   // a fragmented text message is in progress
	)
	for {
		h, err := ws.ReadHeaderBuffer(c.r, hbuf)
		if errors.Is(err, ws.ErrHeaderLengthMSB) || errors.Is(err, ws.ErrHeaderLengthUnexpected) {
			// Nothing after a broken header can be parsed: say why, then
			// discard until the peer leaves or the close deadline.
			c.fail(protocol.CloseProtocolError, "malformed frame header", reasonProtocol)
			io.Copy(io.Discard, c.r)
			return
		}
		if err != nil {
			c.setCause(1006, reasonEOF)
			return
		}
		c.lastRead.Store(c.now())
		if c.isClosing() {
			if c.discard(h) != nil || h.OpCode == ws.OpClose {
				return
			}
			continue
		}
		if code, text, reason := c.check(h, inFrag, len(msg)); code != 0 {
			c.fail(code, text, reason)
			if c.discard(h) != nil { // skip the payload, so the next header is a header
				return
			}
			continue
		}
		if h.OpCode.IsControl() {
			p, err := c.readPayload(h, nil)
			if err != nil {
				c.setCause(1006, reasonEOF)
				return
			}
			if !c.control(h.OpCode, p) {
				return
			}
			continue
		}
		if msg, err = c.readPayload(h, msg); err != nil {
			c.setCause(1006, reasonEOF)
			return
		}
		if inFrag = !h.Fin; inFrag {
			continue
		}
		if !utf8.Valid(msg) {
			c.fail(protocol.CloseInvalidData, "text must be UTF-8", reasonInvalidUTF8)
			continue
		}
		c.handleText(msg)
		msg = nil
	}
}

// check judges a frame header, given the bytes of a fragmented message
// already read. It returns a close code, and why, for a frame to reject.
func (c *conn) check(h ws.Header, inFrag bool, have int) (code int, text, reason string) {
	op := h.OpCode
	switch {
	case h.Rsv != 0 || !h.Masked:
		return protocol.CloseProtocolError, "frames must be masked, without extensions", reasonProtocol
	case op.IsReserved():
		return protocol.CloseProtocolError, "reserved opcode", reasonProtocol
	case op.IsControl():
		if !h.Fin || h.Length > ws.MaxControlFramePayloadSize {
			return protocol.CloseProtocolError, "bad control frame", reasonProtocol
		}
		return 0, "", ""
	case op == ws.OpBinary:
		return protocol.CloseUnsupported, "binary frames are not supported", reasonBinary
	case op == ws.OpText && inFrag, op == ws.OpContinuation && !inFrag:
		return protocol.CloseProtocolError, "unexpected frame", reasonProtocol
	case h.Length > int64(c.g.cfg.MaxMessageBytes-have): // written so it cannot overflow
		return protocol.CloseTooBig, "message too big", reasonTooBig
	}
	return 0, "", ""
}

// readChunk bounds what a frame's declared length can make the gateway
// allocate before the bytes actually arrive.
const readChunk = 16 << 10

// readPayload reads h's payload, unmasked, appended to buf. The buffer grows
// as data arrives, not as the header promises.
func (c *conn) readPayload(h ws.Header, buf []byte) ([]byte, error) {
	start := len(buf)
	for left := h.Length; left > 0; {
		n := int(min(left, readChunk))
		buf = slices.Grow(buf, n)
		m, err := io.ReadFull(c.r, buf[len(buf):len(buf)+n])
		buf = buf[:len(buf)+m]
		if err != nil {
			return buf, err
		}
		left -= int64(n)
	}
	ws.Cipher(buf[start:], h.Mask, 0)
	return buf, nil
}

func (c *conn) discard(h ws.Header) error {
	_, err := io.CopyN(io.Discard, c.r, h.Length)
	return err
}

// control handles a ping, pong or close frame. It reports whether to keep
// reading.
func (c *conn) control(op ws.OpCode, p []byte) bool {
	switch op {
	case ws.OpPing:
		if c.allow() { // a ping flood gets no pongs
			c.send(compileFrame(ws.OpPong, p))
		}
	case ws.OpClose:
		code, reason := ws.ParseCloseFrameData(p)
		switch {
		case len(p) == 0:
			c.setCause(1005, reasonClient) // 1005: closed without a status code
			c.sendClose(protocol.CloseNormal, "", reasonClient, false)
		case ws.CheckCloseFrameData(code, reason) != nil:
			c.sendClose(protocol.CloseProtocolError, "bad close frame", reasonProtocol, false)
		default:
			c.setCause(int(code), reasonClient)
			c.sendClose(int(code), "", reasonClient, false)
		}
		return false
	}
	return true // a pong needs nothing: reading it updated lastRead
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

// allow takes a token from the client's rate limit. A client still over
// the limit FloodTimeout after it first went over is closed with 1008: a
// run of refusals ends once a second passes without one.
func (c *conn) allow() bool {
	now := time.Now()
	if c.limiter.AllowN(now, 1) {
		return true
	}
	if c.floodSince.IsZero() || now.Sub(c.lastDenied) > time.Second {
		c.floodSince = now
	}
	c.lastDenied = now
	c.g.m.dropped.WithLabelValues("rate_limited").Inc()
	if now.Sub(c.floodSince) >= c.g.cfg.FloodTimeout {
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
	c.handle = h
	c.g.log.Debug("handle bound", "remote", c.remote, "handle", h)
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
	handle := c.handle // read here: the reader goroutine may bind it meanwhile
	go func() {
		defer c.rosterBusy.Store(false)
		r, err := c.g.roster(seq)
		if err == nil && handle != "" {
			c.g.tracker.confirmed(handle, r)
		}
		if err != nil {
			c.g.log.Warn("roster request failed", "remote", c.remote, "err", err)
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
			c.g.log.Debug("message refused", "remote", c.remote, "err", err)
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
	c.g.log.Debug("closing connection", "remote", c.remote, "handle", c.handle, "code", code, "reason", reason)
	c.sendClose(code, text, reason, false)
}

// checkAlive runs on the keepalive timer: it pings a client that has been
// quiet for PingInterval and drops one that has not answered within
// PongTimeout. Any frame from the client counts as an answer.
func (c *conn) checkAlive() {
	if c.isClosing() {
		return // teardown stops the timer; this run raced it
	}
	cfg := c.g.cfg
	now, last := c.now(), c.lastRead.Load()
	if sent := c.pingSentAt.Load(); sent != 0 {
		if last < sent {
			c.g.log.Debug("dead peer", "remote", c.remote)
			c.setCause(1006, reasonTimeout)
			c.nc.Close() // no close handshake with a peer that does not answer
			return
		}
		c.pingSentAt.Store(0)
	}
	if idle := time.Duration(now - last); idle < cfg.PingInterval {
		c.keepalive.Reset(cfg.PingInterval - idle)
		return
	}
	c.pingSentAt.Store(now)
	c.send(pingFrame)
	c.keepalive.Reset(cfg.PongTimeout)
}

// outFrame is a frame queued for the writer.
type outFrame struct {
	b  []byte
	ts int64 // a chat message's server timestamp (unix ms), for the latency metric; 0 for other frames
}

// send queues a frame for the writer; see enqueue.
func (c *conn) send(frame []byte) bool { return c.enqueue(outFrame{b: frame}) }

// enqueue queues a frame for the writer. It never blocks: a client whose
// queue is full is cut off as a slow consumer. It reports whether the frame
// was queued.
func (c *conn) enqueue(f outFrame) bool {
	frame := f.b
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return false
	}
	cfg := c.g.cfg
	// The limits count what the writer is writing too. One frame always fits
	// when nothing is pending, however large: a stamped message can be
	// several times the size of what the client typed.
	frames, bytes := len(c.queue)+c.inflight, c.queued+c.inflightBytes
	if frames >= cfg.SendQueue || frames > 0 && bytes+len(frame) > cfg.SendQueueBytes {
		dropped := len(c.queue) + 1
		c.mu.Unlock()
		c.g.m.dropped.WithLabelValues(reasonSlowConsumer).Add(float64(dropped))
		c.g.log.Debug("slow consumer", "remote", c.remote, "dropped", dropped)
		c.sendClose(protocol.ClosePolicy, "slow consumer", reasonSlowConsumer, true)
		return false
	}
	c.queue = append(c.queue, f)
	c.queued += len(frame)
	c.startWriter()
	c.mu.Unlock()
	return true
}

// sendClose queues a close frame, after what is queued or, with drop,
// instead of it, and gives the peer closeGrace to answer. Only the first
// close counts.
func (c *conn) sendClose(code int, text, reason string, drop bool) {
	frame := compileFrame(ws.OpClose, ws.NewCloseFrameBody(ws.StatusCode(code), text))
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return
	}
	c.closing = true
	if c.closeReason == "" {
		c.closeCode, c.closeReason = code, reason
	}
	if drop {
		clear(c.queue)
		c.queue, c.queued = c.queue[:0], 0
	}
	c.queue = append(c.queue, outFrame{b: frame})
	c.startWriter()
	c.mu.Unlock()
	c.nc.SetReadDeadline(time.Now().Add(closeGrace))
}

// startWriter starts flush unless it runs. Called with mu held.
func (c *conn) startWriter() {
	if !c.writing {
		c.writing = true
		c.writers.Add(1)
		go c.flush()
	}
}

// flush writes queued frames until the queue is empty, then exits. Frames
// queued together go out in one writev.
func (c *conn) flush() {
	defer c.writers.Done()
	var (
		batch []outFrame
		bufs  net.Buffers
	)
	for {
		c.mu.Lock()
		if batch != nil {
			clear(batch) // drop references to written frames
			c.spare = batch[:0]
			c.inflight, c.inflightBytes = 0, 0
		}
		if len(c.queue) == 0 {
			c.writing = false
			c.mu.Unlock()
			return
		}
		batch, c.queue, c.spare = c.queue, c.spare, nil
		c.inflight, c.inflightBytes, c.queued = len(batch), c.queued, 0
		deadline := time.Now().Add(c.g.cfg.WriteTimeout)
		if !c.closeBy.IsZero() && c.closeBy.Before(deadline) {
			deadline = c.closeBy
		}
		c.nc.SetWriteDeadline(deadline) // under mu, so teardown's deadline is never overwritten
		c.mu.Unlock()

		bufs = bufs[:0]
		for _, f := range batch {
			bufs = append(bufs, f.b)
		}
		w := bufs // WriteTo consumes its receiver
		_, err := w.WriteTo(c.nc)
		clear(bufs)
		if err != nil {
			c.writeFailed(err)
			return
		}
		now := time.Now().UnixMilli()
		for _, f := range batch {
			if f.ts > 0 {
				c.g.m.deliveryLatency.Observe(float64(now-f.ts) / 1000)
			}
		}
	}
}

// writeFailed ends a connection whose socket cannot be written.
func (c *conn) writeFailed(err error) {
	reason := reasonEOF
	if errors.Is(err, os.ErrDeadlineExceeded) {
		reason = reasonWriteTimeout
	}
	c.setCause(1006, reason)
	c.mu.Lock()
	c.closing, c.writing = true, false
	clear(c.queue)
	c.queue, c.queued = nil, 0
	c.mu.Unlock()
	c.nc.Close() // wakes the reader, which tears down
}

func (c *conn) isClosing() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closing
}

// setCause records why the connection ended, unless a cause is known.
func (c *conn) setCause(code int, reason string) {
	c.mu.Lock()
	if c.closeReason == "" {
		c.closeCode, c.closeReason = code, reason
	}
	c.mu.Unlock()
}

// teardown runs once, in the reader goroutine, when reading has stopped: it
// lets the writer finish what is queued (the close frame, usually) within
// closeGrace, closes the socket, and only then leaves the hub, so shutdown
// waits for every socket to be closed.
func (c *conn) teardown() {
	g := c.g
	if c.keepalive != nil {
		c.keepalive.Stop()
	}
	c.mu.Lock()
	c.closing = true
	c.closeBy = time.Now().Add(closeGrace)
	c.nc.SetWriteDeadline(c.closeBy)
	code, reason := c.closeCode, c.closeReason
	c.mu.Unlock()
	c.writers.Wait()
	c.nc.Close()
	if c.handle != "" {
		g.tracker.disconnect(c.handle, presenceReason(reason))
	}
	g.m.disconnects.WithLabelValues(strconv.Itoa(code), reason).Inc()
	if g.log.Enabled(context.Background(), slog.LevelDebug) {
		g.log.Debug("connection closed", "remote", c.remote, "handle", c.handle, "code", code, "reason", reason,
			"duration", time.Since(c.born).Round(time.Millisecond))
	}
	if g.hub.remove(c) {
		g.m.connections.Dec()
	}
	c.release()
}
