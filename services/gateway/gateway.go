// Package gateway holds browser websockets and relays chat through NATS:
// every message a client sends is published to the subject "msg", and every
// "msg" message is written to every local socket. It never echoes locally,
// so any number of gateways in any number of regions show one conversation.
package gateway

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/gobwas/ws"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fly-chat/chat/internal/envflag"
	"github.com/fly-chat/chat/internal/natsconn"
	"github.com/fly-chat/chat/internal/ops"
	"github.com/fly-chat/chat/pkg/protocol"
)

// Run is the gateway program: it reads its configuration from args and
// getenv, logs to stdout, and serves until ctx is cancelled, then shuts down
// gracefully.
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
	ln, err := net.Listen("tcp", cfg.Addr())
	if err != nil {
		return err
	}
	opsLn, err := net.Listen("tcp", cfg.MetricsAddr)
	if err != nil {
		ln.Close()
		return err
	}
	reg := ops.NewRegistry()
	g := New(cfg, log, reg)
	if err := g.Connect(); err != nil {
		g.closeIO()
		ln.Close()
		opsLn.Close()
		return err
	}
	opsSrv := &http.Server{Handler: ops.Handler(reg, g.Ready), ReadHeaderTimeout: 10 * time.Second}
	go opsSrv.Serve(opsLn)
	defer opsSrv.Close()

	log.Info("gateway listening", "addr", ln.Addr().String(), "ops_addr", opsLn.Addr().String(),
		"id", g.id, "region", cfg.Region)
	return g.Serve(ctx, ln)
}

// Settings lists every setting the gateway reads, for documentation.
func Settings() []envflag.Setting {
	l := envflag.New("gateway", func(string) string { return "" }, io.Discard)
	var c Config
	c.register(l)
	return l.Settings()
}

// InboxPrefix is where gateways receive replies: NATS permissions can give
// gateways _INBOX_gateway.> and nothing else of that kind.
const InboxPrefix = "_INBOX_gateway"

// Gateway is one gateway process.
type Gateway struct {
	cfg      Config
	id       string // FLY_MACHINE_ID, or generated
	log      *slog.Logger
	m        *metrics
	hub      *hub
	poller   *poller // reads every socket; nil: a goroutine per socket does
	admit    *admission
	upgrader ws.HTTPUpgrader
	nc       *nats.Conn // set by Connect, before any connection is accepted
	tracker  *tracker   // set by Connect
	relay    *relay
	inst     string // this process's instance id, new every start

	natsDown       atomic.Bool        // clients have been told the gateway is reconnecting
	downTimer      *time.Timer        // tells them, if NATS stays away; guarded by the NATS callbacks' goroutine
	stopBackground context.CancelFunc // stops heartbeats and the relay's ticker; set by Connect
	draining       chan struct{}      // closed when shutdown starts
}

// New returns a gateway; Serve runs it.
func New(cfg Config, log *slog.Logger, reg prometheus.Registerer) *Gateway {
	id := cfg.MachineID
	if id == "" {
		id = nuid.Next()
	}
	g := &Gateway{
		cfg:   cfg,
		id:    id,
		inst:  nuid.Next(),
		log:   log.With("service", "gateway"),
		m:     newMetrics(reg),
		hub:   newHub(cfg),
		admit: newAdmission(cfg),
		upgrader: ws.HTTPUpgrader{
			Timeout:  cfg.HandshakeTimeout,
			Protocol: func(p string) bool { return p == "json" }, // the original client's subprotocol
		},
		draining: make(chan struct{}),
	}
	g.relay = newRelay(g)
	if cfg.IOMode == "epoll" {
		p, err := newPoller(runtime.GOMAXPROCS(0), g.log)
		if err != nil {
			g.log.Warn("epoll unavailable; reading each socket with a goroutine", "err", err)
		} else {
			g.poller = p
		}
	}
	return g
}

// closeIO stops the flushers and the poller, once every socket is closed.
func (g *Gateway) closeIO() {
	g.hub.close()
	if g.poller != nil {
		g.poller.close()
	}
}

// Ready reports why the gateway cannot take traffic, or nil.
func (g *Gateway) Ready() error {
	select {
	case <-g.draining:
		return errors.New("shutting down")
	default:
	}
	if !g.nc.IsConnected() {
		return errors.New("NATS not connected")
	}
	return nil
}

