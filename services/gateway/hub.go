package gateway

import (
	"context"
	"sync"
	"time"
)

// shutdownPause separates the batches of sockets closed on shutdown.
const shutdownPause = 100 * time.Millisecond

// hub is the registry of this gateway's connections: the broadcast target,
// and what shutdown closes (http.Server.Shutdown does not know about
// hijacked connections).
type hub struct {
	mu     sync.RWMutex
	conns  map[*conn]struct{}
	closed bool          // shutting down: add refuses
	empty  chan struct{} // closed once closed is set and conns is empty
}

func newHub() *hub {
	return &hub{conns: make(map[*conn]struct{}), empty: make(chan struct{})}
}

// add registers c. It reports false when the hub is shutting down.
func (h *hub) add(c *conn) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return false
	}
	h.conns[c] = struct{}{}
	return true
}

// remove unregisters c, reporting whether it was registered.
func (h *hub) remove(c *conn) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.conns[c]; !ok {
		return false
	}
	delete(h.conns, c)
	if h.closed && len(h.conns) == 0 {
		close(h.empty)
	}
	return true
}

func (h *hub) len() int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(h.conns)
}

// broadcast queues f, a complete websocket frame, for every connection:
// the same bytes for all, never blocking. It returns how many took it.
func (h *hub) broadcast(f outFrame) int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	n := 0
	for c := range h.conns {
		if c.enqueue(f) {
			n++
		}
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
		if len(h.conns) == 0 {
			close(h.empty)
		}
	}
	conns := make([]*conn, 0, len(h.conns))
	for c := range h.conns {
		conns = append(conns, c)
	}
	h.mu.Unlock()
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
