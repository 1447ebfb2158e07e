package tests

import (
	"encoding/json"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/fly-chat/chat/internal/testkit"
	"github.com/fly-chat/chat/pkg/protocol"
)

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
	pa := startGatewayProcess(t, ns.ClientURL())
	a := pa.url
	_, b := startGateway(t, ns.ClientURL())
	bob, _ := connect(t, b, "bob")
	connect(t, a, "alice")
	bob.expectNext(protocol.TypeJoin, "alice", "")
	connect(t, a, "carol")
	bob.expectNext(protocol.TypeJoin, "carol", "")
	connect(t, b, "carol") // carol is on both

	killed := time.Now()
	pa.cmd.Process.Signal(syscall.SIGKILL)
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
