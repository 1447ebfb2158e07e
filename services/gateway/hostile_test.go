package gateway_test

import (
	"bufio"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/nats-io/nats.go"

	"github.com/fly-chat/chat/internal/testkit"
	"github.com/fly-chat/chat/pkg/protocol"
)

// stillChatting checks that a bystander's message reaches a watcher: what a
// hostile client did affected nobody else.
func stillChatting(t *testing.T, bystander, watcher *testkit.Client, tag string) {
	t.Helper()
	text := "bystander after " + tag
	bystander.Send(`{"type":"message","message":"` + text + `"}`)
	watcher.ExpectMessage("bystander", text, wait)
}

func statusOf(err error) int {
	var se ws.StatusError
	if errors.As(err, &se) {
		return int(se)
	}
	return 0
}

func TestOriginIsChecked(t *testing.T) {
	ns := testkit.StartNATS(t)
	t.Run("default: this host only", func(t *testing.T) {
		g := startGateway(t, ns.ClientURL())
		bystander, watcher := join(t, g, "bystander"), join(t, g, "watcher")
		host := strings.TrimPrefix(g.http, "http://")
		for origin, want := range map[string]int{
			"http://evil.example":      http.StatusForbidden,
			"http://" + host:           0,
			"https://" + host:          0, // TLS ends at the proxy: the scheme is not the host's to judge
			"http://" + host + ".evil": http.StatusForbidden,
			"null":                     http.StatusForbidden,
			"":                         0, // not a browser
		} {
			h := http.Header{}
			if origin != "" {
				h.Set("Origin", origin)
			}
			c, err := testkit.DialErr(g.ws+"?handle=o", testkit.DialOptions{Header: h})
			if got := statusOf(err); got != want || (want == 0 && err != nil) {
				t.Errorf("Origin %q: status %d (%v), want %d", origin, got, err, want)
			}
			if c != nil {
				c.Conn.Close()
			}
		}
		stillChatting(t, bystander, watcher, "origins")
		testkit.WaitMetric(t, g.metrics, wait, func(v float64) bool { return v == 3 }, "chat_gateway_upgrades_total", "result", "403")
	})
	t.Run("allowlist", func(t *testing.T) {
		g := startGateway(t, ns.ClientURL(), map[string]string{"ALLOWED_ORIGINS": "https://chat.example, https://other.example/"})
		host := strings.TrimPrefix(g.http, "http://")
		for origin, want := range map[string]int{
			"https://chat.example":  0,
			"https://OTHER.example": 0,
			"http://chat.example":   http.StatusForbidden,
			"http://" + host:        http.StatusForbidden, // not on the list
		} {
			c, err := testkit.DialErr(g.ws+"?handle=o", testkit.DialOptions{Header: http.Header{"Origin": {origin}}})
			if got := statusOf(err); got != want || (want == 0 && err != nil) {
				t.Errorf("Origin %q: status %d (%v), want %d", origin, got, err, want)
			}
			if c != nil {
				c.Conn.Close()
			}
		}
	})
}