// Connect connects to NATS and subscribes to chat. It returns with NATS
// down too: the connection keeps trying, and /readyz says so meanwhile.
func (g *Gateway) Connect() error {
	nc, err := natsconn.Connect(g.cfg.NATS, "chat-gateway/"+g.id, InboxPrefix, g.log, natsconn.Hooks{
		Disconnected:     g.lostNATS,
		Reconnected:      g.regainedNATS,
		PermissionDenied: g.m.natsDenied.Inc,
	})
	if err != nil {
		return fmt.Errorf("nats: %w", err)
	}
	g.nc = nc
	g.tracker = newTracker(nc, g.log, g.id, g.inst, g.cfg.Region, g.cfg.HeartbeatInterval)
	for subject, handler := range map[string]nats.MsgHandler{
		protocol.SubjectMsg:          g.relay.deliver,
		protocol.ReplaySubject(g.id): g.relay.deliver,
		protocol.SubjectReplay:       g.relay.answerReplay,
		protocol.SubjectEvents:       g.deliverNotice,
		protocol.SyncSubject(g.id):   g.tracker.answerSync,
	} {
		if _, err := nc.Subscribe(subject, handler); err != nil {
			nc.Close()
			return fmt.Errorf("nats subscribe %s: %w", subject, err)
		}
	}
	// With NATS up, wait until the server has the subscription, so nothing
	// published once this gateway says it is listening is missed. With NATS
	// down the client subscribes when it connects.
	if !nc.IsConnected() {
		g.log.Warn("NATS not reachable yet; serving and retrying")
	} else if err := nc.FlushTimeout(5 * time.Second); err != nil {
		g.log.Warn("NATS subscription not confirmed", "err", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	g.stopBackground = cancel
	go g.tracker.run(ctx)
	go g.relay.run(ctx)
	return nil
}

// reconnectNotice is how long NATS may be away before clients are told:
// a failover to another node usually takes less, and is not news.
const reconnectNotice = 500 * time.Millisecond

var (
	reconnectingFrame = compileFrame(ws.OpText, protocol.Status{State: protocol.StateReconnecting,
		Message: "connection to the chat lost, reconnecting…"}.AppendJSON(nil))
	connectedFrame = compileFrame(ws.OpText, protocol.Status{State: protocol.StateConnected,
		Message: "reconnected"}.AppendJSON(nil))
)

// lostNATS runs when the NATS connection drops. Websockets stay open; new
// messages are refused until it is back; clients hear of it if it lasts.
func (g *Gateway) lostNATS() {
	g.relay.lost()
	if g.downTimer != nil {
		g.downTimer.Stop()
	}
	g.downTimer = time.AfterFunc(reconnectNotice, func() {
		if !g.nc.IsConnected() && !g.natsDown.Swap(true) {
			g.hub.broadcast(outFrame{b: reconnectingFrame})
		}
	})
}

// regainedNATS runs when NATS is back: pending messages go out again, the
// other gateways are asked for what this one missed, and clients that were
// told of the outage are told it is over.
func (g *Gateway) regainedNATS() {
	g.m.natsReconnects.Inc()
	if g.downTimer != nil {
		g.downTimer.Stop()
	}
	g.relay.reconnected()
	if g.natsDown.Swap(false) {
		g.hub.broadcast(outFrame{b: connectedFrame})
	}
}

// Serve serves websockets and the chat page on ln until ctx is cancelled,
// then shuts down within ShutdownTimeout: stop accepting, close every socket
// with 1001, drain NATS. Connect must have succeeded.
func (g *Gateway) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler: g.routes(),
		// A client that trickles its request (slowloris) is cut off; so is
		// an idle keep-alive connection left by a page load.
		ReadHeaderTimeout: g.cfg.HandshakeTimeout,
		ReadTimeout:       g.cfg.HandshakeTimeout,
		IdleTimeout:       time.Minute,
		ErrorLog:          slog.NewLogLogger(g.log.Handler(), slog.LevelDebug),
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	select {
	case <-ctx.Done():
	case err := <-served:
		g.nc.Close()
		g.closeIO()
		return fmt.Errorf("serve: %w", err)
	}
	return g.shutdown(srv)
}

func (g *Gateway) shutdown(srv *http.Server) error {
	start := time.Now()
	g.log.Info("shutting down", "connections", g.hub.len())
	close(g.draining)
	ctx, cancel := context.WithTimeout(context.Background(), g.cfg.ShutdownTimeout)
	defer cancel()

	if err := srv.Shutdown(ctx); err != nil {
		g.log.Warn("http shutdown", "err", err)
	}
	// Tell presence before closing sockets: their handles leave with reason
	// shutdown, after the grace period, unless they reconnect elsewhere.
	g.stopBackground()
	g.tracker.bye()
	if err := g.hub.shutdown(ctx, protocol.CloseGoingAway, "going away", g.cfg.ShutdownBatch); err != nil {
		g.log.Warn("closing websockets", "err", err, "left", g.hub.len())
	}
	closed := g.nc.StatusChanged(nats.CLOSED)
	if err := g.nc.Drain(); err != nil {
		g.nc.Close()
	}
	select {
	case <-closed:
	case <-ctx.Done():
		g.log.Warn("nats drain timed out")
		g.nc.Close()
	}
	g.closeIO()
	g.log.Info("stopped", "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// broadcast writes a text payload to every local socket, framed once, and
// reports to how many. ts is a chat message's server timestamp, for the
// latency metric, or 0. A payload that is not UTF-8 never reaches a
// browser, which would drop the whole connection over it.
func (g *Gateway) broadcast(data []byte, ts int64) (int, bool) {
	if !utf8.Valid(data) {
		g.m.dropped.WithLabelValues("invalid_payload").Inc()
		g.log.Warn("dropped a payload that is not UTF-8", "bytes", len(data))
		return 0, false
	}
	return g.hub.broadcast(outFrame{b: compileFrame(ws.OpText, data), ts: ts}), true
}
