package gateway

import (
	"errors"
	"net"
	"os"
	"sync"
	"time"

	"github.com/gobwas/ws"

	"github.com/fly-chat/chat/pkg/protocol"
)

// How frames reach a socket. Anyone may queue a frame for a connection
// (send, or a broadcast); nobody ever waits for a client. The connection's
// shard then writes everything queued in one writev, at most once per
// FlushInterval, without blocking: a socket that takes it all needs no
// goroutine of its own. One that cannot (its kernel buffer is full: a slow
// reader) gets a writer goroutine, slowFlush, until it has caught up, or
// until its queue overflows and it is cut off as a slow consumer.

// errWouldBlock is tryWrite's answer when the kernel took nothing.
var errWouldBlock = errors.New("write would block")

// outFrame is a frame queued for the writer.
type outFrame struct {
	b  []byte
	ts int64 // a chat message's server timestamp (unix ms), for the latency metric; 0 for other frames
}

// push queues f. It reports whether f was queued, whether the connection
// must now be put on its shard's flush list, and whether it just overflowed
// (the caller then calls slowConsumer, holding no locks).
func (c *conn) push(f outFrame) (queued, mark, overflow bool) {
	cfg := &c.g.cfg
	c.mu.Lock() // no defer: this runs once per socket per message
	// The limits count what is being written too. One frame always fits
	// when nothing is pending, however large: a stamped message can be
	// several times the size of what the client typed.
	frames, bytes := len(c.queue)+c.inflight, c.queued+c.inflightBytes
	switch {
	case c.closing:
	case frames >= cfg.SendQueue || frames > 0 && bytes+len(f.b) > cfg.SendQueueBytes:
		overflow = true
	default:
		c.queue = append(c.queue, f)
		c.queued += len(f.b)
		queued, mark = true, !c.held && !c.writing && !c.dirty
		c.dirty = c.dirty || mark
	}
	c.mu.Unlock()
	return queued, mark, overflow
}

// send queues a frame for this client alone.
func (c *conn) send(frame []byte) bool {
	queued, mark, overflow := c.push(outFrame{b: frame})
	switch {
	case mark:
		c.sh.markDirty(c)
	case overflow:
		c.slowConsumer()
	}
	return queued
}

// slowConsumer cuts off a client whose queue overflowed: what is queued is
// dropped, and a close frame takes its place.
func (c *conn) slowConsumer() {
	c.mu.Lock()
	if c.closing { // another broadcast got here first
		c.mu.Unlock()
		return
	}
	dropped := len(c.queue) + 1
	c.mu.Unlock()
	c.g.m.dropped.WithLabelValues(reasonSlowConsumer).Add(float64(dropped))
	c.g.log.Debug("slow consumer", "remote", c.remote(), "dropped", dropped)
	c.sendClose(protocol.ClosePolicy, "slow consumer", reasonSlowConsumer, true)
}

// sendClose queues a close frame, after what is queued or, with drop,
// instead of it, writes it without waiting for the flush interval, and
// gives the peer closeGrace to answer before the socket is closed. Only the
// first close counts.
func (c *conn) sendClose(code int, text, reason string, drop bool) {
	frame := compileFrame(ws.OpClose, ws.NewCloseFrameBody(ws.StatusCode(code), text))
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
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
	if !c.held && !c.writing && !c.closed {
		c.startSlow()
	}
	// If the peer does not answer, teardown: it gives a writer still busy
	// with the close frame closeGrace more, then closes the socket.
	c.linger = time.AfterFunc(closeGrace, func() { c.teardown() })
}

// startSlow hands the socket to a writer goroutine, which writes the
// queue, blocking as long as it must. Called with mu held.
func (c *conn) startSlow() {
	c.writing = true
	c.writers.Add(1)
	go c.slowFlush(nil, 0)
}

