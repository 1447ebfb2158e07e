package protocol

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

func TestNoticeAppendJSON(t *testing.T) {
	join := string(Notice{Type: TypeJoin, Name: "bob", V: 12, TS: 5}.AppendJSON(nil))
	if want := `{"type":"join","name":"bob","message":"joined","v":12,"ts":5}`; join != want {
		t.Errorf("join: %s, want %s", join, want)
	}
	leave := string(Notice{Type: TypeLeave, Name: "bob", Reason: ReasonClosed, V: 13, TS: 6}.AppendJSON(nil))
	if want := `{"type":"leave","name":"bob","message":"left","reason":"closed","v":13,"ts":6}`; leave != want {
		t.Errorf("leave: %s, want %s", leave, want)
	}
}

func TestRosterAppendClientJSON(t *testing.T) {
	got := string(Roster{Handles: []string{"alice", "bob"}, Count: 2, V: 7}.AppendClientJSON(nil))
	if want := `{"type":"presence","name":"online","message":"alice, bob","handles":["alice","bob"],"count":2,"v":7}`; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
	empty, _ := DecodeServer(Roster{V: 1}.AppendClientJSON(nil))
	if empty.Message != "nobody" || len(empty.Handles) != 0 {
		t.Errorf("empty roster: %+v", empty)
	}
	var many []string
	for i := range 60 {
		many = append(many, fmt.Sprintf("u%d", i))
	}
	f, err := DecodeServer(Roster{Handles: many, Count: 1000, V: 2}.AppendClientJSON(nil))
	if err != nil || len(f.Handles) != 60 || f.Count != 1000 || !strings.HasSuffix(f.Message, "u49 and 950 more") {
		t.Errorf("long roster: %v %q", err, f.Message)
	}
}

// The digest of a map does not depend on the order of updates that built it.
func TestDigestIsOrderIndependent(t *testing.T) {
	var a, b Digest
	a.Update("alice", 0, 1)
	a.Update("bob", 0, 2)
	a.Update("alice", 1, 3)
	b.Update("bob", 0, 1)
	b.Update("alice", 0, 3)
	b.Update("bob", 1, 2)
	if a != b {
		t.Fatalf("%s != %s", a, b)
	}
	b.Update("carol", 0, 1)
	b.Update("carol", 1, 0)
	if a != b {
		t.Fatal("adding and removing carol changed the digest")
	}
	b.Update("alice", 3, 2)
	if a == b {
		t.Fatal("a changed count left the digest equal")
	}
}

func TestValidID(t *testing.T) {
	for _, ok := range []string{"e784e903a55e18", "gw-1", "A_b"} {
		if !ValidID(ok) {
			t.Errorf("%q rejected", ok)
		}
	}
	for _, bad := range []string{"", "a.b", "a*", ">", "a b", strings.Repeat("x", 65)} {
		if ValidID(bad) {
			t.Errorf("%q accepted", bad)
		}
	}
}

// The heartbeat's size does not grow with the handles a gateway holds.
func TestHeartbeatSizeIsConstant(t *testing.T) {
	small, _ := json.Marshal(Heartbeat{Gateway: "e784e903a55e18", Instance: "x", IntervalMS: 2000, Seq: 1, Digest: Digest(1).String(), Handles: 1, Sessions: 1})
	big, _ := json.Marshal(Heartbeat{Gateway: "e784e903a55e18", Instance: "x", IntervalMS: 2000, Seq: 1 << 40, Digest: Digest(1<<63 + 12345).String(), Handles: 1 << 30, Sessions: 1 << 31, V: 1 << 40})
	if len(big) > 300 || len(big)-len(small) > 60 {
		t.Fatalf("heartbeat of %d bytes for a billion handles, %d for one", len(big), len(small))
	}
}
