package presence_test

import (
	"bufio"
	"encoding/json"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/fly-chat/chat/internal/testkit"
	"github.com/fly-chat/chat/pkg/protocol"
	"github.com/fly-chat/chat/services/gateway"
	"github.com/fly-chat/chat/services/presence"
)

const (
	wait      = 5 * time.Second
	grace     = 500 * time.Millisecond // LEAVE_GRACE in these tests
	heartbeat = 200 * time.Millisecond // HEARTBEAT_INTERVAL in these tests
)

// startPresence runs the presence program and waits until it is past its
// warm-up.
func startPresence(t *testing.T, natsURL string) *testkit.Program {
	t.Helper()
	p := testkit.Start(t, presence.Run, map[string]string{
		"METRICS_ADDR": "127.0.0.1:0", "NATS_URL": natsURL, "LOG_LEVEL": "debug",
		"LEAVE_GRACE": grace.String(), "WARMUP": (2 * heartbeat).String(),
	}, "presence listening")
	waitReady(t, "http://"+p.Attrs["ops_addr"]+"/readyz")
	return p
}

func waitReady(t *testing.T, url string) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never ready", url)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// startGateway runs a gateway program in-process; it returns the websocket
// URL prefix, to which a handle is appended.
func startGateway(t *testing.T, natsURL string, env ...map[string]string) (*testkit.Program, string) {
	t.Helper()
	e := map[string]string{
		"HOST": "127.0.0.1", "PORT": "0", "METRICS_ADDR": "127.0.0.1:0", "NATS_URL": natsURL,
		"HEARTBEAT_INTERVAL": heartbeat.String(), "LOG_LEVEL": "debug",
	}
	for _, o := range env {
		maps.Copy(e, o)
	}
	p := testkit.Start(t, gateway.Run, e, "gateway listening")
	return p, "ws://" + p.Attrs["addr"] + "/ws?handle="
}

// user is a connected client that knows the newest v it has seen.
type user struct {
	*testkit.Client
	t *testing.T
	v uint64
}

// connect dials url+handle and waits for the roster that follows binding.
func connect(t *testing.T, url, handle string) (*user, protocol.ServerFrame) {
	t.Helper()
	u := &user{Client: testkit.Dial(t, url+handle), t: t}
	r := u.Expect("roster", wait, isType(protocol.TypePresence))
	u.v = r.V
	return u, r
}

// notice returns the next join or leave this user receives that is newer
// than what it has: as the protocol tells clients, notices already covered
// by the roster (v not larger) are skipped.
func (u *user) notice() protocol.ServerFrame {
	u.t.Helper()
	f := u.Expect("a notice", wait, func(f protocol.ServerFrame) bool {
		return (f.Type == protocol.TypeJoin || f.Type == protocol.TypeLeave) && f.V > u.v
	})
	u.v = f.V
	return f
}

// expectNext checks that the next notice is exactly this one, numbered one
// past the last this user saw: so nothing was announced in between.
func (u *user) expectNext(typ, name, reason string) protocol.ServerFrame {
	u.t.Helper()
	want := u.v + 1
	f := u.notice()
	if f.Type != typ || f.Name != name || f.Reason != reason || f.V != want {
		u.t.Fatalf("next notice %s %s %q v%d, want %s %s %q v%d", f.Type, f.Name, f.Reason, f.V, typ, name, reason, want)
	}
	return f
}

// who asks for the roster and returns it.
func (u *user) who() protocol.ServerFrame {
	u.t.Helper()
	u.Send(`{"type":"who"}`)
	return u.Expect("roster", wait, isType(protocol.TypePresence))
}

func isType(typ string) func(protocol.ServerFrame) bool {
	return func(f protocol.ServerFrame) bool { return f.Type == typ }
}

func TestJoinReachesOtherGatewaysAtOnce(t *testing.T) {
	ns := testkit.StartNATS(t)
	startPresence(t, ns.ClientURL())
	_, a := startGateway(t, ns.ClientURL())
	_, b := startGateway(t, ns.ClientURL())
	bob, r := connect(t, b, "bob")
	if !slices.Equal(r.Handles, []string{"bob"}) {
		t.Fatalf("bob's roster %v", r.Handles)
	}

	start := time.Now()
	alice, r := connect(t, a, "alice")
	f := bob.expectNext(protocol.TypeJoin, "alice", "")
	if d := time.Since(start); d > 250*time.Millisecond {
		t.Fatalf("bob saw alice join %v after she connected", d)
	}
	if f.Message != "joined" || f.TS == 0 {
		t.Fatalf("join frame %+v", f)
	}
	// Her own connect is counted before her roster is answered.
	if !slices.Equal(r.Handles, []string{"alice", "bob"}) || r.V != f.V || r.Message != "alice, bob" {
		t.Fatalf("alice's roster %+v, want alice and bob at v%d", r, f.V)
	}
	if w := alice.who(); !slices.Equal(w.Handles, r.Handles) || w.V != r.V {
		t.Fatalf("who: %+v", w)
	}
}

