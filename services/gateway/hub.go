package gateway

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// shutdownPause separates the batches of sockets closed on shutdown.
const shutdownPause = 100 * time.Millisecond

// hub is the registry of this gateway's connections: the broadcast target,
// and what shutdown closes (http.Server.Shutdown does not know about
// hijacked connections). Connections are spread over shards, one per CPU:
// each shard's flusher writes its connections, so the writing is done by a
// few goroutines, in parallel, whatever the number of clients.
type hub struct {
	shards []*shard
	next   atomic.Uint32
	stop   chan struct{}  // closed to stop the flushers
	done   sync.WaitGroup // the flushers

	mu     sync.Mutex
	count  int
	closed bool          // shutting down: add refuses
	empty  chan struct{} // closed once closed is set and count is 0
}

// shard is a share of the connections, and the goroutine that writes them
// and keeps them alive.
type shard struct {
	interval time.Duration
	cfg      Config
	wake     chan struct{} // a connection was marked dirty
	scratch  scratch       // the flusher's, for building writes

	mu    sync.Mutex
	conns []*conn // each at its conn.slot: a slice, not a map, for a million of them
	dirty []*conn // connections with something queued and no write under way
	spare []*conn // the flusher's last list, reused
}

func newHub(cfg Config) *hub {
	h := &hub{stop: make(chan struct{}), empty: make(chan struct{})}
	for range max(1, runtime.GOMAXPROCS(0)) {
		s := &shard{interval: cfg.FlushInterval, cfg: cfg, wake: make(chan struct{}, 1)}
		h.shards = append(h.shards, s)
		h.done.Add(1)
		go func() {
			defer h.done.Done()
			s.run(h.stop)
		}()
	}
	return h
}

// pick chooses the shard of a new connection, round robin.
func (h *hub) pick() *shard {
	return h.shards[int(h.next.Add(1))%len(h.shards)]
}

// add registers c. It reports false when the hub is shutting down.
func (h *hub) add(c *conn) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return false
	}
	h.count++
	// Still under h.mu: shutdown, once it has set closed, finds every
	// connection counted in a shard.
	s := c.sh
	s.mu.Lock()
	c.slot = len(s.conns)
	s.conns = append(s.conns, c)
	s.mu.Unlock()
	return true
}

// remove unregisters c, reporting whether it was registered.
func (h *hub) remove(c *conn) bool {
	s := c.sh
	s.mu.Lock()
	ok := c.slot >= 0
	if ok { // the last one takes its slot
		last := s.conns[len(s.conns)-1]
		s.conns[c.slot], last.slot = last, c.slot
		s.conns[len(s.conns)-1] = nil
		s.conns = s.conns[:len(s.conns)-1]
		c.slot = -1
	}
	s.mu.Unlock()
	if !ok {
		return false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.count--; h.closed && h.count == 0 {
		close(h.empty)
	}
	return true
}

func (h *hub) len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.count
}

// broadcast queues f, a complete websocket frame, for every connection:
// the same bytes for all, never blocking. It returns how many took it.
func (h *hub) broadcast(f outFrame) int {
	n := 0
	var overflowed []*conn
	for _, s := range h.shards {
		s.mu.Lock()
		for _, c := range s.conns {
			if s.pushLocked(c, f, &overflowed) {
				n++
			}
		}
		s.mu.Unlock()
		s.poke()
	}
	for _, c := range overflowed { // outside the shard locks: it takes them
		c.slowConsumer()
	}
	return n
}

// shutdown refuses new connections, queues a close frame with code for
// every connection after what it has queued, batch at a time with a pause
// between (so clients reconnecting elsewhere do not all arrive at once), and
// waits until all are gone or ctx ends.
func (h *hub) shutdown(ctx context.Context, code int, text string, batch int) error {
	h.mu.Lock()
	if !h.closed {
		h.closed = true
		if h.count == 0 {
			close(h.empty)
		}
	}
	h.mu.Unlock()
	var conns []*conn
	for _, s := range h.shards {
		s.mu.Lock()
		conns = append(conns, s.conns...)
		s.mu.Unlock()
	}
	for i, c := range conns {
		if i > 0 && i%batch == 0 {
			select {
			case <-time.After(shutdownPause):
			case <-ctx.Done():
			}
		}
		c.sendClose(code, text, reasonShutdown, false)
	}
	select {
	case <-h.empty:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// close stops the flushers. Connections still open are no longer written.
func (h *hub) close() {
	close(h.stop)
	h.done.Wait()
}

// markDirty puts c on the flush list.
func (s *shard) markDirty(c *conn) {
	s.mu.Lock()
	s.dirty = append(s.dirty, c)
	s.mu.Unlock()
	s.poke()
}

// pushLocked queues f for c, one of s's connections, with s.mu held: a
// connection that turns dirty joins s.dirty at once, and one that
// overflowed joins overflowed, for slowConsumer once s.mu is released.
func (s *shard) pushLocked(c *conn, f outFrame, overflowed *[]*conn) (queued bool) {
	queued, mark, overflow := c.push(f)
	if mark {
		s.dirty = append(s.dirty, c)
	}
	if overflow {
		*overflowed = append(*overflowed, c)
	}
	return queued
}

func (s *shard) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// keepaliveTick is how often a shard sweeps its connections for the
// keepalive: a client is pinged, or dropped, up to one tick late.
func keepaliveTick(cfg Config) time.Duration {
	return min(max(min(cfg.PingInterval, cfg.PongTimeout)/10, 10*time.Millisecond), time.Second)
}

// run is the shard's flusher: when connections are dirty it writes each,
// but not more often than once per interval: a quiet shard flushes at once,
// a busy one gathers what arrives meanwhile into fewer, larger writes.
// Every keepaliveTick it sweeps its connections for the keepalive: one
// ticker for them all, rather than a timer each.
func (s *shard) run(stop <-chan struct{}) {
	var last time.Time
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	tick := time.NewTicker(keepaliveTick(s.cfg))
	defer tick.Stop()
	for {
		select {
		case <-s.wake:
		case <-tick.C:
			s.sweep()
		case <-stop:
			return
		}
		s.mu.Lock()
		idle := len(s.dirty) == 0
		s.mu.Unlock()
		if idle {
			// A sweep that pinged nobody, or a stale wake-up, is no write:
			// it must not hold back the next message by an interval.
			continue
		}
		if wait := s.interval - time.Since(last); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-stop:
				return
			}
		}
		last = time.Now()
		s.mu.Lock()
		dirty := s.dirty
		s.dirty = s.spare[:0]
		s.mu.Unlock()
		for i, c := range dirty {
			c.flushFromShard(&s.scratch)
			dirty[i] = nil
		}
		s.spare = dirty[:0]
	}
}

// sweep pings the shard's connections that have been quiet for
// PingInterval, and drops, without a close handshake, those that did not
// answer a ping within PongTimeout: a dead peer.
func (s *shard) sweep() {
	var dead, overflowed []*conn
	s.mu.Lock()
	for _, c := range s.conns {
		ping, gone := c.checkAlive(s.cfg.PingInterval, s.cfg.PongTimeout)
		switch {
		case gone:
			dead = append(dead, c)
		case ping:
			s.pushLocked(c, outFrame{b: pingFrame}, &overflowed)
		}
	}
	s.mu.Unlock()
	for _, c := range dead {
		if !c.isClosing() { // one closing has its own deadline
			c.g.log.Debug("dead peer", "remote", c.remote())
			c.setCause(1006, reasonTimeout)
			c.abort()
		}
	}
	for _, c := range overflowed {
		c.slowConsumer()
	}
}
