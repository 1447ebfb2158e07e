package presence

import (
	"context"
	"encoding/json"
	"time"

	"github.com/nats-io/nats.go/micro"

	"github.com/fly-chat/chat/pkg/protocol"
)

// rosterWait bounds how long an answer waits for the asking gateway's
// deltas, or for the warm-up, before answering with what there is.
const rosterWait = 4 * time.Second

// online answers "who is online". The answer may wait (see State.Roster),
// so it is prepared off the micro service's callback goroutine.
func (p *Service) online(req micro.Request) {
	var r protocol.OnlineRequest
	if len(req.Data()) > 0 {
		if err := json.Unmarshal(req.Data(), &r); err != nil {
			req.Error("400", "request must be {} or {\"gw\":...,\"inst\":...,\"seq\":...}", nil)
			return
		}
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), rosterWait)
		defer cancel()
		roster, err := p.state.Roster(ctx, r)
		if err != nil {
			req.Error("503", "presence is "+err.Error(), nil)
			return
		}
		data, _ := json.Marshal(roster)
		if max := p.nc.MaxPayload(); int64(len(data)) > max {
			req.Error("413", "roster larger than the NATS payload limit", nil)
			return
		}
		if err := req.Respond(data); err != nil {
			p.log.Warn("answering who", "err", err)
		}
	}()
}
