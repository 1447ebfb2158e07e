package gateway

import (
	"context"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fly-chat/chat/internal/testkit"
)

// slowOpenLog delays start right after it releases the held writes and
// before it binds ?handle=, as a busy scheduler might.
type slowOpenLog struct{ slog.Handler }

func (h slowOpenLog) Enabled(context.Context, slog.Level) bool { return true }
func (h slowOpenLog) Handle(_ context.Context, r slog.Record) error {
	if r.Message == "connection opened" {
		time.Sleep(300 * time.Millisecond)
	}
	return nil
}
func (h slowOpenLog) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h slowOpenLog) WithGroup(string) slog.Handler      { return h }

// A connection whose first write fails (the peer reset during the
// handshake) may be torn down before start binds its ?handle=; it must
// then never bind it, or presence would count a session that never ends.
func TestNoHandleBoundAfterTeardown(t *testing.T) {
	ns := testkit.StartNATS(t)
	cfg, err := LoadConfig(nil, func(k string) string {
		return map[string]string{"NATS_URL": ns.ClientURL(), "IO_MODE": "goroutine", "FLUSH_INTERVAL": "0s"}[k]
	}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	g := New(cfg, slog.New(slowOpenLog{}), prometheus.NewRegistry())
	if err := g.Connect(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.stopBackground(); g.nc.Close(); g.closeIO() })

	srv, cli := net.Pipe()
	c := newConn(g, srv)
	registered := g.hub.add(c)
	c.send(pingReply) // say, a broadcast during the handshake: held until start
	cli.Close()       // the peer is gone: that first write fails
	c.start(nil, "alice", true, registered)

	deadline := time.Now().Add(5 * time.Second)
	for g.hub.len() > 0 {
		if time.Now().After(deadline) {
			t.Fatal("the connection was never torn down")
		}
		time.Sleep(time.Millisecond)
	}
	g.tracker.mu.Lock()
	n := g.tracker.sessions["alice"]
	g.tracker.mu.Unlock()
	if n != 0 {
		t.Fatalf("the connection is gone but presence counts %d session(s) of alice", n)
	}
}
