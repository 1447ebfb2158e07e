package tests

import (
	"fmt"
	"net"
	"net/http"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/fly-chat/chat/internal/testkit"
	"github.com/fly-chat/chat/pkg/protocol"
)

// chatter is a client whose frames a goroutine reads and sorts as they
// come, so a test can send at a steady rate meanwhile.
type chatter struct {
	*testkit.Client
	name string

	mu       sync.Mutex
	got      map[string]int    // message cid → times received
	errs     map[string]string // cid → error code
	notices  []protocol.ServerFrame
	statuses []string
	v        uint64 // newest roster or notice v
	closed   *testkit.Frame
	done     chan struct{} // closed when the reader stops
}

func newChatter(t *testing.T, url, handle string) *chatter {
	t.Helper()
	c := &chatter{Client: testkit.Dial(t, url+handle), name: handle,
		got: map[string]int{}, errs: map[string]string{}, done: make(chan struct{})}
	go c.read()
	t.Cleanup(func() { c.Conn.Close(); <-c.done })
	return c
}

func (c *chatter) read() {
	defer close(c.done)
	for {
		f, err := c.Next(time.Minute)
		if err != nil {
			return
		}
		c.mu.Lock()
		if f.Closed {
			c.closed = &f
			c.mu.Unlock()
			return
		}
		if sf, err := protocol.DecodeServer([]byte(f.Text)); err == nil {
			switch sf.Type {
			case protocol.TypeMessage:
				if sf.CID != "" {
					c.got[sf.CID]++
				}
			case protocol.TypeError:
				c.errs[sf.CID] = sf.Code
			case protocol.TypeJoin, protocol.TypeLeave:
				c.notices = append(c.notices, sf)
				c.v = max(c.v, sf.V)
			case protocol.TypePresence:
				c.v = max(c.v, sf.V)
			case protocol.TypeStatus:
				c.statuses = append(c.statuses, sf.State)
			}
		}
		c.mu.Unlock()
	}
}

func (c *chatter) say(cid string) error {
	return c.SendText(fmt.Sprintf(`{"type":"message","message":"%s","cid":"%s"}`, cid, cid))
}

// view runs f with c's state locked.
func (c *chatter) view(f func(c *chatter)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f(c)
}

// eventually waits until cond holds, failing the test after timeout.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func readyz(url string) int {
	resp, err := http.Get(url + "/readyz")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// settled waits until every chatter has seen notices up to v.
func settled(t *testing.T, v uint64, cs ...*chatter) {
	t.Helper()
	for _, c := range cs {
		eventually(t, wait, c.name+" seeing v"+fmt.Sprint(v), func() bool {
			var ok bool
			c.view(func(c *chatter) { ok = c.v >= v })
			return ok
		})
	}
}

// The node a gateway is connected to dies while people on two gateways
// chat: the gateway is back within 2 s, no websocket drops, and every
// message reaches every client exactly once, unless its sender was told it
// failed. Presence says nothing.
func TestNodeFailoverLosesNothing(t *testing.T) {
	nodes := testkit.StartCluster(t, []string{"127.0.0.1", "127.0.0.1", "127.0.0.1"}, -1)
	startPresence(t, nodes[2].ClientURL())
	pa, a := startGateway(t, nodes[0].ClientURL())
	_, b := startGateway(t, nodes[1].ClientURL())
	opsA := "http://" + pa.Attrs["ops_addr"]
	cs := []*chatter{newChatter(t, a, "a1"), newChatter(t, a, "a2"), newChatter(t, b, "b1"), newChatter(t, b, "b2")}
	settled(t, 4, cs...)
	nodeA := testkit.ConnectedTo(t, nodes, "chat-gateway/"+pa.Attrs["id"])
	if nodeA != nodes[0] {
		t.Fatalf("gateway A is not on the node it was given")
	}

	const (
		every = 2 * time.Millisecond
		total = 3 * time.Second
	)
	var (
		mu   sync.Mutex
		sent []string
		wg   sync.WaitGroup
	)
	start := time.Now()
	for _, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; time.Since(start) < total; i++ {
				cid := fmt.Sprintf("%s-%d", c.name, i)
				if c.say(cid) == nil {
					mu.Lock()
					sent = append(sent, cid)
					mu.Unlock()
				}
				time.Sleep(every)
			}
		}()
	}

	time.Sleep(total / 3)
	killed := time.Now()
	nodeA.Shutdown()
	eventually(t, 5*time.Second, "gateway A back", func() bool {
		return readyz(opsA) == http.StatusOK && testkit.Value(testkit.Scrape(t, opsA+"/metrics"), "chat_gateway_nats_reconnects_total") >= 1
	})
	back := time.Since(killed)
	if back > 2*time.Second {
		t.Errorf("gateway A back %v after its node died, want within 2s", back)
	}
	wg.Wait()

	// Every message not refused reaches everyone.
	failed := func(cid string) bool {
		for _, c := range cs {
			var code string
			c.view(func(c *chatter) { code = c.errs[cid] })
			if code != "" {
				return true
			}
		}
		return false
	}
	eventually(t, 15*time.Second, "every message everywhere", func() bool {
		for _, cid := range sent {
			if failed(cid) {
				continue
			}
			for _, c := range cs {
				var n int
				c.view(func(c *chatter) { n = c.got[cid] })
				if n == 0 {
					return false
				}
			}
		}
		return true
	})
	// Republishing and replays may still be under way: give them their
	// horizon before counting duplicates.
	time.Sleep(2 * time.Second)

	refused := 0
	for _, cid := range sent {
		f := failed(cid)
		if f {
			refused++
		}
		for _, c := range cs {
			var n int
			c.view(func(c *chatter) { n = c.got[cid] })
			if n > 1 || n == 0 && !f {
				t.Errorf("%s got %s %d times (refused: %v)", c.name, cid, n, f)
			}
		}
	}
	for _, c := range cs {
		c.view(func(c *chatter) {
			if c.closed != nil {
				t.Errorf("%s's websocket was closed: %+v", c.name, *c.closed)
			}
			for _, n := range c.notices {
				if n.V > 4 {
					t.Errorf("%s got a presence notice: %+v", c.name, n)
				}
			}
		})
	}
	m := testkit.Scrape(t, opsA+"/metrics")
	t.Logf("%d messages sent, %d refused while A reconnected; A back after %v; A republished %v, reconnected %v times",
		len(sent), refused, back.Round(time.Millisecond),
		testkit.Value(m, "chat_gateway_republished_messages_total"), testkit.Value(m, "chat_gateway_nats_reconnects_total"))
	if testkit.Value(m, "chat_gateway_nats_reconnects_total") < 1 {
		t.Error("gateway A never reconnected")
	}
}

