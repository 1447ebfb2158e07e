package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/fly-chat/chat/internal/testkit"
	"github.com/fly-chat/chat/pkg/protocol"
	"github.com/fly-chat/chat/services/gateway"
)

// browserWait bounds each wait for the page to show something.
const browserWait = 10 * time.Second

// newBrowser starts headless Chromium (Debian's package: .ci/run installs
// it) and returns its context; it is closed when the test ends.
func newBrowser(t *testing.T) context.Context {
	t.Helper()
	path := os.Getenv("CHROME_PATH")
	if path == "" {
		var err error
		if path, err = exec.LookPath("chromium"); err != nil {
			t.Fatal("no chromium: install Debian's chromium package (.ci/run does) or set CHROME_PATH")
		}
	}
	alloc, cancel := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(path),
		chromedp.Headless,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1100, 720),
	)
	t.Cleanup(cancel)
	ctx, cancel := chromedp.NewContext(alloc)
	t.Cleanup(cancel)
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	return ctx
}

// tab is one browser session with its own storage (a separate browser
// context), recording every URL it requests.
type tab struct {
	t     *testing.T
	ctx   context.Context
	mu    sync.Mutex
	urls  []string
	close context.CancelFunc
}

func newTab(t *testing.T, browser context.Context) *tab {
	t.Helper()
	ctx, cancel := chromedp.NewContext(browser, chromedp.WithNewBrowserContext())
	tb := &tab{t: t, ctx: ctx, close: cancel}
	t.Cleanup(cancel)
	requests := chromedp.Events(ctx, network.RequestWillBeSent)
	sockets := chromedp.Events(ctx, network.WebSocketCreated)
	if err := chromedp.Do(ctx); err != nil {
		t.Fatal(err)
	}
	go func() {
		for ev, err := range requests {
			if err != nil {
				return
			}
			tb.mu.Lock()
			tb.urls = append(tb.urls, ev.Request.URL)
			tb.mu.Unlock()
		}
	}()
	go func() {
		for ev, err := range sockets {
			if err != nil {
				return
			}
			tb.mu.Lock()
			tb.urls = append(tb.urls, ev.URL)
			tb.mu.Unlock()
		}
	}()
	return tb
}

func (tb *tab) do(actions ...chromedp.Action[chromedp.Void]) {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, browserWait)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		tb.t.Fatalf("browser: %v", err)
	}
}

// waitFor polls a JavaScript condition on the page until it holds.
func (tb *tab) waitFor(what, expr string) {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, browserWait)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](expr, chromedp.WithPollingInterval(20*time.Millisecond))); err != nil {
		state, _ := chromedp.Run(tb.ctx, chromedp.Evaluate[string](`document.getElementById('conn').dataset.state + ' | ' +
			document.getElementById('send-error').textContent + ' | ' +
			[...document.querySelectorAll('#messages li')].map(li => li.className + ':' + li.textContent).join(' / ')`))
		tb.t.Fatalf("waiting for %s (%s): %v\npage: %s", what, expr, err, state)
	}
}

func eval[T any](tb *tab, expr string) T {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, browserWait)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		tb.t.Fatalf("evaluating %s: %v", expr, err)
	}
	return v
}

// join opens the page and joins with handle, the way a person does.
func (tb *tab) join(pageURL, handle string) {
	tb.t.Helper()
	tb.do(
		chromedp.Navigate(pageURL),
		chromedp.WaitVisible(chromedp.ID("handle")),
		chromedp.SendKeys(chromedp.ID("handle"), handle),
		chromedp.Click(chromedp.CSS("#join-form button")),
		chromedp.WaitVisible(chromedp.ID("m")),
	)
	tb.waitFor("connected", `document.getElementById('conn').dataset.state === 'connected'`)
}

func (tb *tab) say(text string) {
	tb.t.Helper()
	tb.do(chromedp.SendKeys(chromedp.ID("m"), text+kb.Enter))
}

func js(s string) string { b, _ := json.Marshal(s); return string(b) }

// sees waits for a confirmed message from name with text.
func (tb *tab) sees(name, text string) {
	tb.t.Helper()
	tb.waitFor(fmt.Sprintf("%s: %q", name, text), fmt.Sprintf(
		`[...document.querySelectorAll('#messages .message[data-id]')].some(li => li.dataset.name === %s && li.querySelector('.text').textContent === %s)`,
		js(name), js(text)))
}

// seesNotice waits for a join or leave line.
func (tb *tab) seesNotice(text string) {
	tb.t.Helper()
	tb.waitFor("notice "+text, fmt.Sprintf(`[...document.querySelectorAll('#messages .notice')].some(li => li.textContent === %s)`, js(text)))
}