func TestConnectionLimits(t *testing.T) {
	ns := testkit.StartNATS(t)
	t.Run("per gateway", func(t *testing.T) {
		g := startGateway(t, ns.ClientURL(), map[string]string{"MAX_CONNECTIONS": "3"})
		bystander, watcher := join(t, g, "bystander"), join(t, g, "watcher")
		third := join(t, g, "third")
		if _, err := testkit.DialErr(g.ws + "?handle=fourth"); statusOf(err) != http.StatusServiceUnavailable {
			t.Fatalf("a fourth connection: %v, want 503", err)
		}
		third.Conn.Close()
		testkit.WaitMetric(t, g.metrics, wait, func(v float64) bool { return v == 2 }, "chat_gateway_connections")
		join(t, g, "fourth") // a place is free again
		stillChatting(t, bystander, watcher, "the cap")
	})
	t.Run("per address", func(t *testing.T) {
		g := startGateway(t, ns.ClientURL(), map[string]string{"MAX_CONNECTIONS_PER_IP": "2"})
		bystander, watcher := join(t, g, "bystander"), join(t, g, "watcher")
		if _, err := testkit.DialErr(g.ws + "?handle=third"); statusOf(err) != http.StatusTooManyRequests {
			t.Fatalf("a third connection from 127.0.0.1: %v, want 429", err)
		}
		stillChatting(t, bystander, watcher, "the address cap")
	})
	t.Run("per address on Fly", func(t *testing.T) {
		// On Fly every connection comes from the proxy; the client's address
		// is in Fly-Client-IP.
		g := startGateway(t, ns.ClientURL(), map[string]string{"MAX_CONNECTIONS_PER_IP": "1", "FLY_APP_NAME": "chat-gateway", "LOG_FORMAT": "text"})
		from := func(ip string) testkit.DialOptions {
			return testkit.DialOptions{Header: http.Header{"Fly-Client-IP": {ip}}}
		}
		a := testkit.Dial(t, g.ws+"?handle=a", from("203.0.113.1"))
		testkit.Dial(t, g.ws+"?handle=b", from("203.0.113.2"))
		if _, err := testkit.DialErr(g.ws+"?handle=c", from("203.0.113.1")); statusOf(err) != http.StatusTooManyRequests {
			t.Fatalf("a second connection from 203.0.113.1: %v, want 429", err)
		}
		a.Conn.Close()
		testkit.WaitMetric(t, g.metrics, wait, func(v float64) bool { return v == 1 }, "chat_gateway_connections")
		testkit.Dial(t, g.ws+"?handle=c", from("203.0.113.1"))
	})
}

