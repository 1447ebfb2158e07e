package tests

import (
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/fly-chat/chat/internal/testkit"
	"github.com/fly-chat/chat/pkg/protocol"
)

// The whole chat runs on a NATS server configured with exactly the
// permissions the repository documents (deploy/nats/permissions.conf),
// each service with its own user: everything works, nothing either service
// does is refused, and the gateway's user cannot publish presence.events.
func TestLeastPermissions(t *testing.T) {
	t.Setenv("GATEWAY_NATS_PASSWORD", "gw-secret")
	t.Setenv("PRESENCE_NATS_PASSWORD", "pr-secret")
	conf, err := server.ProcessConfigFile(filepath.Join(root, "deploy", "nats", "permissions.conf"))
	if err != nil {
		t.Fatal(err)
	}
	ns := testkit.StartNATS(t, func(o *server.Options) {
		o.Users = conf.Users
		if len(o.Users) != 2 {
			t.Fatalf("permissions.conf defines %d users, want gateway and presence", len(o.Users))
		}
	})
	as := func(user, password string) map[string]string {
		return map[string]string{"NATS_USER": user, "NATS_PASSWORD": password}
	}
	pp := startPresence(t, ns.ClientURL(), as("presence", "pr-secret"))
	ga, a := startGateway(t, ns.ClientURL(), as("gateway", "gw-secret"))
	_, b := startGateway(t, ns.ClientURL(), as("gateway", "gw-secret"))

	// Chat, presence, rosters, syncs and $SRV all work under these
	// permissions.
	bob, _ := connect(t, b, "bob")
	alice, r := connect(t, a, "alice")
	bob.expectNext(protocol.TypeJoin, "alice", "")
	if len(r.Handles) != 2 {
		t.Fatalf("alice's roster %v", r.Handles)
	}
	alice.Send(`{"type":"message","message":"under least privilege"}`)
	bob.ExpectMessage("alice", "under least privilege", wait)
	if w := bob.who(); len(w.Handles) != 2 {
		t.Fatalf("who: %v", w.Handles)
	}

	// The gateway's credentials cannot announce a join.
	denied := make(chan error, 1)
	forger, err := nats.Connect(ns.ClientURL(), nats.UserInfo("gateway", "gw-secret"),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { denied <- err }))
	if err != nil {
		t.Fatal(err)
	}
	defer forger.Close()
	forger.Publish(protocol.SubjectEvents, []byte(`{"type":"join","name":"ghost","message":"joined","v":99,"ts":1}`))
	forger.Flush()
	select {
	case err := <-denied:
		if !errors.Is(err, nats.ErrPermissionViolation) {
			t.Fatalf("publishing presence.events as the gateway: %v, want a permission violation", err)
		}
	case <-time.After(wait):
		t.Fatal("the gateway's user published presence.events without a permission error")
	}

	// Nothing the services did was refused.
	for name, url := range map[string]string{"gateway": "http://" + ga.Attrs["ops_addr"], "presence": "http://" + pp.Attrs["ops_addr"]} {
		if v := testkit.Value(testkit.Scrape(t, url+"/metrics"), fmt.Sprintf("chat_%s_nats_permission_errors_total", name)); v != 0 {
			t.Errorf("%s was refused %v times", name, v)
		}
	}
	// And the forged join never reached anyone: bob's next notice is carol's.
	connect(t, a, "carol")
	bob.expectNext(protocol.TypeJoin, "carol", "")
}
