package gateway_test

import (
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/fly-chat/chat/internal/testkit"
	"github.com/fly-chat/chat/services/gateway"
)

var gatewayRun = gateway.Run

// BenchmarkRelayOneSenderTo1000 measures messages per second relayed from one
// sender, through NATS, to 1,000 websocket clients of one gateway, end to
// end: an operation is one message delivered to every client. The sender
// keeps at most a window of messages ahead of the slowest client, so no
// client's queue overflows and nothing is dropped.
func BenchmarkRelayOneSenderTo1000(b *testing.B) {
	benchmarkRelay(b, 1000)
}

func benchmarkRelay(b *testing.B, clients int) {
	testkit.NeedOpenFiles(b, 2*clients+100)
	ns := testkit.StartNATS(b)
	g := testkit.Start(b, gatewayRun, map[string]string{
		"HOST": "127.0.0.1", "PORT": "0", "METRICS_ADDR": "127.0.0.1:0",
		"NATS_URL": ns.ClientURL(), "LOG_LEVEL": "info", "RATE_LIMIT": "1e6", "RATE_BURST": "1000000",
		"MAX_CONNECTIONS_PER_IP": "0", // every client is on 127.0.0.1
	}, "gateway listening")
	url := "ws://" + g.Attrs["addr"] + "/ws?handle="

	const window = 128 // below the default SEND_QUEUE of 256
	received := make([]atomic.Int64, clients)
	var wg sync.WaitGroup
	conns := make([]*testkit.Client, clients)
	for i := range conns {
		conns[i] = testkit.Dial(b, url+"r"+strconv.Itoa(i))
	}
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				h, _, err := c.NextRaw(time.Now().Add(time.Minute))
				if err != nil || h.OpCode == ws.OpClose {
					return
				}
				if h.OpCode == ws.OpText {
					received[i].Add(1)
				}
			}
		}()
	}
	b.Cleanup(func() {
		for _, c := range conns {
			c.Conn.Close()
		}
		wg.Wait()
	})
	sender := testkit.Dial(b, url+"sender")
	go func() { // the sender gets its own messages too; drain them
		for {
			if _, _, err := sender.NextRaw(time.Now().Add(time.Minute)); err != nil {
				return
			}
		}
	}()
	slowest := func() int64 {
		m := received[0].Load()
		for i := range received {
			m = min(m, received[i].Load())
		}
		return m
	}

	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		for int64(i)-slowest() >= window {
			time.Sleep(50 * time.Microsecond)
		}
		if err := sender.SendText(`{"type":"message","message":"benchmark message ` + strconv.Itoa(i) + `"}`); err != nil {
			b.Fatal(err)
		}
	}
	for slowest() < int64(b.N) {
		if time.Since(start) > 5*time.Minute {
			b.Fatalf("slowest client has %d of %d", slowest(), b.N)
		}
		time.Sleep(100 * time.Microsecond)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
	b.ReportMetric(float64(b.N)*float64(clients)/elapsed.Seconds(), "deliveries/s")
}

// The relay benchmark runs, on a few clients. (Benchmarks do not run with
// the tests; this keeps them from rotting unseen.)
func TestRelayBenchmarkRuns(t *testing.T) {
	r := testing.Benchmark(func(b *testing.B) { benchmarkRelay(b, 20) })
	if r.N == 0 {
		t.Fatal("BenchmarkRelayOneSenderTo1000 failed or was skipped")
	}
	t.Log(r.String())
}
