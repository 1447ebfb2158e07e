package presence

import (
	"cmp"
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/fly-chat/chat/internal/natsconn"
	"github.com/fly-chat/chat/pkg/protocol"
)

// lostAfter is how many heartbeat intervals of silence make a gateway lost.
const lostAfter = 3

// maxPending bounds the Deltas kept for a gateway while its sync is under
// way; past it they are dropped, and the heartbeat after the sync notices.
const maxPending = 10000

// gateway is what State knows of one gateway instance.
type gateway struct {
	id, inst string
	prevInst string // the instance this one replaced; its late messages are ignored
	region   string
	interval time.Duration
	heardAt  time.Time
	lost     *time.Timer

	seq        uint64          // of the last Delta applied
	digest     protocol.Digest // of counts
	counts     map[string]int  // handle → sessions on this gateway
	synced     bool            // counts came from a full sync, and no Delta has been missed since
	everSynced bool            // a full sync of this instance has been applied
	syncing    bool            // a sync is under way
	pending    []protocol.Delta
}

// defaultInterval is assumed for a gateway presence has not heard a
// heartbeat from yet.
const defaultInterval = 2 * time.Second

// lookup returns the gateway instance a message is from, creating it, or
// replacing an older instance of the same gateway: a restarted gateway's
// old sessions are gone, with a grace period for their reconnects. It
// returns nil for a message from an instance already replaced or gone.
func (s *State) lookup(id, inst string) *gateway {
	gw := s.gateways[id]
	switch {
	case gw != nil && gw.inst == inst:
		return gw
	case gw != nil && gw.prevInst == inst:
		return nil
	}
	if _, ok := s.ended[inst]; ok {
		return nil
	}
	prev := ""
	if gw != nil {
		prev = gw.inst
		s.dropGateway(gw, protocol.ReasonGatewayLost, true)
	}
	gw = &gateway{id: id, inst: inst, prevInst: prev, interval: defaultInterval, counts: make(map[string]int)}
	s.gateways[id] = gw
	s.heard(gw)
	return gw
}

// heard notes a sign of life from gw and re-arms its lost timer.
func (s *State) heard(gw *gateway) { s.arm(gw, time.Now()) }

// arm counts gw's silence from at, and re-arms its lost timer.
func (s *State) arm(gw *gateway, at time.Time) {
	gw.heardAt = at
	if s.paused {
		return
	}
	d := time.Until(at) + s.lostDeadline(gw)
	if gw.lost != nil {
		gw.lost.Reset(d)
		return
	}
	gw.lost = time.AfterFunc(d, func() { s.checkLost(gw) })
}

// lostDeadline is how long gw may stay silent: lostAfter intervals, and a
// quarter interval of slack for a heartbeat that is merely late.
func (s *State) lostDeadline(gw *gateway) time.Duration {
	return lostAfter*gw.interval + gw.interval/4
}

func (s *State) checkLost(gw *gateway) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gateways[gw.id] != gw || s.paused || time.Since(gw.heardAt) < s.lostDeadline(gw) {
		return // replaced, NATS is down, or a heartbeat came in as the timer fired
	}
	s.out.Lost(gw.id)
	s.dropGateway(gw, protocol.ReasonGatewayLost, false)
}

// dropGateway forgets gw and its sessions; each handle left with none
// leaves for reason, after the grace period if grace.
func (s *State) dropGateway(gw *gateway, reason string, grace bool) {
	if gw.lost != nil {
		gw.lost.Stop()
	}
	delete(s.gateways, gw.id)
	for _, name := range slices.Sorted(maps.Keys(gw.counts)) { // notices in a stable order
		s.adjust(name, -gw.counts[name], reason, grace)
	}
	s.signal()
}

// Heartbeat handles a gateway's heartbeat.
func (s *State) Heartbeat(hb protocol.Heartbeat) {
	s.mu.Lock()
	defer s.mu.Unlock()
	gw := s.lookup(hb.Gateway, hb.Instance)
	if gw == nil {
		return
	}
	if iv := time.Duration(hb.IntervalMS) * time.Millisecond; iv >= 10*time.Millisecond {
		gw.interval = iv
	}
	gw.region = hb.Region
	s.maxSeenV = max(s.maxSeenV, hb.V)
	s.heard(gw)
	// A heartbeat older than the last sync (it travelled separately) says
	// nothing; one ahead, or one that disagrees at the same Seq, means a
	// Delta went missing.
	d, err := strconv.ParseUint(hb.Digest, 16, 64)
	if !gw.synced || hb.Seq > gw.seq || hb.Seq == gw.seq && (err != nil || protocol.Digest(d) != gw.digest) {
		s.sync(gw)
	}
}

// Delta handles a change of one handle's sessions on one gateway.
func (s *State) Delta(d protocol.Delta) {
	s.mu.Lock()
	defer s.mu.Unlock()
	gw := s.lookup(d.Gateway, d.Instance)
	if gw == nil {
		return
	}
	s.heard(gw)
	switch {
	case gw.synced && d.Seq <= gw.seq:
		return // already applied
	case gw.synced && d.Seq == gw.seq+1:
		s.apply(gw, d)
		s.signal()
		return
	}
	// Not synced yet, or a Delta is missing: keep this one for after the sync.
	gw.synced = false
	if len(gw.pending) < maxPending {
		gw.pending = append(gw.pending, d)
	}
	s.sync(gw)
}

