package gateway_test

import (
	"fmt"
	"io"
	"maps"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/fly-chat/chat/internal/testkit"
	"github.com/fly-chat/chat/pkg/protocol"
	"github.com/fly-chat/chat/services/gateway"
)

// wait bounds every wait for something a test expects to happen.
const wait = 5 * time.Second

// testGateway is a whole gateway program running in-process on port 0.
type testGateway struct {
	*testkit.Program
	ws      string // ws://host:port/ws
	root    string // ws://host:port/ (where the original client connects)
	http    string // http://host:port
	metrics string // http://opshost:port/metrics
	ops     string // http://opshost:port
}

// startGateway runs the gateway program against the NATS server at natsURL,
// with env overriding the test defaults. Tests send faster than people do,
// so the rate limit is lifted unless a test sets it (an empty value means
// the gateway's default).
func startGateway(t *testing.T, natsURL string, env ...map[string]string) *testGateway {
	t.Helper()
	e := map[string]string{
		"HOST":         "127.0.0.1",
		"PORT":         "0",
		"METRICS_ADDR": "127.0.0.1:0",
		"NATS_URL":     natsURL,
		"LOG_LEVEL":    "debug",
		"RATE_LIMIT":   "1e6",
		"RATE_BURST":   "1000000",
	}
	for _, o := range env {
		maps.Copy(e, o)
	}
	p := testkit.Start(t, gateway.Run, e, "gateway listening")
	addr, ops := p.Attrs["addr"], p.Attrs["ops_addr"]
	return &testGateway{
		Program: p,
		ws:      "ws://" + addr + "/ws",
		root:    "ws://" + addr + "/",
		http:    "http://" + addr,
		metrics: "http://" + ops + "/metrics",
		ops:     "http://" + ops,
	}
}

// join connects a client bound to handle through the upgrade URL.
func join(t *testing.T, g *testGateway, handle string) *testkit.Client {
	t.Helper()
	return testkit.Dial(t, g.ws+"?handle="+handle)
}

func TestMessageReachesClientsOfEveryGateway(t *testing.T) {
	ns := testkit.StartNATS(t)
	a, b := startGateway(t, ns.ClientURL()), startGateway(t, ns.ClientURL())
	alice, carol := join(t, a, "alice"), join(t, a, "carol")
	bob := join(t, b, "bob")

	before := time.Now().UnixMilli()
	alice.Send(`{"type":"message","message":"hello from A"}`)
	var ids []string
	for _, c := range []*testkit.Client{alice, carol, bob} {
		f := c.ExpectMessage("alice", "hello from A", wait)
		if f.ID == "" {
			t.Fatalf("message has no id: %+v", f)
		}
		if f.TS < before || f.TS > time.Now().UnixMilli() {
			t.Fatalf("ts %d not stamped by the gateway between %d and now", f.TS, before)
		}
		ids = append(ids, f.ID)
	}
	if ids[0] != ids[1] || ids[1] != ids[2] {
		t.Fatalf("one message, different ids: %v", ids)
	}

	// And the other way round, with a fresh id.
	bob.Send(`{"type":"message","message":"hello from B"}`)
	for _, c := range []*testkit.Client{alice, carol, bob} {
		if f := c.ExpectMessage("bob", "hello from B", wait); f.ID == ids[0] {
			t.Fatalf("two messages share id %s", f.ID)
		}
	}
}

// The original Node example's client: it opens "/" with subprotocol json,
// announces itself with a status frame, then sends messages with its name.
func TestOriginalClientSequence(t *testing.T) {
	ns := testkit.StartNATS(t)
	g := startGateway(t, ns.ClientURL())
	onNATS := make(chan *nats.Msg, 16)
	if _, err := testkit.ConnectNATS(t, ns).ChanSubscribe(protocol.SubjectMsg, onNATS); err != nil {
		t.Fatal(err)
	}
	testkit.ConnectNATS(t, ns).Flush()

	var clients []*testkit.Client
	for _, name := range []string{"alice", "bob"} {
		c := testkit.Dial(t, g.root, testkit.DialOptions{Protocols: []string{"json"}})
		if c.Protocol != "json" {
			t.Fatalf("negotiated subprotocol %q, want json", c.Protocol)
		}
		c.Send(`{"type":"status","name":"` + name + `","message":"is now online"}`)
		clients = append(clients, c)
	}
	clients[0].Send(`{"type":"message","name":"alice","message":"hi"}`)
	for _, c := range clients {
		c.ExpectMessage("alice", "hi", wait)
	}
	// The status frames were never relayed: the first thing on msg is hi.
	select {
	case m := <-onNATS:
		f, err := protocol.DecodeServer(m.Data)
		if err != nil || f.Type != protocol.TypeMessage || f.Name != "alice" || f.Message != "hi" {
			t.Fatalf("first payload on msg: %s", m.Data)
		}
	case <-time.After(wait):
		t.Fatal("nothing on msg")
	}
}

func TestHandleCannotBeSpoofed(t *testing.T) {
	ns := testkit.StartNATS(t)
	g := startGateway(t, ns.ClientURL())
	alice, bob := join(t, g, "alice"), join(t, g, "bob")

	alice.Send(`{"type":"message","name":"mallory","message":"trust me"}`)
	if f := bob.Expect("alice's message", wait, isMessage); f.Name != "alice" || f.Message != "trust me" {
		t.Fatalf("shown as %q: %+v", f.Name, f)
	}
	// A later status frame does not rebind the handle either.
	alice.Send(`{"type":"status","name":"mallory","message":"is now online"}`)
	alice.Send(`{"type":"message","message":"still me"}`)
	if f := bob.Expect("alice's second message", wait, isMessage); f.Name != "alice" || f.Message != "still me" {
		t.Fatalf("shown as %q: %+v", f.Name, f)
	}
}

