package gateway

import (
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fly-chat/chat/internal/testkit"
	"github.com/fly-chat/chat/pkg/protocol"
)

// BenchmarkBroadcast is the path a chat message takes once NATS has handed
// it to the gateway: framed once, queued for every socket, written by the
// shard flushers to N loopback websockets, read by clients in this process
// into a fixed buffer (so allocs/op is the gateway's). An operation is one
// message delivered to every client; it reports ns per delivery too.
func BenchmarkBroadcast(b *testing.B) {
	for _, n := range []int{1000, 5000} {
		for _, flush := range []time.Duration{50 * time.Millisecond, 0} {
			b.Run(fmt.Sprintf("clients=%d/flush=%v", n, flush), func(b *testing.B) { benchmarkBroadcast(b, n, flush) })
		}
	}
}

func benchmarkBroadcast(b *testing.B, clients int, flush time.Duration) {
	testkit.NeedOpenFiles(b, 2*clients+100)
	cfg := keepaliveConfig()
	cfg.FlushInterval, cfg.IOMode, cfg.SendQueue, cfg.SocketBuffer = flush, "epoll", 256, 64<<10
	g := New(cfg, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	b.Cleanup(g.closeIO)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	payload := protocol.Message{ID: "0123456789abcdefghij", Name: "sender", Message: "a message of about sixty-four bytes, typed by a person at a keyboard", TS: 1}.AppendJSON(nil)
	frameLen := int64(len(compileFrame(0x1, payload)))

	received := make([]atomic.Int64, clients) // bytes
	var wg sync.WaitGroup
	var sockets []net.Conn
	for i := range clients {
		cli, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		srv, err := ln.Accept()
		if err != nil {
			b.Fatal(err)
		}
		srv.(*net.TCPConn).SetWriteBuffer(cfg.SocketBuffer)
		c := newConn(g, srv)
		c.start(nil, "", false, g.hub.add(c))
		sockets = append(sockets, cli, srv)
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 32<<10)
			for {
				n, err := cli.Read(buf)
				received[i].Add(int64(n))
				if err != nil {
					return
				}
			}
		}()
	}
	b.Cleanup(func() {
		for _, s := range sockets {
			s.Close()
		}
		wg.Wait()
	})
	slowest := func() int64 {
		m := received[0].Load()
		for i := range received {
			m = min(m, received[i].Load())
		}
		return m / frameLen
	}

	const window = 128 // messages ahead of the slowest client: below SEND_QUEUE
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		for int64(i)-slowest() >= window {
			time.Sleep(20 * time.Microsecond)
		}
		if n, _ := g.broadcast(payload, 0); n != clients {
			b.Fatalf("broadcast reached %d of %d", n, clients)
		}
	}
	for deadline := time.Now().Add(time.Minute); slowest() < int64(b.N); {
		if time.Now().After(deadline) {
			b.Fatalf("the slowest client has %d of %d messages", slowest(), b.N)
		}
		time.Sleep(50 * time.Microsecond)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(clients), "ns/delivery")
	b.ReportMetric(float64(b.N)*float64(clients)/b.Elapsed().Seconds(), "deliveries/s")

}

// The broadcast benchmark runs, on a few clients. (Benchmarks do not run
// with the tests; this keeps them from rotting unseen.)
func TestBroadcastBenchmarkRuns(t *testing.T) {
	r := testing.Benchmark(func(b *testing.B) { benchmarkBroadcast(b, 20, 0) })
	if r.N == 0 {
		t.Fatal("BenchmarkBroadcast failed or was skipped")
	}
	t.Log(r.String(), r.MemString())
}