func TestTabsCountOnceAndTheLastLeavesAfterGrace(t *testing.T) {
	ns := testkit.StartNATS(t)
	startPresence(t, ns.ClientURL())
	_, a := startGateway(t, ns.ClientURL())
	_, b := startGateway(t, ns.ClientURL())
	bob, _ := connect(t, b, "bob")
	tab1, _ := connect(t, a, "alice")
	bob.expectNext(protocol.TypeJoin, "alice", "")

	// A second tab, on the other gateway: its roster is answered after its
	// connect is counted, and shows no new notice.
	tab2, r := connect(t, b, "alice")
	if r.V != bob.v || !slices.Contains(r.Handles, "alice") {
		t.Fatalf("second tab's roster %+v; bob is at v%d", r, bob.v)
	}

	// Closing one tab announces nothing, even after the grace period.
	tab1.Conn.Close()
	time.Sleep(grace + 300*time.Millisecond) // a wrong leave would come at grace
	connect(t, a, "carol")
	bob.expectNext(protocol.TypeJoin, "carol", "")

	// Closing the last one does, after the grace period and not before.
	closed := time.Now()
	tab2.Conn.Close()
	bob.expectNext(protocol.TypeLeave, "alice", protocol.ReasonClosed)
	if d := time.Since(closed); d < grace || d > grace+time.Second {
		t.Fatalf("leave %v after the last tab closed; grace is %v", d, grace)
	}
}

func TestRefreshWithinGraceIsSilent(t *testing.T) {
	ns := testkit.StartNATS(t)
	startPresence(t, ns.ClientURL())
	_, a := startGateway(t, ns.ClientURL())
	_, b := startGateway(t, ns.ClientURL())
	bob, _ := connect(t, b, "bob")
	alice, _ := connect(t, a, "alice")
	bob.expectNext(protocol.TypeJoin, "alice", "")

	alice.Conn.Close()
	connect(t, b, "alice") // the refreshed page lands on the other gateway
	time.Sleep(grace + 300*time.Millisecond)
	connect(t, a, "carol")
	bob.expectNext(protocol.TypeJoin, "carol", "")
}

// A gateway killed without a goodbye: its heartbeats stop, and its users
// with no session elsewhere leave as gateway-lost within three intervals
// and a second.
func TestKilledGatewaysUsersLeave(t *testing.T) {
	ns := testkit.StartNATS(t)
	startPresence(t, ns.ClientURL())
	killA, a := startGatewayProcess(t, ns.ClientURL())
	_, b := startGateway(t, ns.ClientURL())
	bob, _ := connect(t, b, "bob")
	connect(t, a, "alice")
	bob.expectNext(protocol.TypeJoin, "alice", "")
	connect(t, a, "carol")
	bob.expectNext(protocol.TypeJoin, "carol", "")
	connect(t, b, "carol") // carol is on both

	killed := time.Now()
	killA()
	bob.expectNext(protocol.TypeLeave, "alice", protocol.ReasonGatewayLost)
	if d := time.Since(killed); d > 3*heartbeat+time.Second {
		t.Fatalf("alice left %v after her gateway died", d)
	}
	// carol stays: the next notice after alice's leave is dave's join.
	connect(t, b, "dave")
	bob.expectNext(protocol.TypeJoin, "dave", "")
}

// A gateway that drains says goodbye: its users leave with reason shutdown
// after the grace period, unless they reconnect elsewhere in time.
func TestDrainedGatewaysUsersLeaveWithShutdown(t *testing.T) {
	ns := testkit.StartNATS(t)
	startPresence(t, ns.ClientURL())
	pa, a := startGateway(t, ns.ClientURL())
	_, b := startGateway(t, ns.ClientURL())
	bob, _ := connect(t, b, "bob")
	connect(t, a, "alice")
	bob.expectNext(protocol.TypeJoin, "alice", "")
	connect(t, a, "carol")
	bob.expectNext(protocol.TypeJoin, "carol", "")

	stopped := make(chan error, 1)
	go func() { stopped <- pa.Stop() }()
	connect(t, b, "carol") // carol reconnects elsewhere within the grace period
	bob.expectNext(protocol.TypeLeave, "alice", protocol.ReasonShutdown)
	connect(t, b, "dave")
	bob.expectNext(protocol.TypeJoin, "dave", "")
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
}