// flushFromShard writes what is queued, in one writev that does not block.
// It runs on the connection's shard flusher.
func (c *conn) flushFromShard(s *scratch) {
	c.mu.Lock()
	c.dirty = false
	if c.writing || c.held || c.closed || len(c.queue) == 0 {
		c.mu.Unlock()
		return
	}
	batch := c.take()
	total := c.inflightBytes
	c.writing = true
	c.writers.Add(1)
	c.mu.Unlock()

	n, err := c.tryWrite(batch, s)
	switch {
	case err == nil && n == total:
		c.wrote(batch)
		c.mu.Lock()
		c.recycle(batch)
		if c.closing && len(c.queue) > 0 {
			// A close frame came meanwhile: it goes now, not after the
			// interval, and even if teardown began (it waits for us).
			c.mu.Unlock()
			go c.slowFlush(nil, 0)
			return
		}
		c.writing = false
		mark := len(c.queue) > 0 && !c.dirty // queued while we wrote
		c.dirty = c.dirty || mark
		c.mu.Unlock()
		c.writers.Done()
		if mark {
			c.sh.markDirty(c)
		}
	case err == nil || errors.Is(err, errWouldBlock):
		// The kernel took part, or nothing: a writer goroutine waits for
		// the socket to drain (it owns writing, and the WaitGroup count).
		go c.slowFlush(batch, n)
	default:
		c.writeFailed(err)
		c.writers.Done()
	}
}

// take moves the queue into a batch being written. Called with mu held.
func (c *conn) take() []outFrame {
	batch := c.queue
	c.queue, c.spare = c.spare, nil
	c.inflight, c.inflightBytes, c.queued = len(batch), c.queued, 0
	return batch
}

// recycle keeps a written batch's slice for the next queue. Called with mu
// held.
func (c *conn) recycle(batch []outFrame) {
	clear(batch) // drop references to written frames
	c.spare = batch[:0]
	c.inflight, c.inflightBytes = 0, 0
}

// wrote records that batch reached the socket.
func (c *conn) wrote(batch []outFrame) {
	now := time.Now().UnixMilli()
	for _, f := range batch {
		if f.ts > 0 {
			c.g.m.deliveryLatency.Observe(float64(now-f.ts) / 1000)
		}
	}
}

// bufsPool holds the vectors slowFlush writes from.
var bufsPool = sync.Pool{New: func() any { return new(net.Buffers) }}

// slowFlush writes batch from byte written on, then whatever is queued,
// blocking on the socket (within WriteTimeout, or closeBy once tearing
// down), until the queue is empty. It owns writing, and one count of the
// writers WaitGroup.
func (c *conn) slowFlush(batch []outFrame, written int) {
	defer c.writers.Done()
	for {
		if batch != nil {
			bufs := bufsPool.Get().(*net.Buffers)
			for _, f := range batch {
				b := f.b
				if written >= len(b) {
					written -= len(b)
					continue
				}
				*bufs = append(*bufs, b[written:])
				written = 0
			}
			c.mu.Lock()
			deadline := time.Now().Add(c.g.cfg.WriteTimeout)
			if !c.closeBy.IsZero() && c.closeBy.Before(deadline) {
				deadline = c.closeBy
			}
			c.nc.SetWriteDeadline(deadline) // under mu, so teardown's deadline is never overwritten
			c.mu.Unlock()
			w := *bufs // WriteTo consumes its receiver
			_, err := w.WriteTo(c.nc)
			clear(*bufs)
			*bufs = (*bufs)[:0]
			bufsPool.Put(bufs)
			if err != nil {
				c.writeFailed(err)
				return
			}
			c.wrote(batch)
		}
		c.mu.Lock()
		if batch != nil {
			c.recycle(batch)
		}
		if len(c.queue) == 0 {
			if c.closeBy.IsZero() {
				// Caught up: the next writes are the flusher's, which
				// must not meet this write's deadline later.
				c.nc.SetWriteDeadline(time.Time{})
			}
			c.writing = false
			c.mu.Unlock()
			return
		}
		batch, written = c.take(), 0
		c.mu.Unlock()
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
	c.queue, c.queued, c.inflight, c.inflightBytes = nil, 0, 0, 0
	c.mu.Unlock()
	c.abort()
}

func (c *conn) isClosing() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closing
}
