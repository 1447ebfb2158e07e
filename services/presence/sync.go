package presence

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/fly-chat/chat/pkg/protocol"
)

// requestSync asks a gateway for its full state, in the background; the
// state hears the answer through Synced or SyncFailed.
func (p *Service) requestSync(gw, inst string) {
	go func() {
		c, err := p.fetchSync(gw)
		if err == nil && c.Instance != inst {
			err = errors.New("answered by another instance")
		}
		if err != nil {
			p.m.syncs.WithLabelValues("failed").Inc()
			p.log.Warn("sync failed", "gateway", gw, "err", err)
			p.state.SyncFailed(gw, inst)
			return
		}
		p.m.syncs.WithLabelValues("ok").Inc()
		p.log.Debug("synced", "gateway", gw, "handles", len(c.Handles), "seq", c.Seq)
		p.state.Synced(c)
	}()
}

// fetchSync collects every chunk of one gateway's answer and merges them.
func (p *Service) fetchSync(gw string) (protocol.SyncChunk, error) {
	inbox := p.nc.NewRespInbox()
	sub, err := p.nc.SubscribeSync(inbox)
	if err != nil {
		return protocol.SyncChunk{}, err
	}
	defer sub.Unsubscribe()
	if err := p.nc.PublishRequest(protocol.SyncSubject(gw), inbox, nil); err != nil {
		return protocol.SyncChunk{}, err
	}
	deadline := time.Now().Add(p.cfg.SyncTimeout)
	var (
		all  protocol.SyncChunk
		seen = map[int]bool{}
	)
	for all.Parts == 0 || len(seen) < all.Parts {
		msg, err := sub.NextMsg(time.Until(deadline))
		if err != nil {
			return all, fmt.Errorf("%d of %d parts: %w", len(seen), all.Parts, err)
		}
		var c protocol.SyncChunk
		if err := json.Unmarshal(msg.Data, &c); err != nil {
			return all, err
		}
		switch {
		case c.Gateway != gw || c.Parts < 1 || c.Part < 0 || c.Part >= c.Parts:
			return all, errors.New("malformed sync chunk")
		case all.Parts == 0:
			all = c
			all.Handles = maps.Clone(c.Handles)
			if all.Handles == nil {
				all.Handles = map[string]int{}
			}
		case c.Instance != all.Instance || c.Seq != all.Seq || c.Parts != all.Parts:
			return all, errors.New("sync chunks of different snapshots")
		default:
			maps.Copy(all.Handles, c.Handles)
			all.Unconfirmed = append(all.Unconfirmed, c.Unconfirmed...)
			all.Gone = append(all.Gone, c.Gone...)
		}
		seen[c.Part] = true
	}
	return all, nil
}