// hasRoster waits until the roster lists exactly names, with that count.
func (tb *tab) hasRoster(names ...string) {
	tb.t.Helper()
	want, _ := json.Marshal(names)
	tb.waitFor(fmt.Sprintf("roster %v", names), fmt.Sprintf(
		`JSON.stringify([...document.querySelectorAll('#online li')].map(li => li.firstChild.textContent)) === %s && document.getElementById('count').textContent === %s`,
		js(string(want)), js(fmt.Sprint(len(names)))))
}

// foreign lists the requests this tab made outside origin.
func (tb *tab) foreign(origin string) []string {
	o, _ := url.Parse(origin)
	tb.mu.Lock()
	defer tb.mu.Unlock()
	var out []string
	for _, raw := range tb.urls {
		u, err := url.Parse(raw)
		if err != nil || u.Host != o.Host || (u.Scheme != "http" && u.Scheme != "ws") {
			if !strings.HasPrefix(raw, "data:") {
				out = append(out, raw)
			}
		}
	}
	return out
}

func (tb *tab) screenshot(name string) string {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, browserWait)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		tb.t.Fatal(err)
	}
	dir := filepath.Join("testdata", "screenshots")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tb.t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		tb.t.Fatal(err)
	}
	abs, _ := filepath.Abs(path)
	return abs
}

// startPageGateway runs a gateway for the browser tests and returns its page
// URL, on a port it can be restarted on.
func startPageGateway(t *testing.T, natsURL, port string) (*testkit.Program, string) {
	t.Helper()
	p := testkit.Start(t, gateway.Run, map[string]string{
		"HOST": "127.0.0.1", "PORT": port, "METRICS_ADDR": "127.0.0.1:0", "NATS_URL": natsURL,
		"HEARTBEAT_INTERVAL": heartbeat.String(),
	}, "gateway listening")
	return p, "http://" + p.Attrs["addr"] + "/"
}

// Two people chat in two browsers; a third joins and leaves; a message that
// looks like HTML stays text; nothing is fetched from elsewhere. The test
// leaves screenshots of the conversation in tests/testdata/screenshots.
func TestBrowserConversation(t *testing.T) {
	ns := testkit.StartNATS(t)
	startPresence(t, ns.ClientURL())
	_, page := startPageGateway(t, ns.ClientURL(), "0")
	browser := newBrowser(t)

	alice, bob := newTab(t, browser), newTab(t, browser)
	alice.join(page, "alice")
	bob.join(page, "bob")
	alice.hasRoster("alice", "bob")
	bob.hasRoster("alice", "bob")

	alice.say("hi bob, ready for the review?")
	bob.sees("alice", "hi bob, ready for the review?")
	alice.sees("alice", "hi bob, ready for the review?")
	if own := eval[bool](alice, `document.querySelector('#messages .message[data-id]').classList.contains('own')`); !own {
		t.Error("alice's own message is not styled as hers")
	}
	bob.say("yes! give me two minutes ☕")
	alice.sees("bob", "yes! give me two minutes ☕")

	carol := newTab(t, browser)
	carol.join(page, "carol")
	for _, tb := range []*tab{alice, bob} {
		tb.seesNotice("carol joined")
		tb.hasRoster("alice", "bob", "carol")
	}
	carol.say("morning all")
	alice.sees("carol", "morning all")
	carol.close() // her only tab: she leaves after the grace period
	for _, tb := range []*tab{alice, bob} {
		tb.seesNotice("carol left")
		tb.hasRoster("alice", "bob")
	}

	xss := `<img src=x onerror="window.__pwned=1">`
	bob.say(xss)
	alice.sees("bob", xss)
	bob.sees("bob", xss)
	for _, tb := range []*tab{alice, bob} {
		if pwned := eval[bool](tb, `window.__pwned !== undefined || document.querySelector('#messages img') !== null`); pwned {
			t.Error("a message became HTML")
		}
	}
	long := strings.Repeat("supercalifragilistic", 12)
	alice.say(long)
	bob.sees("alice", long)
	if overflow := eval[bool](bob, `document.getElementById('messages').scrollWidth > document.getElementById('messages').clientWidth`); overflow {
		t.Error("a long word overflows the message list")
	}

	// A message over the gateway's limit: the page says so in words and
	// reconnects by itself.
	alice.do(chromedp.Evaluate[chromedp.Void](`document.getElementById('m').value = 'x'.repeat(70000); document.getElementById('send-form').requestSubmit()`))
	alice.waitFor("the too-large message explained", `/too large/.test(document.getElementById('send-error').textContent)`)
	alice.waitFor("connected again", `document.getElementById('conn').dataset.state === 'connected'`)
	alice.say("sorry, shorter now")
	bob.sees("alice", "sorry, shorter now")

	t.Logf("screenshot of the conversation: %s", alice.screenshot("conversation.png"))
	bob.do(chromedp.EmulateViewport(390, 760))
	bob.waitFor("phone layout", `document.querySelector('.roster').getBoundingClientRect().width > 300`)
	t.Logf("screenshot at phone width: %s", bob.screenshot("conversation-phone.png"))

	for _, tb := range []*tab{alice, bob} {
		if out := tb.foreign(page); len(out) > 0 {
			t.Errorf("requests outside the page's origin: %v", out)
		}
	}
}

