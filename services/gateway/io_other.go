//go:build !linux

package gateway

import (
	"errors"
	"log/slog"
)

// scratch is a shard flusher's space for building writes: nothing, here.
type scratch struct{}

// tryWrite cannot write without blocking on this system: every write goes
// through a writer goroutine.
func (c *conn) tryWrite([]outFrame, *scratch) (int, error) { return 0, errWouldBlock }

// poller is Linux's epoll reader; elsewhere each connection has a reading
// goroutine.
type poller struct{}

func newPoller(int, *slog.Logger) (*poller, error) { return nil, errors.New("no epoll on this system") }
func (p *poller) add(*conn) error                  { return errors.New("no epoll on this system") }
func (p *poller) remove(*conn)                     {}
func (p *poller) close()                           {}