// NATS entirely down for ten seconds: gateways keep their websockets, say
// they are reconnecting, refuse messages meanwhile, answer 503 on /readyz;
// then everything resumes, and presence has announced nothing.
func TestNATSOutage(t *testing.T) {
	ns := testkit.StartNATS(t)
	port := ns.Addr().(*net.TCPAddr).Port
	pp := startPresence(t, ns.ClientURL())
	pa, a := startGateway(t, ns.ClientURL())
	pb, b := startGateway(t, ns.ClientURL())
	opsA, opsB := "http://"+pa.Attrs["ops_addr"], "http://"+pb.Attrs["ops_addr"]
	alice, bob := newChatter(t, a, "alice"), newChatter(t, b, "bob")
	settled(t, 2, alice, bob)

	down := time.Now()
	ns.Shutdown()
	eventually(t, 2*time.Second, "/readyz 503", func() bool {
		return readyz(opsA) == http.StatusServiceUnavailable && readyz("http://"+pp.Attrs["ops_addr"]) == http.StatusServiceUnavailable
	})
	eventually(t, 2*time.Second, "alice told the chat is reconnecting", func() bool {
		var s []string
		alice.view(func(c *chatter) { s = c.statuses })
		return len(s) == 1 && s[0] == protocol.StateReconnecting
	})
	if err := alice.say("during"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Second, "the message sent during the outage refused", func() bool {
		var code string
		alice.view(func(c *chatter) { code = c.errs["during"] })
		return code == protocol.CodeUnavailable
	})

	time.Sleep(10*time.Second - time.Since(down)) // the outage lasts ten seconds
	testkit.StartNATS(t, func(o *server.Options) { o.Port = port })
	eventually(t, 5*time.Second, "/readyz 200 again", func() bool {
		return readyz(opsA) == http.StatusOK && readyz(opsB) == http.StatusOK && readyz("http://"+pp.Attrs["ops_addr"]) == http.StatusOK
	})
	eventually(t, 2*time.Second, "alice told the chat is back", func() bool {
		var s []string
		alice.view(func(c *chatter) { s = c.statuses })
		return len(s) == 2 && s[1] == protocol.StateConnected
	})

	alice.say("after")
	bob.say("after too")
	eventually(t, 5*time.Second, "chat resumed", func() bool {
		ok := true
		for _, c := range []*chatter{alice, bob} {
			c.view(func(c *chatter) { ok = ok && c.got["after"] == 1 && c.got["after too"] == 1 })
		}
		return ok
	})
	for _, c := range []*chatter{alice, bob} {
		c.view(func(c *chatter) {
			if c.closed != nil || c.v > 2 || c.got["during"] != 0 {
				t.Errorf("%s: closed %v, notices %v, got the refused message %d times", c.name, c.closed, c.notices, c.got["during"])
			}
		})
	}
	// Presence, back too, announced nothing: the next notice is carol's, v3.
	connect(t, a, "carol")
	eventually(t, wait, "bob seeing carol join", func() bool {
		var seen bool
		bob.view(func(c *chatter) { seen = c.v >= 3 })
		return seen
	})
	bob.view(func(c *chatter) {
		last := c.notices[len(c.notices)-1]
		if last.Type != protocol.TypeJoin || last.Name != "carol" || last.V != 3 {
			t.Errorf("bob's notices %+v, want the next after v2 to be carol's join, v3", c.notices)
		}
	})
}

// SIGTERM to a gateway process: its clients get 1001 and reconnect to
// another gateway within the grace period; nobody sees them leave; the
// process exits 0.
func TestSIGTERMHandsClientsOver(t *testing.T) {
	ns := testkit.StartNATS(t)
	startPresence(t, ns.ClientURL())
	pa := startGatewayProcess(t, ns.ClientURL(), "SHUTDOWN_TIMEOUT=5s")
	_, b := startGateway(t, ns.ClientURL())
	bob, _ := connect(t, b, "bob")
	alice, _ := connect(t, pa.url, "alice")
	bob.expectNext(protocol.TypeJoin, "alice", "")
	carol, _ := connect(t, pa.url, "carol")
	bob.expectNext(protocol.TypeJoin, "carol", "")

	if err := pa.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for _, u := range []*user{alice, carol} {
		u.ExpectClose(protocol.CloseGoingAway, wait)
	}
	connect(t, b, "alice")
	connect(t, b, "carol")
	exited := make(chan error, 1)
	go func() { exited <- pa.cmd.Wait() }()
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("gateway exited with %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("gateway did not exit")
	}
	time.Sleep(grace + 300*time.Millisecond) // a wrong leave would come at grace
	connect(t, b, "dave")
	bob.expectNext(protocol.TypeJoin, "dave", "")
}
