package presence

import (
	"context"
	"errors"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/fly-chat/chat/pkg/protocol"
)

// State is who is online across all gateways, and the notices that bring
// everyone's view of it up to date. It holds two things per handle: its
// sessions (the truth, summed over gateways) and whether it is announced
// (what everyone has been told). Every change reconciles the second with the
// first: a join at once, a leave after the grace period unless the handle
// comes back, or at once when its gateway is lost.
//
// All methods are safe for concurrent use. The Outputs run with the lock
// held, so notices come out in v order.
type State struct {
	grace time.Duration
	out   Outputs

	mu       sync.Mutex
	gateways map[string]*gateway
	handles  map[string]*handle   // every handle with sessions or announced
	sessions int                  // over all handles
	online   int                  // handles announced
	v        uint64               // of the last notice
	maxSeenV uint64               // the largest v gateways report having seen
	quiet    bool                 // warming up: changes are applied, not announced
	dirty    map[string]change    // while quiet: handles changed, and how the last change would be announced
	hints    map[string]hint      // while quiet: handles gateways saw go without seeing their leave
	paused   bool                 // NATS is down: silence from gateways proves nothing
	changed  chan struct{}        // closed when a gateway's state advances, if a Roster call waits on it
	ended    map[string]time.Time // instances that said goodbye, and when: their late messages are ignored
	roster   []string             // announced handles, sorted; nil when it must be rebuilt
}

// change is how a handle's last change while quiet is to be announced.
type change struct {
	reason string
	grace  bool
}

// Outputs are how State acts on the world. They are called with the lock
// held and must not block or call back into State.
type Outputs struct {
	Notice func(protocol.Notice)      // publish a join or leave
	Sync   func(gateway, inst string) // ask a gateway instance for its full state; answer with Synced or SyncFailed
	Lost   func(gateway string)       // a gateway stopped heartbeating (for logs and metrics)
}

type handle struct {
	sessions  int
	announced bool          // joined (or known to have been, after a restart) and not left
	leave     *pendingLeave // the leave waiting out the grace period, if any
}

type pendingLeave struct {
	timer  *time.Timer
	reason string
}

// hint is a handle a gateway saw leave shortly before presence started: the
// previous presence process may have been waiting out its grace period.
type hint struct {
	reason string
	at     time.Time // when its last session ended
}

// NewState returns a State that is quiet, building its picture of who is
// online without announcing anything, until Warmup's time is up.
func NewState(grace time.Duration, out Outputs) *State {
	return &State{
		grace:    grace,
		out:      out,
		gateways: make(map[string]*gateway),
		handles:  make(map[string]*handle),
		quiet:    true,
		dirty:    make(map[string]change),
		hints:    make(map[string]hint),
		ended:    make(map[string]time.Time),
	}
}

// Warmup ends the quiet period after d: time for every live gateway to
// heartbeat and be synced, so that what was online before a restart is not
// announced again.
func (s *State) Warmup(d time.Duration) {
	time.AfterFunc(d, s.endQuiet)
}

func (s *State) endQuiet() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.quiet {
		return
	}
	s.quiet = false
	s.v = max(s.v, s.maxSeenV)
	// A handle a gateway saw go, without seeing its leave, was announced:
	// if it is back, nothing happened; if not, its leave is due.
	for _, name := range slices.Sorted(maps.Keys(s.hints)) { // notices in a stable order
		hn := s.hints[name]
		h := s.markAnnounced(name)
		if h.sessions == 0 && h.leave == nil {
			s.scheduleLeave(name, h, hn.reason, s.grace-time.Since(hn.at))
		}
	}
	for _, name := range slices.Sorted(maps.Keys(s.dirty)) {
		ch := s.dirty[name]
		if h := s.handles[name]; h != nil {
			s.reconcile(name, h, ch.reason, ch.grace)
		}
	}
	clear(s.dirty)
	clear(s.hints)
	s.signal()
}

// Quiet reports whether State is still warming up.
func (s *State) Quiet() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.quiet
}

// adjust changes name's sessions by delta and reconciles. reason is why
// sessions ended, if they did; grace says whether a resulting leave waits.
func (s *State) adjust(name string, delta int, reason string, grace bool) {
	h := s.handles[name]
	if h == nil {
		if delta <= 0 {
			return
		}
		h = &handle{}
		s.handles[name] = h
	}
	h.sessions += delta
	s.sessions += delta
	s.reconcile(name, h, reason, grace)
}