func (s *State) apply(gw *gateway, d protocol.Delta) {
	gw.seq = d.Seq
	old, n := gw.counts[d.Handle], max(d.Sessions, 0)
	if n == old {
		return
	}
	gw.digest.Update(d.Handle, old, n)
	if n == 0 {
		delete(gw.counts, d.Handle)
	} else {
		gw.counts[d.Handle] = n
	}
	reason := d.Reason
	if reason == "" {
		reason = protocol.ReasonClosed
	}
	s.adjust(d.Handle, n-old, reason, true)
}

// Bye handles a draining gateway's goodbye: its handles leave, after the
// grace period, with reason shutdown, unless they reconnect elsewhere.
func (s *State) Bye(b protocol.Bye) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for inst, at := range s.ended {
		if time.Since(at) > 10*time.Minute {
			delete(s.ended, inst)
		}
	}
	s.ended[b.Instance] = time.Now()
	if gw := s.gateways[b.Gateway]; gw != nil && gw.inst == b.Instance {
		s.dropGateway(gw, protocol.ReasonShutdown, true)
	}
}

func (s *State) sync(gw *gateway) {
	if !gw.syncing {
		gw.syncing = true
		s.out.Sync(gw.id, gw.inst)
	}
}

// Synced applies a gateway's full state: every chunk of one answer, merged.
// Only the answer to a sync under way counts: one for a gateway since
// dropped or replaced, or older than what was applied since, is ignored.
func (s *State) Synced(c protocol.SyncChunk) {
	s.mu.Lock()
	defer s.mu.Unlock()
	gw := s.gateways[c.Gateway]
	if gw == nil || gw.inst != c.Instance || !gw.syncing {
		return
	}
	gw.syncing = false
	if c.Seq < gw.seq {
		return // the next heartbeat asks again
	}
	if iv := time.Duration(c.IntervalMS) * time.Millisecond; iv >= 10*time.Millisecond {
		gw.interval = iv
	}
	gw.region = c.Region
	s.maxSeenV = max(s.maxSeenV, c.V)
	s.heard(gw)

	// When presence knows nothing of this gateway's past (it is warming up
	// after a restart, or this is the instance's first sync), the gateway's
	// word decides what everyone has been told: handles it saw announced
	// are not announced again, and leaves it did not see are still due.
	trusted := s.quiet || !gw.everSynced
	gw.everSynced = true
	unconfirmed := make(map[string]bool, len(c.Unconfirmed))
	for _, name := range c.Unconfirmed {
		unconfirmed[name] = true
	}

	for _, name := range slices.Sorted(maps.Keys(gw.counts)) { // notices in a stable order
		if c.Handles[name] <= 0 {
			s.adjust(name, -gw.counts[name], protocol.ReasonClosed, true)
			delete(gw.counts, name)
		}
	}
	gw.digest = 0
	for _, name := range slices.Sorted(maps.Keys(c.Handles)) {
		n := c.Handles[name]
		if n <= 0 {
			continue
		}
		old := gw.counts[name]
		gw.counts[name] = n
		gw.digest.Update(name, 0, n)
		if trusted && !unconfirmed[name] {
			s.markAnnounced(name)
		}
		if n != old {
			s.adjust(name, n-old, protocol.ReasonClosed, true)
		}
	}
	if trusted {
		now := time.Now()
		for _, g := range c.Gone {
			at := now.Add(-time.Duration(g.AgoMS) * time.Millisecond)
			if s.quiet {
				if at.After(s.hints[g.Handle].at) {
					s.hints[g.Handle] = hint{reason: g.Reason, at: at}
				}
				continue
			}
			if h := s.handles[g.Handle]; h == nil || !h.announced && h.sessions == 0 {
				s.scheduleLeave(g.Handle, s.markAnnounced(g.Handle), g.Reason, s.grace-now.Sub(at))
			}
		}
	}
	gw.seq, gw.synced = c.Seq, true

	// Deltas that came while the sync was under way.
	pending := gw.pending
	gw.pending = nil
	slices.SortFunc(pending, func(a, b protocol.Delta) int { return cmp.Compare(a.Seq, b.Seq) })
	for i, d := range pending {
		switch {
		case d.Seq <= gw.seq:
		case d.Seq == gw.seq+1:
			s.apply(gw, d)
		default: // still a hole: sync again, keeping the rest
			gw.synced = false
			gw.pending = pending[i:]
			s.sync(gw)
			s.signal()
			return
		}
	}
	s.signal()
}

// SyncFailed notes that a gateway instance did not answer a sync; its next
// heartbeat asks again.
func (s *State) SyncFailed(id, inst string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if gw := s.gateways[id]; gw != nil && gw.inst == inst {
		gw.syncing = false
	}
}

// Pause stops declaring gateways lost: presence itself has lost NATS, so
// their silence means nothing.
func (s *State) Pause() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.paused = true
	for _, gw := range s.gateways {
		if gw.lost != nil {
			gw.lost.Stop()
		}
	}
}

// Resume restarts every gateway's lost timer, once presence has NATS again.
// Gateways reconnect on their own schedule, up to natsconn.MaxBackoff after
// presence does, so their silence counts from then.
func (s *State) Resume() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.paused = false
	for _, gw := range s.gateways {
		s.arm(gw, time.Now().Add(natsconn.MaxBackoff))
	}
}
