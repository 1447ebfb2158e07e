//go:build linux

package gateway

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/prometheus/client_golang/prometheus"
)

// Under churn (clients that reset, never read, send garbage, or leave
// politely, while broadcasts go out) descriptors are closed and reused all
// the time. The poller must never lose a live connection to that (its
// pings keep being answered), and once every connection is gone it must
// hold none.
func TestPollerSurvivesChurn(t *testing.T) {
	cfg := keepaliveConfig()
	cfg.IOMode, cfg.FlushInterval, cfg.SendQueue, cfg.WriteTimeout = "epoll", time.Millisecond, 64, 300*time.Millisecond
	cfg.RateLimit, cfg.RateBurst = 1e9, 1e9
	g := New(cfg, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	if g.poller == nil {
		t.Fatal("no poller")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			nc.(*net.TCPConn).SetWriteBuffer(8192)
			c := newConn(g, nc)
			go c.start(nil, "", false, g.hub.add(c))
		}
	}()

	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // broadcasts throughout
		defer wg.Done()
		f := outFrame{b: compileFrame(ws.OpText, make([]byte, 200))}
		for {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
				g.hub.broadcast(f)
			}
		}
	}()
	ping, _ := ws.CompileFrame(ws.MaskFrame(ws.NewPingFrame([]byte("x"))))
	var stuck, answered atomic.Int64
	// clients starts n clients that connect, do their part, close, and
	// again, until stop.
	clients := func(n int, client func(r *rand.Rand, cli *net.TCPConn)) {
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := rand.New(rand.NewPCG(uint64(i), 1))
				for {
					select {
					case <-stop:
						return
					default:
					}
					if cli, err := net.Dial("tcp", ln.Addr().String()); err == nil {
						client(r, cli.(*net.TCPConn))
						cli.Close()
					}
				}
			}()
		}
	}
	clients(50, func(_ *rand.Rand, cli *net.TCPConn) { // live: ping, expect the pong
		for range 5 {
			cli.Write(ping)
			if err := awaitPong(cli, 3*time.Second); errors.Is(err, os.ErrDeadlineExceeded) {
				stuck.Add(1)
				return
			} else if err != nil {
				return // cut off (a slow consumer, say): not the poller's doing
			}
			answered.Add(1)
		}
	})
	clients(50, func(r *rand.Rand, cli *net.TCPConn) { // churn
		cli.SetReadBuffer(4096)
		switch r.IntN(4) {
		case 0: // a few pings, then a reset
			for range 10 {
				cli.Write(ping)
			}
			cli.SetLinger(0)
		case 1: // never reads
			time.Sleep(time.Duration(r.IntN(30)) * time.Millisecond)
		case 2: // garbage
			cli.Write([]byte{0x81, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
		case 3: // a polite close
			ws.WriteFrame(cli, ws.MaskFrame(ws.NewCloseFrame(ws.NewCloseFrameBody(1000, ""))))
		}
	})
	time.Sleep(4 * time.Second) // the churn's length
	close(stop)
	wg.Wait()
	if n := stuck.Load(); n > 0 {
		t.Errorf("%d live clients' pings went unanswered (%d answered)", n, answered.Load())
	}
	if answered.Load() == 0 {
		t.Error("no ping was answered at all")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := g.hub.shutdown(ctx, 1001, "bye", 100); err != nil {
		t.Errorf("shutdown: %v, %d connections left", err, g.hub.len())
	}
	g.poller.mu.Lock()
	left := 0
	for _, c := range g.poller.slots {
		if c != nil {
			left++
		}
	}
	g.poller.mu.Unlock()
	if left != 0 {
		t.Errorf("%d connections left in the poller after every one was torn down", left)
	}
	g.closeIO()
}

// awaitPong reads frames until a pong, within d.
func awaitPong(c net.Conn, d time.Duration) error {
	c.SetReadDeadline(time.Now().Add(d))
	for {
		h, err := ws.ReadHeader(c)
		if err != nil {
			return err
		}
		if _, err := io.CopyN(io.Discard, c, h.Length); err != nil {
			return err
		}
		switch h.OpCode {
		case ws.OpPong:
			return nil
		case ws.OpClose:
			return io.EOF
		}
	}
}
