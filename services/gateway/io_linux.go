//go:build linux

package gateway

import (
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// maxIovecs is the most frames one writev takes (the kernel's IOV_MAX).
const maxIovecs = 1024

// scratch is a shard flusher's space for building writes, reused: the
// vectors, and the function RawConn.Write calls with its results, made
// once (a closure made per write would be an allocation per write).
type scratch struct {
	iov   []unix.Iovec
	n     int
	errno unix.Errno
	write func(fd uintptr) bool
}

// writev is scratch.write: one attempt, never a wait.
func (s *scratch) writev(fd uintptr) bool {
	r, _, e := unix.Syscall(unix.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&s.iov[0])), uintptr(len(s.iov)))
	s.n, s.errno = int(r), e
	return true
}

// tryWrite writes batch in one writev that does not block, returning the
// bytes the kernel took; errWouldBlock if it took none.
func (c *conn) tryWrite(batch []outFrame, s *scratch) (int, error) {
	if c.raw == nil {
		return 0, errWouldBlock
	}
	s.iov = s.iov[:0]
	for _, f := range batch[:min(len(batch), maxIovecs)] {
		if len(f.b) > 0 {
			v := unix.Iovec{Base: &f.b[0]}
			v.SetLen(len(f.b))
			s.iov = append(s.iov, v)
		}
	}
	if len(s.iov) == 0 {
		return 0, nil
	}
	if s.write == nil {
		s.write = s.writev
	}
	err := c.raw.Write(s.write)
	n, errno := s.n, s.errno
	clear(s.iov) // the frames may go
	switch {
	case err != nil:
		return 0, err
	case errno == unix.EAGAIN || errno == unix.EINTR:
		return 0, errWouldBlock
	case errno != 0:
		return 0, errno
	}
	return n, nil
}

// pollEvents: readable, or the peer hung up; one worker at a time.
const pollEvents = unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT

// poller reads every connection that has bytes, with a few workers, from
// one epoll set: an idle connection costs no goroutine and no buffer.
//
// Events name connections by an id, never reused, rather than by their
// descriptor: a descriptor closed and reused by a new connection could
// otherwise route a stale event to it.
type poller struct {
	epfd, wakefd int
	log          *slog.Logger
	ready        chan *conn // connections with bytes, to the workers
	stopping     atomic.Bool
	done         sync.WaitGroup

	mu    sync.Mutex
	slots []*conn  // the polled connections; a poll id's low 32 bits are its slot
	free  []uint32 // slots to reuse
	gen   uint32   // a poll id's high 32 bits: a stale id finds its slot taken by another id
}

// wakeID is the eventfd's id, which close writes to: no connection's.
const wakeID = 0

// lookup returns the connection with poll id, if it is still polled.
// Called with mu held.
func (p *poller) lookup(id uint64) *conn {
	if slot := uint32(id); int(slot) < len(p.slots) {
		if c := p.slots[slot]; c != nil && c.pollID == id {
			return c
		}
	}
	return nil
}

func newPoller(workers int, log *slog.Logger) (*poller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, err
	}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, event(unix.EPOLLIN, wakeID)); err != nil {
		unix.Close(epfd)
		unix.Close(wakefd)
		return nil, err
	}
	p := &poller{epfd: epfd, wakefd: wakefd, log: log, ready: make(chan *conn, 4096)}
	p.done.Add(1 + workers)
	go p.wait()
	for range workers {
		go p.work()
	}
	return p, nil
}

// event is an epoll event carrying id as its data.
func event(events uint32, id uint64) *unix.EpollEvent {
	return &unix.EpollEvent{Events: events, Fd: int32(uint32(id)), Pad: int32(uint32(id >> 32))}
}

func eventID(ev *unix.EpollEvent) uint64 { return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32 }