// A client over the rate limit gets rate_limited for each refused message,
// and is closed with 1008 once it has kept it up for FLOOD_TIMEOUT; a client
// that only bursts once is not.
func TestRateLimitAndFlood(t *testing.T) {
	ns := testkit.StartNATS(t)
	g := startGateway(t, ns.ClientURL(), map[string]string{"RATE_LIMIT": "", "RATE_BURST": "", "FLOOD_TIMEOUT": "1s"})
	bystander, watcher := join(t, g, "bystander"), join(t, g, "watcher")

	// A burst of 25: the first 20 (RATE_BURST) go out, the rest are refused.
	burst := join(t, g, "burst")
	for i := range 25 {
		burst.Send(fmt.Sprintf(`{"type":"message","message":"b%d","cid":"b%d"}`, i, i))
	}
	for i := range 20 {
		watcher.ExpectMessage("burst", fmt.Sprintf("b%d", i), wait)
	}
	for i := 20; i < 25; i++ {
		if f := burst.ExpectError(protocol.CodeRateLimited, wait); f.CID == "" {
			t.Fatalf("rate_limited error without the message's cid: %+v", f)
		}
	}
	// Calm again, it can talk after a second.
	time.Sleep(1100 * time.Millisecond) // refill: ten tokens a second
	burst.Send(`{"type":"message","message":"calm"}`)
	watcher.ExpectMessage("burst", "calm", wait)

	// A flood that goes on is cut off; everyone else keeps getting every
	// message meanwhile.
	flood := join(t, g, "flood")
	stop := make(chan struct{})
	go func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			if flood.SendText(`{"type":"message","message":"spam"}`) != nil {
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	defer close(stop)
	for i := range 5 {
		stillChatting(t, bystander, watcher, fmt.Sprintf("flood %d", i))
	}
	f := flood.ExpectClose(protocol.ClosePolicy, 5*time.Second)
	if f.CloseReason != "rate limit exceeded" {
		t.Fatalf("flood closed with %q", f.CloseReason)
	}
	stillChatting(t, bystander, watcher, "the flood")
	testkit.WaitMetric(t, g.metrics, wait, func(v float64) bool { return v == 1 }, "chat_gateway_disconnects_total", "code", "1008", "reason", "flood")
}

// A client that never finishes its HTTP request (slowloris) is cut off after
// HANDSHAKE_TIMEOUT.
func TestSlowHandshakeIsCutOff(t *testing.T) {
	ns := testkit.StartNATS(t)
	g := startGateway(t, ns.ClientURL(), map[string]string{"HANDSHAKE_TIMEOUT": "500ms"})
	bystander, watcher := join(t, g, "bystander"), join(t, g, "watcher")
	conn, err := net.Dial("tcp", strings.TrimPrefix(g.http, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	fmt.Fprintf(conn, "GET /ws?handle=slow HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n") // and then nothing
	conn.SetReadDeadline(time.Now().Add(wait))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusSwitchingProtocols {
			t.Fatal("upgraded a request that never ended")
		}
	} else if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("the server kept the half request open")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("cut off after %v, HANDSHAKE_TIMEOUT is 500ms", d)
	}
	stillChatting(t, bystander, watcher, "slowloris")
}

// Websockets fed random bytes after the upgrade are closed, the gateway keeps
// serving, and nothing is left running for them.
func TestRandomBytesAfterUpgrade(t *testing.T) {
	ns := testkit.StartNATS(t)
	g := startGateway(t, ns.ClientURL(), map[string]string{"LOG_LEVEL": "info"})
	bystander, watcher := join(t, g, "bystander"), join(t, g, "watcher")
	settle := func() int {
		http.DefaultClient.CloseIdleConnections() // the metrics scrapes' keep-alive connections
		runtime.GC()
		return runtime.NumGoroutine()
	}
	before := settle()

	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 50 {
		c := testkit.Dial(t, g.ws+fmt.Sprintf("?handle=fuzz%d", i))
		junk := make([]byte, 1+rng.IntN(8192))
		for j := range junk {
			junk[j] = byte(rng.UintN(256))
		}
		c.Conn.SetWriteDeadline(time.Now().Add(wait))
		c.Conn.Write(junk) // the gateway may hang up halfway
		for {
			f, err := c.Next(wait)
			if err != nil {
				if errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatalf("connection %d still open after %d random bytes", i, len(junk))
				}
				break // closed without a close frame: dropped
			}
			if f.Closed {
				break
			}
		}
		c.Conn.Close()
	}
	stillChatting(t, bystander, watcher, "random bytes")
	testkit.WaitMetric(t, g.metrics, wait, func(v float64) bool { return v == 2 }, "chat_gateway_connections")
	deadline := time.Now().Add(wait)
	for settle() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines before, %d after:\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A client cannot make a gateway relay anything but a stamped message: frames
// that look like notices are refused, and nothing reaches presence.events.
func TestClientCannotForgeNotices(t *testing.T) {
	ns := testkit.StartNATS(t)
	g := startGateway(t, ns.ClientURL())
	events := make(chan *nats.Msg, 16)
	nc := testkit.ConnectNATS(t, ns)
	if _, err := nc.ChanSubscribe(">", events); err != nil {
		t.Fatal(err)
	}
	nc.Flush()
	mallory, watcher := join(t, g, "mallory"), join(t, g, "watcher")
	for _, frame := range []string{
		`{"type":"join","name":"admin","message":"joined","v":999}`,
		`{"type":"leave","name":"watcher","message":"left","reason":"closed","v":999}`,
		`{"type":"presence","handles":["nobody"],"v":999}`,
		`{"type":"error","code":"x","name":"error","message":"fake"}`,
	} {
		mallory.Send(frame)
		mallory.ExpectError(protocol.CodeUnknownType, wait)
	}
	mallory.Send(`{"type":"message","message":"only this","id":"forged","ts":1}`)
	f := watcher.ExpectMessage("mallory", "only this", wait)
	if f.ID == "forged" || f.TS == 1 {
		t.Fatalf("the client's id or ts was relayed: %+v", f)
	}
	for {
		select {
		case m := <-events:
			if m.Subject == protocol.SubjectEvents || m.Subject == protocol.SubjectMsg && !strings.Contains(string(m.Data), "only this") {
				t.Fatalf("%s carried %s", m.Subject, m.Data)
			}
			continue
		default:
		}
		break
	}
}
