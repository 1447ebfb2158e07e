package tests

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/fly-chat/chat/internal/testkit"
	"github.com/fly-chat/chat/pkg/protocol"
)

// slowReaderBound is the documented bound (README, "What bad input gets"):
// however many clients stop reading while others flood, the gateway's RSS
// grows by at most this much over the same connections idle. Each stuck
// client holds at most SEND_QUEUE frames, which are shared with everyone
// else's queues, until it is cut off as a slow consumer.
const slowReaderBound = 64 << 20

func rss(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// A thousand clients stop reading while one sender floods: the gateway's
// memory stays within slowReaderBound, the stuck clients are cut off, and
// the clients that do read keep getting every message quickly.
func TestThousandSlowReadersAndAFlood(t *testing.T) {
	if testing.Short() {
		t.Skip("opens a thousand connections")
	}
	testkit.NeedOpenFiles(t, 2500)
	ns := testkit.StartNATS(t)
	gw := startGatewayProcess(t, ns.ClientURL(), "RATE_LIMIT=1e6", "RATE_BURST=1000000", "MAX_CONNECTIONS_PER_IP=0", "LOG_LEVEL=info")
	pid := gw.cmd.Process.Pid

	const slow, readers = 1000, 10
	for i := range slow {
		c, err := testkit.DialErr(gw.url+"s"+strconv.Itoa(i), testkit.DialOptions{ReadBuffer: 4096})
		if err != nil {
			t.Fatalf("slow client %d: %v", i, err)
		}
		t.Cleanup(func() { c.Conn.Close() })
	}
	var (
		mu        sync.Mutex
		latencies []time.Duration
		got       = make([]int, readers)
		wg        sync.WaitGroup
	)
	for i := range readers {
		c := testkit.Dial(t, gw.url+"r"+strconv.Itoa(i))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				h, p, err := c.NextRaw(time.Now().Add(30 * time.Second))
				if err != nil || h.OpCode == ws.OpClose {
					return
				}
				if h.OpCode != ws.OpText {
					continue
				}
				if ts, ok := protocol.MessageTS(p); ok && strings.Contains(string(p), `"name":"flood"`) {
					mu.Lock()
					latencies = append(latencies, time.Since(time.UnixMilli(ts)))
					got[i]++
					mu.Unlock()
				}
			}
		}()
		t.Cleanup(func() { c.Conn.Close() })
	}
	time.Sleep(time.Second) // the idle baseline settles
	idle := rss(t, pid)

	sender := testkit.Dial(t, gw.url+"flood")
	go func() { // the sender reads its own messages like anyone else
		for {
			if _, _, err := sender.NextRaw(time.Now().Add(30 * time.Second)); err != nil {
				return
			}
		}
	}()
	// 500 messages of 1 KB a second for five seconds: 5,000 deliveries a
	// second to the readers, and far more than the stuck clients can hold.
	payload := strings.Repeat("f", 1000)
	sent, peak := 0, idle
	start := time.Now()
	for tick := time.NewTicker(10 * time.Millisecond); time.Since(start) < 5*time.Second; <-tick.C {
		for range 5 {
			if err := sender.SendText(`{"type":"message","message":"` + payload + `"}`); err != nil {
				t.Fatal(err)
			}
			sent++
		}
		peak = max(peak, rss(t, pid))
	}
	// Every reader gets every message.
	eventually(t, 30*time.Second, "the readers to get every message", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return slices.Min(got) == sent
	})
	m := testkit.Scrape(t, gw.ops+"/metrics")
	cut := testkit.Value(m, "chat_gateway_disconnects_total", "reason", "slow_consumer")

	mu.Lock()
	slices.Sort(latencies)
	p50, p99, worst := latencies[len(latencies)/2], latencies[len(latencies)*99/100], latencies[len(latencies)-1]
	mu.Unlock()
	t.Logf("%d slow clients, %d readers; %d messages of 1 KB in %v (%.0f/s); gateway RSS idle %d MB, peak %d MB (+%d MB); %v slow clients cut off; reader latency p50 %v p99 %v max %v",
		slow, readers, sent, time.Since(start).Round(time.Millisecond), float64(sent)/time.Since(start).Seconds(),
		idle>>20, peak>>20, (peak-idle)>>20, cut, p50, p99, worst)

	if peak-idle > slowReaderBound {
		t.Errorf("the gateway grew by %d MB, the bound is %d MB", (peak-idle)>>20, slowReaderBound>>20)
	}
	if cut < slow {
		t.Errorf("%v of %d stuck clients were cut off", cut, slow)
	}
	if p99 > 250*time.Millisecond {
		t.Errorf("readers' p99 latency %v while others were stuck", p99)
	}
}