func TestHandleFromStatusFrameIsNormalized(t *testing.T) {
	ns := testkit.StartNATS(t)
	g := startGateway(t, ns.ClientURL())
	c := testkit.Dial(t, g.ws)
	c.Send(`{"type":"status","name":"  e\u0301mile  "}`)
	c.Send(`{"type":"message","message":"salut"}`)
	c.ExpectMessage("émile", "salut", wait)
}

func TestPingIsAnsweredToSenderOnly(t *testing.T) {
	ns := testkit.StartNATS(t)
	g := startGateway(t, ns.ClientURL())
	onNATS := make(chan *nats.Msg, 16)
	nc := testkit.ConnectNATS(t, ns)
	if _, err := nc.ChanSubscribe(protocol.SubjectMsg, onNATS); err != nil {
		t.Fatal(err)
	}
	nc.Flush()
	alice, bob := join(t, g, "alice"), join(t, g, "bob")

	alice.Send(protocol.Ping)
	if f, err := alice.Next(wait); err != nil || f.Text != protocol.Ping {
		t.Fatalf("ping answered with %+v, %v", f, err)
	}
	// Frames of one connection are handled in order, so once a message sent
	// after the ping arrives, a relayed ping would have arrived before it.
	alice.Send(`{"type":"message","message":"after the ping"}`)
	for _, c := range []*testkit.Client{alice, bob} {
		f, err := c.Next(wait)
		if err != nil || !strings.Contains(f.Text, "after the ping") {
			t.Fatalf("next frame %+v, %v; want the message (no ping)", f, err)
		}
	}
	select {
	case m := <-onNATS:
		if !strings.Contains(string(m.Data), "after the ping") {
			t.Fatalf("NATS saw %q before the message", m.Data)
		}
	case <-time.After(wait):
		t.Fatal("nothing on msg")
	}
}

func isMessage(f protocol.ServerFrame) bool { return f.Type == protocol.TypeMessage }

func deadline() time.Time { return time.Now().Add(wait) }

// The page and its assets come from the gateway itself, with a policy that
// forbids loading anything from elsewhere. Assets are linked by content
// version and cached for good; the page is revalidated by ETag.
func TestPageIsServed(t *testing.T) {
	ns := testkit.StartNATS(t)
	g := startGateway(t, ns.ClientURL())
	get := func(path string, header ...string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, g.http+path, nil)
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	page := get("/")
	if page.StatusCode != http.StatusOK || !strings.Contains(page.Header.Get("Content-Type"), "text/html") ||
		page.Header.Get("Cache-Control") != "no-cache" || page.Header.Get("ETag") == "" ||
		!strings.Contains(page.Header.Get("Content-Security-Policy"), "default-src 'none'") {
		t.Fatalf("GET /: %s %v", page.Status, page.Header)
	}
	if again := get("/", "If-None-Match", page.Header.Get("ETag")); again.StatusCode != http.StatusNotModified {
		t.Fatalf("revalidating the page: %s", again.Status)
	}
	resp, err := http.Get(g.http + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	m := regexp.MustCompile(`src="(app\.js\?v=[0-9a-f]+)"`).FindSubmatch(body)
	if m == nil {
		t.Fatalf("the page links no versioned app.js:\n%s", body)
	}
	if js := get("/" + string(m[1])); js.StatusCode != http.StatusOK || !strings.Contains(js.Header.Get("Content-Type"), "javascript") ||
		!strings.Contains(js.Header.Get("Cache-Control"), "immutable") {
		t.Fatalf("GET %s: %s %v", m[1], js.Status, js.Header)
	}
	if js := get("/app.js"); js.Header.Get("Cache-Control") != "no-cache" {
		t.Fatalf("unversioned app.js cached: %v", js.Header)
	}
	if missing := get("/nope.js"); missing.StatusCode != http.StatusNotFound {
		t.Fatalf("GET /nope.js: %s", missing.Status)
	}
	for _, path := range []string{"/healthz", "/readyz"} { // for health checks that only reach this port
		if r := get(path); r.StatusCode != http.StatusOK {
			t.Errorf("GET %s on the page's port: %s", path, r.Status)
		}
	}
	// A plain GET of the websocket endpoint is not an upgrade.
	if ws := get("/ws"); ws.StatusCode != http.StatusBadRequest {
		t.Errorf("GET /ws without upgrade: %s", ws.Status)
	}
}

// Once a client's upgrade has succeeded it is in the broadcast: a message
// published right after reaches it. (The gateway joins it to the hub before
// writing the upgrade response.)
func TestNoMessageMissedRightAfterUpgrade(t *testing.T) {
	ns := testkit.StartNATS(t)
	g := startGateway(t, ns.ClientURL(), map[string]string{"LOG_LEVEL": "info"})
	alice := join(t, g, "alice")
	for i := range 200 {
		bob := testkit.Dial(t, g.ws+"?handle=bob")
		text := fmt.Sprintf("m%d", i)
		alice.Send(`{"type":"message","message":"` + text + `"}`)
		bob.ExpectMessage("alice", text, wait)
		bob.Conn.Close()
	}
}
