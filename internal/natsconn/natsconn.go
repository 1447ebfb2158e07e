// Package natsconn connects a service to NATS the way both services need:
// servers from NATS_URL or a Fly app name (NATSAPPHOST), names resolved on
// every dial, connections spread over every address and kept forever.
package natsconn

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/fly-chat/chat/internal/envflag"
)

// Config says where NATS is and who we are to it.
type Config struct {
	URL       string // NATS_URL: comma-separated nats:// URLs; wins over AppHost
	AppHost   string // NATSAPPHOST: Fly app name of the NATS cluster
	DNSServer string // NATS_DNS_SERVER: host:port resolving .internal names; empty means the system resolver
	Region    string // FLY_REGION: its nodes are preferred

	// Credentials: at most one of Creds, NKey, User (with Password), Token.
	Creds    string // NATS_CREDS: a .creds file (user JWT and NKey seed)
	NKey     string // NATS_NKEY: a file holding an NKey user seed
	User     string // NATS_USER
	Password string // NATS_PASSWORD
	Token    string // NATS_TOKEN

	// TLS: CA verifies the servers; Cert and Key are our client certificate.
	CA   string // NATS_CA
	Cert string // NATS_CERT
	Key  string // NATS_KEY
}

// Register declares NATS_URL, NATSAPPHOST and NATS_DNS_SERVER, and reads
// FLY_REGION.
func (c *Config) Register(l *envflag.Loader) {
	l.String(&c.URL, "NATS_URL", "", "comma-separated NATS server URLs (default nats://127.0.0.1:4222 unless NATSAPPHOST is set)")
	l.String(&c.AppHost, "NATSAPPHOST", "", "Fly app name of the NATS cluster: means nats://<name>.internal:4222, every node it resolves to")
	l.String(&c.DNSServer, "NATS_DNS_SERVER", "", "host:port of a DNS server for .internal names (default: the system resolver, on Fly the 6PN nameserver)")
	l.String(&c.Creds, "NATS_CREDS", "", "NATS credentials file (user JWT and NKey seed)")
	l.String(&c.NKey, "NATS_NKEY", "", "file holding an NKey user seed")
	l.String(&c.User, "NATS_USER", "", "NATS user name (with NATS_PASSWORD)")
	l.String(&c.Password, "NATS_PASSWORD", "", "NATS password")
	l.String(&c.Token, "NATS_TOKEN", "", "NATS authentication token")
	l.String(&c.CA, "NATS_CA", "", "CA certificate file to verify NATS servers (TLS)")
	l.String(&c.Cert, "NATS_CERT", "", "client certificate file for NATS (TLS, with NATS_KEY)")
	l.String(&c.Key, "NATS_KEY", "", "client key file for NATS (TLS, with NATS_CERT)")
	c.Region = l.Env("FLY_REGION")
}

// Validate reports contradictory settings.
func (c Config) Validate() error {
	n := 0
	for _, set := range []bool{c.Creds != "", c.NKey != "", c.User != "", c.Token != ""} {
		if set {
			n++
		}
	}
	switch {
	case n > 1:
		return errors.New("set at most one of NATS_CREDS, NATS_NKEY, NATS_USER and NATS_TOKEN")
	case c.Password != "" && c.User == "":
		return errors.New("NATS_PASSWORD needs NATS_USER")
	case (c.Cert == "") != (c.Key == ""):
		return errors.New("NATS_CERT and NATS_KEY go together")
	}
	return nil
}

// auth turns the credential and TLS settings into options.
func (c Config) auth() ([]nats.Option, error) {
	var opts []nats.Option
	switch {
	case c.Creds != "":
		opts = append(opts, nats.UserCredentials(c.Creds))
	case c.NKey != "":
		o, err := nats.NkeyOptionFromSeed(c.NKey)
		if err != nil {
			return nil, fmt.Errorf("NATS_NKEY: %w", err)
		}
		opts = append(opts, o)
	case c.User != "":
		opts = append(opts, nats.UserInfo(c.User, c.Password))
	case c.Token != "":
		opts = append(opts, nats.Token(c.Token))
	}
	if c.CA != "" {
		opts = append(opts, nats.RootCAs(c.CA))
	}
	if c.Cert != "" {
		opts = append(opts, nats.ClientCert(c.Cert, c.Key))
	}
	return opts, nil
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
	Connected        func() // the first connection is up (called even if Connect saw it)
	Disconnected     func() // lost the connection (not on our own Close or Drain)
	Reconnected      func()
	PermissionDenied func() // the server refused a publish or subscription
}

// Connect returns a connection that is connected or trying to be: it never
// gives up, so a service can start before NATS does and ride out outages.
// Reconnects back off exponentially with jitter, to at most MaxBackoff, and
// resolve the servers' names again, so nodes that came or went are seen.
// Replies come to inboxes under inboxPrefix, so NATS permissions can keep
// each service to its own.
func Connect(c Config, name, inboxPrefix string, log *slog.Logger, hooks Hooks) (*nats.Conn, error) {
	auth, err := c.auth()
	if err != nil {
		return nil, err
	}
	servers := c.Servers()
	log = log.With("nats_servers", servers)
	opts := []nats.Option{
		nats.Name(name),
		nats.CustomInboxPrefix(inboxPrefix),
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
		// A publish the server refuses returns no error from Publish: it
		// arrives here, and is never ignored.
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			if errors.Is(err, nats.ErrPermissionViolation) && hooks.PermissionDenied != nil {
				hooks.PermissionDenied()
			}
			log.Error("nats async error", "subject", subject, "err", err)
		}),
	}
	opts = append(opts, auth...)
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
