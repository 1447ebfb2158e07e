package gateway

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"testing"
	"testing/synctest"
	"time"

	"github.com/gobwas/ws"
	"github.com/prometheus/client_golang/prometheus"
)

// pipeConn serves one connection over net.Pipe inside a synctest bubble and
// returns the client end. There is no NATS, so it binds no handle.
func pipeConn(t *testing.T, cfg Config) (client net.Conn, done <-chan struct{}) {
	g := New(cfg, slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})), prometheus.NewRegistry())
	srv, cli := net.Pipe()
	d := make(chan struct{})
	go func() {
		c := newConn(g, srv)
		c.start(nil, "", false, g.hub.add(c))
		g.closeIO()
		close(d)
	}()
	t.Cleanup(func() { cli.Close() })
	return cli, d
}

func keepaliveConfig() Config {
	return Config{
		MaxMessageBytes: 64 << 10, PingInterval: 25 * time.Second, PongTimeout: 10 * time.Second,
		SendQueue: 16, SendQueueBytes: 1 << 20, WriteTimeout: 10 * time.Second, ShutdownTimeout: time.Second,
		RateLimit: 10, RateBurst: 20, FloodTimeout: 3 * time.Second,
	}
}

// readFrame reads one server frame from the client end of the pipe.
func readFrame(t *testing.T, c net.Conn) (ws.Header, []byte, error) {
	t.Helper()
	h, err := ws.ReadHeader(c)
	if err != nil {
		return h, nil, err
	}
	p := make([]byte, h.Length)
	_, err = io.ReadFull(c, p)
	return h, p, err
}

func writeFrame(t *testing.T, c net.Conn, f ws.Frame) {
	t.Helper()
	if err := ws.WriteFrame(c, ws.MaskFrame(f)); err != nil {
		t.Fatal(err)
	}
}

// An idle client is pinged every PingInterval (up to a keepalive tick
// late) and stays as long as it answers; once it stops, it is dropped
// PongTimeout after the unanswered ping, without a close handshake.
func TestIdleClientIsPingedAndDeadPeerDropped(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := keepaliveConfig()
		tick := keepaliveTick(cfg) // the keepalive's resolution
		cli, done := pipeConn(t, cfg)
		last := time.Now()
		for i := range 3 {
			h, _, err := readFrame(t, cli)
			if err != nil || h.OpCode != ws.OpPing {
				t.Fatalf("ping %d: got %v, %v", i, h.OpCode, err)
			}
			if got := time.Since(last); got < cfg.PingInterval || got > cfg.PingInterval+tick {
				t.Fatalf("ping %d after %v of silence, want %v (up to %v late)", i, got, cfg.PingInterval, tick)
			}
			time.Sleep(1234 * time.Millisecond) // answer a little later, as a real peer does
			writeFrame(t, cli, ws.NewPongFrame(nil))
			last = time.Now()
		}

		// Now play dead: read the next ping and never answer it.
		if h, _, err := readFrame(t, cli); err != nil || h.OpCode != ws.OpPing {
			t.Fatalf("last ping: got %v, %v", h.OpCode, err)
		}
		pinged := time.Now()
		if _, _, err := readFrame(t, cli); !errors.Is(err, io.EOF) {
			t.Fatalf("after an unanswered ping: %v, want the connection closed", err)
		}
		if got := time.Since(pinged); got < cfg.PongTimeout || got > cfg.PongTimeout+tick {
			t.Fatalf("dropped %v after the ping, want %v (up to %v late)", got, cfg.PongTimeout, tick)
		}
		<-done
	})
}

// A client that keeps talking is never pinged: any frame proves it alive.
func TestActiveClientIsNotPinged(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := keepaliveConfig()
		cli, done := pipeConn(t, cfg)
		for range 10 {
			time.Sleep(cfg.PingInterval - time.Second)
			writeFrame(t, cli, ws.NewTextFrame([]byte("__ping__")))
			h, p, err := readFrame(t, cli)
			if err != nil || h.OpCode != ws.OpText || string(p) != "__ping__" {
				t.Fatalf("got %v %q %v, want the __ping__ answer and no websocket ping", h.OpCode, p, err)
			}
		}
		cli.Close()
		<-done
	})
}

// The keepalive's sweeps are not writes: on a quiet gateway a frame goes
// out at once, however often the shards sweep, not up to FlushInterval
// after the last sweep.
func TestSweepsDoNotDelayWrites(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := keepaliveConfig()
		cfg.FlushInterval, cfg.PingInterval, cfg.PongTimeout = 500*time.Millisecond, time.Hour, 100*time.Millisecond // a sweep every 10ms
		cli, done := pipeConn(t, cfg)
		for i := range 3 {
			time.Sleep(time.Second + time.Duration(i)*3*time.Millisecond) // quiet, and out of step with the sweeps
			sent := time.Now()
			writeFrame(t, cli, ws.NewTextFrame([]byte("__ping__")))
			h, p, err := readFrame(t, cli)
			if err != nil || string(p) != "__ping__" {
				t.Fatalf("got %v %q %v, want the __ping__ answer", h.OpCode, p, err)
			}
			if d := time.Since(sent); d != 0 {
				t.Fatalf("answer %d came %v after the frame on a quiet gateway", i, d)
			}
		}
		cli.Close()
		<-done
	})
}
