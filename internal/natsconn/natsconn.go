// Package natsconn connects a service to NATS the way both services need:
// servers from NATS_URL or a Fly app name (NATSAPPHOST), names resolved on
// every dial, connections spread over every address and kept forever.
package natsconn

import (
	"log/slog"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/fly-chat/chat/internal/envflag"
)

// Config says where NATS is.
type Config struct {
	URL       string // NATS_URL: comma-separated nats:// URLs; wins over AppHost
	AppHost   string // NATSAPPHOST: Fly app name of the NATS cluster
	DNSServer string // NATS_DNS_SERVER: host:port resolving .internal names; empty means the system resolver
	Region    string // FLY_REGION: its nodes are preferred
}

// Register declares NATS_URL, NATSAPPHOST and NATS_DNS_SERVER, and reads
// FLY_REGION.
func (c *Config) Register(l *envflag.Loader) {
	l.String(&c.URL, "NATS_URL", "", "comma-separated NATS server URLs (default nats://127.0.0.1:4222 unless NATSAPPHOST is set)")
	l.String(&c.AppHost, "NATSAPPHOST", "", "Fly app name of the NATS cluster: means nats://<name>.internal:4222, every node it resolves to")
	l.String(&c.DNSServer, "NATS_DNS_SERVER", "", "host:port of a DNS server for .internal names (default: the system resolver, on Fly the 6PN nameserver)")
	c.Region = l.Env("FLY_REGION")
}

// Servers lists the URLs to connect to.
func (c Config) Servers() []string {
	switch {
	case c.URL != "":
		var urls []string
		for _, u := range strings.Split(c.URL, ",") {
			if u = strings.TrimSpace(u); u != "" {
				urls = append(urls, u)
			}
		}
		return urls
	case c.AppHost != "":
		return []string{"nats://" + c.AppHost + ".internal:4222"}
	}
	return []string{nats.DefaultURL}
}

// Hooks are told about connection changes. Each may be nil.
type Hooks struct {
	Connected    func() // the first connection is up (called even if Connect saw it)
	Disconnected func() // lost the connection (not on our own Close or Drain)
	Reconnected  func()
}

// Connect returns a connection that is connected or trying to be: it never
// gives up, so a service can start before NATS does and ride out outages.
// Reconnects back off exponentially with jitter, to at most MaxBackoff, and
// resolve the servers' names again, so nodes that came or went are seen.
func Connect(c Config, name string, log *slog.Logger, hooks Hooks) (*nats.Conn, error) {
	servers := c.Servers()
	log = log.With("nats_servers", servers)
	opts := []nats.Option{
		nats.Name(name),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		nats.CustomReconnectDelay(backoff),
		nats.SetCustomDialer(newDialer(c.DNSServer, c.Region)),
		nats.SkipHostLookup(), // the dialer resolves, every time
		nats.PingInterval(5 * time.Second),
		nats.MaxPingsOutstanding(2), // a silent server is dropped within about 10s
		nats.ConnectHandler(func(nc *nats.Conn) {
			log.Info("nats connected", "server", nc.ConnectedUrlRedacted(), "addr", nc.ConnectedAddr())
			if hooks.Connected != nil {
				hooks.Connected()
			}
		}),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err == nil { // our own Close or Drain
				log.Debug("nats disconnected")
				return
			}
			log.Warn("nats disconnected", "err", err)
			if hooks.Disconnected != nil {
				hooks.Disconnected()
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("nats reconnected", "server", nc.ConnectedUrlRedacted(), "addr", nc.ConnectedAddr())
			if hooks.Reconnected != nil {
				hooks.Reconnected()
			}
		}),
		nats.ClosedHandler(func(*nats.Conn) { log.Info("nats connection closed") }),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			log.Error("nats async error", "subject", subject, "err", err)
		}),
	}
	if c.URL == "" && c.AppHost != "" {
		// The app's name is the truth about which nodes exist; the addresses
		// nodes advertise may be stale or unreachable.
		opts = append(opts, nats.IgnoreDiscoveredServers())
	}
	return nats.Connect(strings.Join(servers, ","), opts...)
}

// MaxBackoff caps the wait between reconnect rounds: after an outage, every
// service is back within about this long of NATS.
const MaxBackoff = 2 * time.Second

// backoff is the wait after the attempts-th failed round over every server:
// 100ms doubling to MaxBackoff, with full jitter in its upper half so a
// fleet does not reconnect in lockstep.
func backoff(attempts int) time.Duration {
	d := min(100*time.Millisecond<<min(attempts, 10), MaxBackoff)
	return d/2 + rand.N(d/2+1)
}