// add makes the poller read c from now on.
//
// Every epoll_ctl on a connection's descriptor runs inside RawConn.Control,
// which holds the descriptor open, and fails once it is closed: a number
// closed and reused by a new connection is never touched on behalf of the
// old one.
func (p *poller) add(c *conn) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var slot uint32
	if n := len(p.free); n > 0 {
		slot, p.free = p.free[n-1], p.free[:n-1]
	} else {
		slot = uint32(len(p.slots))
		p.slots = append(p.slots, nil)
	}
	p.gen++
	if p.gen == 0 {
		p.gen = 1 // so no id is wakeID
	}
	c.pollID = uint64(p.gen)<<32 | uint64(slot)
	p.slots[slot] = c
	if err := p.ctl(c, unix.EPOLL_CTL_ADD); err != nil {
		p.slots[slot] = nil
		p.free = append(p.free, slot)
		return err
	}
	return nil
}

// rearm waits for c's next bytes.
func (p *poller) rearm(c *conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.lookup(c.pollID) != c {
		return // torn down meanwhile
	}
	if err := p.ctl(c, unix.EPOLL_CTL_MOD); err != nil {
		go c.teardown()
	}
}

// ctl adds c's socket to the epoll set, or rearms it, while RawConn.Control
// holds the descriptor open: an error if it is closed.
func (p *poller) ctl(c *conn, op int) error {
	var err error
	if cerr := c.raw.Control(func(fd uintptr) {
		err = unix.EpollCtl(p.epfd, op, int(fd), event(pollEvents, c.pollID))
	}); cerr != nil {
		return cerr
	}
	return err
}

// remove stops reading c. Its descriptor may be closed already (which
// took it out of the epoll set) and even reused: then the DEL fails, or
// removes the new connection's entry, which rearm would then miss; so the
// descriptor is removed only while c's socket is still open.
func (p *poller) remove(c *conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.lookup(c.pollID) != c {
		return
	}
	slot := uint32(c.pollID)
	p.slots[slot] = nil
	p.free = append(p.free, slot)
	c.raw.Control(func(fd uintptr) { // fails once the socket is closed
		unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, int(fd), nil)
	})
}

// close stops the poller's goroutines.
func (p *poller) close() {
	p.stopping.Store(true)
	var one [8]byte
	one[0] = 1
	unix.Write(p.wakefd, one[:])
	p.done.Wait()
	unix.Close(p.epfd)
	unix.Close(p.wakefd)
}

func (p *poller) wait() {
	defer p.done.Done()
	defer close(p.ready)
	events := make([]unix.EpollEvent, 256)
	var batch []*conn
	for {
		n, err := unix.EpollWait(p.epfd, events, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			p.log.Error("epoll wait", "err", err)
			return
		}
		batch = batch[:0]
		p.mu.Lock()
		for i := range events[:n] {
			if c := p.lookup(eventID(&events[i])); c != nil {
				batch = append(batch, c)
			}
		}
		p.mu.Unlock()
		if p.stopping.Load() {
			return
		}
		for _, c := range batch {
			p.ready <- c
		}
	}
}

func (p *poller) work() {
	defer p.done.Done()
	w := &worker{buf: make([]byte, 16<<10)}
	w.read = w.readOnce
	for c := range p.ready {
		if c.readReady(w) {
			p.rearm(c)
		}
	}
}

// worker is a poller worker's buffer, and the function RawConn.Read calls
// with its results, made once.
type worker struct {
	buf   []byte
	n     int
	errno error
	read  func(fd uintptr) bool
}

// readOnce is worker.read: one attempt, never a wait.
func (w *worker) readOnce(fd uintptr) bool {
	w.n, w.errno = unix.Read(int(fd), w.buf)
	return true
}

// readReady reads what c's socket has and parses it, holding readMu so
// that reads and parsing stay in order. It reports whether to wait for more.
func (c *conn) readReady(w *worker) bool {
	c.readMu.Lock()
	defer c.readMu.Unlock()
	for range 4 { // then give the other connections a turn
		err := c.raw.Read(w.read)
		n, errno := w.n, w.errno
		switch {
		case err != nil: // closed under us
			go c.teardown()
			return false
		case errno == unix.EAGAIN:
			return true
		case errno == unix.EINTR:
			continue
		case errno != nil || n == 0:
			c.setCause(1006, reasonEOF)
			go c.teardown()
			return false
		}
		if !c.consumeLocked(w.buf[:n]) {
			go c.teardown()
			return false
		}
		if n < len(w.buf) {
			return true
		}
	}
	return true
}
