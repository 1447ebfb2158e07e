// Package natsconn connects a service to NATS the way both services need:
// servers from NATS_URL or a Fly app name (NATSAPPHOST), reconnecting
// forever, every connection event logged.
package natsconn

import (
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/fly-chat/chat/internal/envflag"
)

// Config says where NATS is.
type Config struct {
	URL     string // NATS_URL: comma-separated nats:// URLs; wins over AppHost
	AppHost string // NATSAPPHOST: Fly app name of the NATS cluster
}

// Register declares NATS_URL and NATSAPPHOST.
func (c *Config) Register(l *envflag.Loader) {
	l.String(&c.URL, "NATS_URL", "", "comma-separated NATS server URLs (default nats://127.0.0.1:4222 unless NATSAPPHOST is set)")
	l.String(&c.AppHost, "NATSAPPHOST", "", "Fly app name of the NATS cluster: means nats://<name>.internal:4222")
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
func Connect(c Config, name string, log *slog.Logger, hooks Hooks) (*nats.Conn, error) {
	servers := c.Servers()
	log = log.With("nats_servers", servers)
	return nats.Connect(strings.Join(servers, ","),
		nats.Name(name),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250*time.Millisecond),
		nats.ReconnectJitter(250*time.Millisecond, time.Second),
		nats.ConnectHandler(func(nc *nats.Conn) {
			log.Info("nats connected", "server", nc.ConnectedUrlRedacted())
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
			log.Info("nats reconnected", "server", nc.ConnectedUrlRedacted())
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
	)
}
