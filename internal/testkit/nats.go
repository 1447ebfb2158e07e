package testkit

import (
	"fmt"
	"net"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// StartNATS starts an embedded NATS server on a random loopback port and
// stops it when the test ends. Pass opts to change anything but the address.
func StartNATS(t testing.TB, opts ...func(*server.Options)) *server.Server {
	t.Helper()
	o := &server.Options{Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true, MaxPayload: 1 << 20}
	for _, f := range opts {
		f(o)
	}
	s, err := server.NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready")
	}
	t.Cleanup(s.Shutdown)
	return s
}

// ConnectNATS connects a plain client to s, closed when the test ends.
func ConnectNATS(t testing.TB, s *server.Server) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// StartCluster starts one embedded NATS node per host, all on clientPort
// (-1 for random ports), meshed into one cluster, and waits until every node
// routes to every other. Each node advertises its own host, so the mesh
// forms over the addresses given.
func StartCluster(t testing.TB, hosts []string, clientPort int) []*server.Server {
	t.Helper()
	var nodes []*server.Server
	var routes []*url.URL
	for i, h := range hosts {
		n := StartNATS(t, func(o *server.Options) {
			o.Host, o.Port = h, clientPort
			o.ServerName = fmt.Sprintf("n%d", i+1)
			o.Cluster = server.ClusterOpts{Name: "test", Host: h, Port: -1}
			o.Routes = routes
		})
		addr := n.ClusterAddr()
		routes = append(routes, &url.URL{Scheme: "nats", Host: net.JoinHostPort(h, strconv.Itoa(addr.Port))})
		nodes = append(nodes, n)
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, n := range nodes {
		for n.NumRoutes() < len(nodes)-1 {
			if time.Now().After(deadline) {
				t.Fatalf("cluster did not form: %s has %d routes", n.Name(), n.NumRoutes())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return nodes
}

// ConnectedTo returns the node of nodes that holds a client connection
// named name, or nil.
func ConnectedTo(t testing.TB, nodes []*server.Server, name string) *server.Server {
	t.Helper()
	for _, n := range nodes {
		if !n.Running() {
			continue
		}
		cz, err := n.Connz(&server.ConnzOptions{})
		if err != nil {
			continue
		}
		for _, c := range cz.Conns {
			if c.Name == name {
				return n
			}
		}
	}
	return nil
}
