package gateway_test

import (
	"fmt"
	"testing"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/fly-chat/chat/internal/testkit"
	"github.com/fly-chat/chat/pkg/protocol"
)

// A message whose publish never comes back (here the gateway may publish on
// msg but not subscribe to it) is published again every second, and once
// DELIVERY_TIMEOUT has passed its sender is told, by its cid.
func TestUnconfirmedMessageIsRepublishedThenReported(t *testing.T) {
	ns := testkit.StartNATS(t, func(o *server.Options) {
		o.Users = []*server.User{{Username: "gw", Password: "pw", Permissions: &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: []string{">"}},
			Subscribe: &server.SubjectPermission{Allow: []string{">"}, Deny: []string{protocol.SubjectMsg}},
		}}}
	})
	url := fmt.Sprintf("nats://gw:pw@%s", ns.Addr())
	g := startGateway(t, url, map[string]string{"DELIVERY_TIMEOUT": "2500ms"})
	alice := join(t, g, "alice")
	alice.Send(`{"type":"message","message":"into the void","cid":"m1"}`)
	f := alice.ExpectError(protocol.CodeNotDelivered, wait)
	if f.CID != "m1" {
		t.Fatalf("error frame %+v names no cid m1", f)
	}
	if n := testkit.Value(testkit.Scrape(t, g.metrics), "chat_gateway_republished_messages_total"); n < 2 {
		t.Fatalf("republished %v times before giving up, want 2 (at 1s and 2s)", n)
	}
}
