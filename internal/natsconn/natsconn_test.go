package natsconn

import (
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/nats-io/nats.go"

	"github.com/fly-chat/chat/internal/testkit"
)

// fakeDNS is a DNS server on loopback answering A queries from a table the
// test can change; every other name is NXDOMAIN.
type fakeDNS struct {
	Addr string
	mu   sync.Mutex
	a    map[string][]string // fully qualified name → IPv4 addresses
}

func startDNS(t *testing.T, records map[string][]string) *fakeDNS {
	t.Helper()
	f := &fakeDNS{a: map[string][]string{}}
	f.set(records)
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(f.serve)}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	f.Addr = pc.LocalAddr().String()
	return f
}

func (f *fakeDNS) set(records map[string][]string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	clear(f.a)
	for name, ips := range records {
		f.a[dns.Fqdn(name)] = ips
	}
}

func (f *fakeDNS) serve(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	f.mu.Lock()
	ips, ok := f.a[strings.ToLower(req.Question[0].Name)]
	f.mu.Unlock()
	switch {
	case !ok:
		m.Rcode = dns.RcodeNameError
	case req.Question[0].Qtype == dns.TypeA:
		for _, ip := range ips {
			m.Answer = append(m.Answer, &dns.A{
				Hdr: dns.RR_Header{Name: req.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 1},
				A:   net.ParseIP(ip),
			})
		}
	}
	w.WriteMsg(m)
}

var nodeIPs = []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"}

func connectN(t *testing.T, n int, c Config) []*nats.Conn {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	var conns []*nats.Conn
	for range n {
		nc, err := Connect(c, "test", "_INBOX_test", log, Hooks{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		conns = append(conns, nc)
	}
	return conns
}

func hostsOf(conns []*nats.Conn) map[string]int {
	hosts := map[string]int{}
	for _, nc := range conns {
		if a, ok := nc.ConnectedAddr(), nc.IsConnected(); ok {
			host, _, _ := net.SplitHostPort(a)
			hosts[host]++
		}
	}
	return hosts
}

// waitAll waits until every connection is connected to one of hosts.
func waitAll(t *testing.T, conns []*nats.Conn, hosts ...string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		ok := 0
		for _, nc := range conns {
			h, _, _ := net.SplitHostPort(nc.ConnectedAddr())
			if nc.IsConnected() && slices.Contains(hosts, h) {
				ok++
			}
		}
		if ok == len(conns) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d connections on %v: %v", ok, len(conns), hosts, hostsOf(conns))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// NATSAPPHOST names an app whose .internal name resolves to three nodes of
// one cluster: connections spread over them instead of all taking the first,
// and the cluster behind them is one.
func TestConnectionsSpreadOverTheAppsNodes(t *testing.T) {
	testkit.StartCluster(t, nodeIPs, 4222)
	d := startDNS(t, map[string][]string{"nats.internal": nodeIPs})
	conns := connectN(t, 30, Config{AppHost: "nats", DNSServer: d.Addr})
	waitAll(t, conns, nodeIPs...)
	hosts := hostsOf(conns)
	t.Logf("30 connections over nodes: %v", hosts)
	if len(hosts) < 2 {
		t.Fatalf("all connections on %v", hosts)
	}
	// They are one cluster: a message sent through one node reaches a
	// subscriber on another (once the route has the interest).
	from, to := conns[0], conns[0]
	for _, nc := range conns {
		if nc.ConnectedAddr() != from.ConnectedAddr() {
			to = nc
		}
	}
	sub, err := to.SubscribeSync("hello")
	if err != nil {
		t.Fatal(err)
	}
	to.Flush()
	deadline := time.Now().Add(5 * time.Second)
	for {
		from.Publish("hello", []byte("x"))
		if _, err := sub.NextMsg(50 * time.Millisecond); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing from %s reached %s", from.ConnectedAddr(), to.ConnectedAddr())
		}
	}
}

// With FLY_REGION set, the region's nodes are preferred; when they are
// down, the rest of the app takes over.
func TestRegionNodesFirstThenTheRest(t *testing.T) {
	nodes := testkit.StartCluster(t, nodeIPs, 4222)
	d := startDNS(t, map[string][]string{"nats.internal": nodeIPs, "fra.nats.internal": {"127.0.0.3"}})
	conns := connectN(t, 10, Config{AppHost: "nats", DNSServer: d.Addr, Region: "fra"})
	waitAll(t, conns, "127.0.0.3")

	nodes[1].Shutdown() // 127.0.0.3
	waitAll(t, conns, "127.0.0.2", "127.0.0.4")

	// A region with no nodes of its own uses the whole app.
	others := connectN(t, 10, Config{AppHost: "nats", DNSServer: d.Addr, Region: "syd"})
	waitAll(t, others, "127.0.0.2", "127.0.0.4")
}

// The name is resolved again on every reconnect: a node that joined the
// app after the connection was made is where it goes when its node dies.
func TestNameResolvedAgainOnReconnect(t *testing.T) {
	nodes := testkit.StartCluster(t, nodeIPs, 4222)
	d := startDNS(t, map[string][]string{"nats.internal": {"127.0.0.2"}})
	conns := connectN(t, 5, Config{AppHost: "nats", DNSServer: d.Addr})
	waitAll(t, conns, "127.0.0.2")

	d.set(map[string][]string{"nats.internal": {"127.0.0.4"}}) // .2 leaves the app, .4 joins it
	start := time.Now()
	nodes[0].Shutdown()
	waitAll(t, conns, "127.0.0.4")
	t.Logf("reconnected to the new node in %v", time.Since(start))
}

func TestBackoffGrowsWithJitterAndIsCapped(t *testing.T) {
	for attempts, want := range []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond} {
		for range 100 {
			if d := backoff(attempts); d < want/2 || d > want {
				t.Fatalf("backoff(%d) = %v, want within [%v, %v]", attempts, d, want/2, want)
			}
		}
	}
	seen := map[time.Duration]bool{}
	for range 100 {
		d := backoff(50)
		if d < MaxBackoff/2 || d > MaxBackoff {
			t.Fatalf("backoff(50) = %v", d)
		}
		seen[d] = true
	}
	if len(seen) < 10 {
		t.Fatal("no jitter")
	}
}
