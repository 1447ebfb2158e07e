// Package presence is the service that knows who is online. Gateways report
// their sessions over NATS (deltas at once, heartbeats every interval); it
// keeps handle → sessions over all gateways, publishes join and leave
// notices on presence.events, and answers "who is online" as the NATS micro
// service "presence". See pkg/protocol for the messages.
package presence

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fly-chat/chat/internal/envflag"
	"github.com/fly-chat/chat/internal/natsconn"
	"github.com/fly-chat/chat/internal/ops"
	"github.com/fly-chat/chat/pkg/protocol"
)

// Run is the presence program: configuration from args and getenv, logs to
// stdout, serving until ctx is cancelled.
func Run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	cfg, err := LoadConfig(args, getenv, stdout)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	log, err := ops.NewLogger(stdout, cfg.Log)
	if err != nil {
		return err
	}
	opsLn, err := net.Listen("tcp", cfg.MetricsAddr)
	if err != nil {
		return err
	}
	reg := ops.NewRegistry()
	p := New(cfg, log, reg)
	if err := p.Connect(); err != nil {
		opsLn.Close()
		return err
	}
	opsSrv := &http.Server{Handler: ops.Handler(reg, p.Ready), ReadHeaderTimeout: 10 * time.Second}
	go opsSrv.Serve(opsLn)
	defer opsSrv.Close()
	log.Info("presence listening", "ops_addr", opsLn.Addr().String(), "leave_grace", cfg.LeaveGrace, "warmup", cfg.Warmup)
	return p.Serve(ctx)
}

// Settings lists every setting the presence service reads.
func Settings() []envflag.Setting {
	l := envflag.New("presence", func(string) string { return "" }, io.Discard)
	var c Config
	c.register(l)
	return l.Settings()
}

// InboxPrefix is where the presence service receives replies (gateways'
// sync answers): NATS permissions can give it _INBOX_presence.> alone.
const InboxPrefix = "_INBOX_presence"

// Service is one presence process.
type Service struct {
	cfg   Config
	log   *slog.Logger
	m     *metrics
	state *State
	nc    *nats.Conn // set by Connect
}

// New returns a presence service; Connect and Serve run it.
func New(cfg Config, log *slog.Logger, reg prometheus.Registerer) *Service {
	p := &Service{cfg: cfg, log: log.With("service", "presence")}
	p.state = NewState(cfg.LeaveGrace, Outputs{Notice: p.publish, Sync: p.requestSync, Lost: p.lost})
	p.m = newMetrics(reg, p.state.Stats)
	return p
}

// Ready reports why the service cannot answer yet, or nil.
func (p *Service) Ready() error {
	if !p.nc.IsConnected() {
		return errors.New("NATS not connected")
	}
	if p.state.Quiet() {
		return errors.New("warming up: syncing gateways")
	}
	return nil
}

// Connect connects to NATS, subscribes to the gateways' messages and adds
// the micro service. The warm-up starts once NATS is connected.
func (p *Service) Connect() error {
	var once sync.Once
	startWarmup := func() { once.Do(func() { p.state.Warmup(p.cfg.Warmup) }) }
	nc, err := natsconn.Connect(p.cfg.NATS, "chat-presence", InboxPrefix, p.log, natsconn.Hooks{
		PermissionDenied: p.m.natsDenied.Inc,
		Connected:        startWarmup,
		Disconnected:     p.state.Pause,
		Reconnected: func() {
			p.m.natsReconnects.Inc()
			startWarmup()
			p.state.Resume()
		},
	})
	if err != nil {
		return fmt.Errorf("nats: %w", err)
	}
	p.nc = nc
	if _, err := nc.Subscribe(protocol.SubjectGatewayAll, p.onGateway); err != nil {
		nc.Close()
		return fmt.Errorf("nats subscribe: %w", err)
	}
	_, err = micro.AddService(nc, micro.Config{
		Name:        protocol.ServiceName,
		Version:     "1.0.0",
		Description: "who is online: answers " + protocol.SubjectOnline + " with {\"handles\":[...],\"v\":N}",
		Endpoint: &micro.EndpointConfig{
			Subject: protocol.SubjectOnline,
			Handler: micro.HandlerFunc(p.online),
		},
	})
	if err != nil {
		nc.Close()
		return fmt.Errorf("micro service: %w", err)
	}
	if nc.IsConnected() {
		if err := nc.FlushTimeout(5 * time.Second); err != nil {
			p.log.Warn("NATS subscription not confirmed", "err", err)
		}
		startWarmup()
	} else {
		p.log.Warn("NATS not reachable yet; warm-up starts once connected")
	}
	return nil
}

// Serve runs until ctx is cancelled, then drains NATS.
func (p *Service) Serve(ctx context.Context) error {
	<-ctx.Done()
	closed := p.nc.StatusChanged(nats.CLOSED)
	if err := p.nc.Drain(); err != nil {
		p.nc.Close()
		return nil
	}
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		p.nc.Close()
	}
	return nil
}

// onGateway handles every gateway → presence message, in arrival order:
// one subscription, so one gateway's messages are never reordered.
func (p *Service) onGateway(msg *nats.Msg) {
	// presence.gw.<id>.<kind>
	rest, _ := strings.CutPrefix(msg.Subject, "presence.gw.")
	id, kind, ok := strings.Cut(rest, ".")
	if !ok || !protocol.ValidID(id) {
		return
	}
	start := time.Now()
	var err error
	switch kind {
	case protocol.KindHeartbeat:
		var hb protocol.Heartbeat
		if err = decodeFrom(msg.Data, id, &hb, &hb.Gateway, &hb.Instance); err == nil {
			p.state.Heartbeat(hb)
		}
	case protocol.KindDelta:
		var d protocol.Delta
		if err = decodeFrom(msg.Data, id, &d, &d.Gateway, &d.Instance); err == nil {
			p.state.Delta(d)
		}
	case protocol.KindBye:
		var b protocol.Bye
		if err = decodeFrom(msg.Data, id, &b, &b.Gateway, &b.Instance); err == nil {
			p.state.Bye(b)
		}
	default:
		return
	}
	if err != nil {
		p.log.Warn("bad gateway message", "subject", msg.Subject, "err", err)
		return
	}
	p.m.handleSeconds.WithLabelValues(kind).Observe(time.Since(start).Seconds())
}

// decodeFrom decodes a gateway message and checks that it names the gateway
// whose subject it came on, so one gateway cannot speak for another.
func decodeFrom(data []byte, subjectID string, v any, gw, inst *string) error {
	if err := json.Unmarshal(data, v); err != nil {
		return err
	}
	if *gw != subjectID || !protocol.ValidID(*inst) {
		return fmt.Errorf("gateway %q instance %q on the subject of %q", *gw, *inst, subjectID)
	}
	return nil
}

// publish sends a notice to everyone. It runs with the state locked, so
// notices go out in v order.
func (p *Service) publish(n protocol.Notice) {
	if err := p.nc.Publish(protocol.SubjectEvents, n.AppendJSON(nil)); err != nil {
		p.log.Error("publishing notice", "type", n.Type, "v", n.V, "err", err)
	}
	p.m.notices.WithLabelValues(n.Type, n.Reason).Inc()
	p.log.Debug("notice", "type", n.Type, "handle", n.Name, "reason", n.Reason, "v", n.V)
}

func (p *Service) lost(gw string) {
	p.m.lostGateways.Inc()
	p.log.Warn("gateway lost: no heartbeat", "gateway", gw)
}