// Presence restarted while everyone stays connected: not a word, the same
// roster afterwards, and v carries on from where it was.
func TestPresenceRestartIsSilent(t *testing.T) {
	ns := testkit.StartNATS(t)
	p1 := startPresence(t, ns.ClientURL())
	_, a := startGateway(t, ns.ClientURL())
	_, b := startGateway(t, ns.ClientURL())
	bob, _ := connect(t, b, "bob")
	connect(t, a, "alice")
	bob.expectNext(protocol.TypeJoin, "alice", "")
	connect(t, a, "carol")
	bob.expectNext(protocol.TypeJoin, "carol", "")
	connect(t, b, "carol")
	before := bob.who()

	if err := p1.Stop(); err != nil {
		t.Fatal(err)
	}
	startPresence(t, ns.ClientURL())
	after := bob.who()
	if !slices.Equal(after.Handles, before.Handles) || after.V < before.V {
		t.Fatalf("roster before %v v%d, after %v v%d", before.Handles, before.V, after.Handles, after.V)
	}
	connect(t, a, "dave")
	bob.expectNext(protocol.TypeJoin, "dave", "") // v continues: nothing was announced in between
}

// "Who is online" is a NATS micro service: $SRV.PING, $SRV.INFO and the
// endpoint answer.
func TestMicroService(t *testing.T) {
	ns := testkit.StartNATS(t)
	startPresence(t, ns.ClientURL())
	_, a := startGateway(t, ns.ClientURL())
	connect(t, a, "alice")
	nc := testkit.ConnectNATS(t, ns)

	var ping struct {
		Name string `json:"name"`
		Type string `json:"type"`
	}
	msg, err := nc.Request("$SRV.PING.presence", nil, wait)
	if err != nil || json.Unmarshal(msg.Data, &ping) != nil || ping.Name != "presence" {
		t.Fatalf("$SRV.PING.presence: %v %s", err, msgData(msg))
	}
	var info struct {
		Endpoints []struct {
			Subject string `json:"subject"`
		} `json:"endpoints"`
	}
	msg, err = nc.Request("$SRV.INFO.presence", nil, wait)
	if err != nil || json.Unmarshal(msg.Data, &info) != nil || len(info.Endpoints) != 1 || info.Endpoints[0].Subject != protocol.SubjectOnline {
		t.Fatalf("$SRV.INFO.presence: %v %s", err, msgData(msg))
	}
	var r protocol.Roster
	msg, err = nc.Request(protocol.SubjectOnline, []byte("{}"), wait)
	if err != nil || json.Unmarshal(msg.Data, &r) != nil || !slices.Equal(r.Handles, []string{"alice"}) || r.V != 1 {
		t.Fatalf("%s: %v %s", protocol.SubjectOnline, err, msgData(msg))
	}
}

func msgData(m *nats.Msg) string {
	if m == nil {
		return ""
	}
	return string(m.Data)
}

var (
	buildOnce  sync.Once
	gatewayBin string
	buildErr   error
)

// startGatewayProcess runs the real gateway binary, so it can be killed
// without a goodbye. It returns the kill function and the websocket URL
// prefix.
func startGatewayProcess(t *testing.T, natsURL string) (kill func(), url string) {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "gateway-bin")
		if err != nil {
			buildErr = err
			return
		}
		gatewayBin = filepath.Join(dir, "gateway")
		out, err := exec.Command("go", "build", "-o", gatewayBin, "github.com/fly-chat/chat/services/gateway/cmd/gateway").CombinedOutput()
		if err != nil {
			buildErr = err
			t.Logf("%s", out)
		}
	})
	if buildErr != nil {
		t.Fatalf("building the gateway: %v", buildErr)
	}
	cmd := exec.Command(gatewayBin)
	cmd.Env = []string{"HOST=127.0.0.1", "PORT=0", "METRICS_ADDR=127.0.0.1:0", "NATS_URL=" + natsURL, "HEARTBEAT_INTERVAL=" + heartbeat.String()}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	addr := make(chan string, 1)
	go func() {
		re := regexp.MustCompile(`msg="gateway listening" addr=(\S+)`)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				addr <- m[1]
			}
		}
	}()
	select {
	case a := <-addr:
		return func() { cmd.Process.Signal(syscall.SIGKILL) }, "ws://" + a + "/ws?handle="
	case <-time.After(wait):
		t.Fatal("gateway process did not start")
	}
	return nil, ""
}

// Every setting the presence service reads is documented in the README.
func TestREADMEListsEverySetting(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	section := string(readme)[strings.Index(string(readme), "### Presence"):]
	for _, s := range presence.Settings() {
		if !strings.Contains(section, "`"+s.Env+"`") {
			t.Errorf("README's presence section does not list %s", s.Env)
		}
	}
}