// reconcile brings what is announced about name in line with its sessions.
func (s *State) reconcile(name string, h *handle, reason string, grace bool) {
	switch {
	case s.quiet:
		s.dirty[name] = change{reason, grace}
		if h.sessions == 0 && !h.announced {
			delete(s.handles, name)
		}
	case h.sessions > 0:
		if h.leave != nil { // back within the grace period: nobody hears of it
			h.leave.timer.Stop()
			h.leave = nil
		}
		if !h.announced {
			s.setAnnounced(h, true)
			s.notice(protocol.TypeJoin, name, "")
		}
	case !h.announced:
		delete(s.handles, name)
	case grace:
		if h.leave == nil {
			s.scheduleLeave(name, h, reason, s.grace)
		}
	default:
		s.announceLeave(name, h, reason)
	}
}

// scheduleLeave announces name's leave after d, unless it comes back.
func (s *State) scheduleLeave(name string, h *handle, reason string, d time.Duration) {
	if d <= 0 {
		s.announceLeave(name, h, reason)
		return
	}
	p := &pendingLeave{reason: reason}
	p.timer = time.AfterFunc(d, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if cur := s.handles[name]; cur == h && h.leave == p { // not cancelled or superseded
			s.announceLeave(name, h, p.reason)
		}
	})
	h.leave = p
}

func (s *State) announceLeave(name string, h *handle, reason string) {
	if h.leave != nil {
		h.leave.timer.Stop()
		h.leave = nil
	}
	s.setAnnounced(h, false)
	delete(s.handles, name)
	s.notice(protocol.TypeLeave, name, reason)
}

// markAnnounced records, without a notice, that everyone has been told
// name is online.
func (s *State) markAnnounced(name string) *handle {
	h := s.handles[name]
	if h == nil {
		h = &handle{}
		s.handles[name] = h
	}
	s.setAnnounced(h, true)
	return h
}

func (s *State) setAnnounced(h *handle, on bool) {
	if h.announced == on {
		return
	}
	h.announced = on
	s.roster = nil
	if on {
		s.online++
	} else {
		s.online--
	}
}

func (s *State) notice(typ, name, reason string) {
	s.v++
	s.out.Notice(protocol.Notice{Type: typ, Name: name, Reason: reason, V: s.v, TS: time.Now().UnixMilli()})
}

// signal wakes Roster calls waiting for a gateway to catch up.
func (s *State) signal() {
	if s.changed != nil {
		close(s.changed)
		s.changed = nil
	}
}

// ErrWarmingUp is Roster's answer while State is still quiet.
var ErrWarmingUp = errors.New("warming up")

// Roster returns who is online. For a request from a gateway it first waits,
// until ctx ends at the latest, for that gateway's Deltas up to req.Seq, so a
// client's own connect is in its roster; and while State is quiet it waits
// for the warm-up to end, or fails with ErrWarmingUp.
func (s *State) Roster(ctx context.Context, req protocol.OnlineRequest) (protocol.Roster, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for ctx.Err() == nil && (s.quiet || !s.caughtUp(req)) {
		if s.changed == nil {
			s.changed = make(chan struct{})
		}
		ch := s.changed
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
		}
		s.mu.Lock()
	}
	if s.quiet {
		return protocol.Roster{}, ErrWarmingUp
	}
	if s.roster == nil { // rebuilt only after the announced set changed
		s.roster = make([]string, 0, s.online)
		for name, h := range s.handles {
			if h.announced {
				s.roster = append(s.roster, name)
			}
		}
		slices.Sort(s.roster)
	}
	// The cached slice is never written again, so it can be shared.
	return protocol.Roster{Handles: s.roster[:min(len(s.roster), protocol.MaxRosterHandles)], Count: s.online, V: s.v}, nil
}

func (s *State) caughtUp(req protocol.OnlineRequest) bool {
	if req.Gateway == "" {
		return true
	}
	gw := s.gateways[req.Gateway]
	return gw != nil && gw.inst == req.Instance && gw.synced && gw.seq >= req.Seq
}

// Stats are State's sizes, for metrics.
type Stats struct {
	Online, Sessions, Gateways int
	V                          uint64
}

// Stats reports State's current sizes.
func (s *State) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Stats{Online: s.online, Sessions: s.sessions, Gateways: len(s.gateways), V: s.v}
}
