package natsconn

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"time"
)

// dialTimeout bounds one TCP connect to one address.
const dialTimeout = time.Second

// dialer connects nats.go to a server named by host: it resolves the name on
// every dial, so nodes added to or removed from a Fly app are seen at the
// next reconnect; tries the addresses in random order, so connections spread
// over all nodes instead of piling onto the first; and, for a .internal name
// with a region set, tries that region's nodes (<region>.<name>) first.
type dialer struct {
	resolver *net.Resolver
	region   string
	net      net.Dialer
}

func newDialer(dnsServer, region string) *dialer {
	d := &dialer{resolver: net.DefaultResolver, region: region, net: net.Dialer{Timeout: dialTimeout}}
	if dnsServer != "" {
		d.resolver = &net.Resolver{
			PreferGo: true,
			Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
				var nd net.Dialer
				return nd.DialContext(ctx, network, dnsServer)
			},
		}
		d.net.Resolver = d.resolver
	}
	return d
}

// Dial implements nats.CustomDialer.
func (d *dialer) Dial(network, address string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(address)
	if err != nil || net.ParseIP(host) != nil {
		return d.net.Dial(network, address)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	addrs, err := d.candidates(ctx, host)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, a := range addrs {
		conn, err := d.net.DialContext(ctx, network, net.JoinHostPort(a, port))
		if err == nil {
			return conn, nil
		}
		errs = append(errs, err)
	}
	return nil, errors.Join(errs...)
}

// candidates resolves host to the addresses to try, in order: the region's
// nodes, shuffled, then every other node, shuffled.
func (d *dialer) candidates(ctx context.Context, host string) ([]string, error) {
	var first []string
	if d.region != "" && strings.HasSuffix(host, ".internal") && !strings.HasPrefix(host, d.region+".") {
		first, _ = d.resolver.LookupHost(ctx, d.region+"."+host) // none in the region is fine
		shuffle(first)
	}
	all, err := d.resolver.LookupHost(ctx, host)
	if err != nil && len(first) == 0 {
		return nil, err
	}
	rest := make([]string, 0, len(all))
	for _, a := range all {
		if !slices.Contains(first, a) {
			rest = append(rest, a)
		}
	}
	shuffle(rest)
	return append(first, rest...), nil
}

func shuffle(s []string) { rand.Shuffle(len(s), func(i, j int) { s[i], s[j] = s[j], s[i] }) }