// The gateway goes away and comes back: the page says it is reconnecting,
// recovers by itself, and the chat works again without a reload. The handle
// is remembered across a reload too.
func TestBrowserReconnects(t *testing.T) {
	ns := testkit.StartNATS(t)
	startPresence(t, ns.ClientURL())
	gw, page := startPageGateway(t, ns.ClientURL(), "0")
	_, port, _ := net.SplitHostPort(gw.Attrs["addr"])
	browser := newBrowser(t)
	alice, bob := newTab(t, browser), newTab(t, browser)
	alice.join(page, "alice")
	bob.join(page, "bob")
	alice.say("before")
	bob.sees("alice", "before")

	if err := gw.Stop(); err != nil {
		t.Fatal(err)
	}
	for _, tb := range []*tab{alice, bob} {
		tb.waitFor("reconnecting", `document.getElementById('conn').dataset.state === 'reconnecting' && /Reconnecting/.test(document.getElementById('conn').textContent)`)
	}
	alice.say("anyone there?")
	alice.waitFor("sending refused in words", `/Not connected/.test(document.getElementById('send-error').textContent)`)
	if kept := eval[string](alice, `document.getElementById('m').value`); kept != "anyone there?" {
		t.Errorf("the unsent message was not kept for another try: %q", kept)
	}
	alice.do(chromedp.Evaluate[chromedp.Void](`document.getElementById('m').value = ''`))
	startPageGateway(t, ns.ClientURL(), port)
	for _, tb := range []*tab{alice, bob} {
		tb.waitFor("connected again", `document.getElementById('conn').dataset.state === 'connected'`)
		tb.hasRoster("alice", "bob")
	}
	alice.say("after")
	bob.sees("alice", "after")
	if reloads := eval[int](alice, `performance.getEntriesByType('navigation').length`); reloads != 1 {
		t.Errorf("the page was loaded %d times", reloads)
	}

	// A reload keeps the handle: the page joins again by itself.
	alice.do(chromedp.Reload())
	alice.waitFor("rejoined after reload", `document.getElementById('conn').dataset.state === 'connected' && document.getElementById('me').textContent === 'as alice'`)
	alice.say("reloaded")
	bob.sees("alice", "reloaded")

	for _, tb := range []*tab{alice, bob} {
		if out := tb.foreign(page); len(out) > 0 {
			t.Errorf("requests outside the page's origin: %v", out)
		}
	}
}

// The page refuses exactly the handles the server refuses, and normalises
// the rest exactly as the server does: the same rules in both places.
func TestHandleRulesSameInPageAndServer(t *testing.T) {
	ns := testkit.StartNATS(t)
	_, page := startPageGateway(t, ns.ClientURL(), "0")
	browser := newBrowser(t)
	tb := newTab(t, browser)
	tb.do(chromedp.Navigate(page), chromedp.WaitVisible(chromedp.ID("handle")))

	cases := []string{"alice", "  bob ", "e\u0301mile", "Zoë", "李小龙", "😀", "alice smith", "a\u00a0b", "\u3164",
		"ali\u200bce", "\ufe0fx", "\u202eabc", "\u0301abc", "error", "ERROR", "Online", "ſerver", "\u212Aelvin",
		strings.Repeat("a", 32), strings.Repeat("a", 33), strings.Repeat("é", 32), strings.Repeat("e\u0301", 33),
		"", " ", "\t", "a\tb", "a\u0085", "\u0085a\u0085", "\ufeffa", "a\u2028b", "\U000e0041", "\ue000"}
	// And one string around every 97th code point of the first three planes.
	for r := rune(0); r < 0x30000; r += 97 {
		if r >= 0xd800 && r < 0xe000 {
			continue // not encodable as a Go string
		}
		cases = append(cases, string(r), "x"+string(r)+"y")
	}
	in, _ := json.Marshal(cases)
	type result struct {
		Handle string `json:"handle"`
		Error  string `json:"error"`
	}
	got := eval[[]result](tb, `(`+string(in)+`).map(s => window.chatHandleRules.normalizeHandle(s))`)
	if len(got) != len(cases) {
		t.Fatalf("%d results for %d cases", len(got), len(cases))
	}
	mismatches := 0
	for i, s := range cases {
		want, err := protocol.NormalizeHandle(s)
		if (err == nil) != (got[i].Error == "") || want != got[i].Handle {
			mismatches++
			if mismatches <= 20 {
				t.Errorf("%q (%U): server %q %v; page %q %q", s, []rune(s), want, err, got[i].Handle, got[i].Error)
			}
		}
	}
	t.Logf("%d handles compared, %d mismatches", len(cases), mismatches)
}
