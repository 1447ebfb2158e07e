package presence

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/fly-chat/chat/internal/envflag"
	"github.com/fly-chat/chat/internal/natsconn"
	"github.com/fly-chat/chat/internal/ops"
)

// Config is every setting of the presence service, from the environment
// and flags (a flag wins).
type Config struct {
	MetricsAddr string // METRICS_ADDR: ops listener (/metrics, /healthz, /readyz)
	NATS        natsconn.Config

	LeaveGrace  time.Duration // LEAVE_GRACE: how long a handle with no session stays online
	Warmup      time.Duration // WARMUP: how long a starting service listens before it announces anything
	SyncTimeout time.Duration // SYNC_TIMEOUT: how long a gateway has to send its full state

	Log ops.LogConfig
}

// LoadConfig reads the configuration from args and getenv.
func LoadConfig(args []string, getenv func(string) string, out io.Writer) (Config, error) {
	var c Config
	l := envflag.New("presence", getenv, out)
	c.register(l)
	if err := l.Parse(args); err != nil {
		return c, err
	}
	return c, c.validate()
}

func (c *Config) register(l *envflag.Loader) {
	l.String(&c.MetricsAddr, "METRICS_ADDR", ":9091", "address of the ops listener: /metrics, /healthz, /readyz")
	c.NATS.Register(l)
	l.Duration(&c.LeaveGrace, "LEAVE_GRACE", 3*time.Second, "how long a handle whose last session ended stays online; a reconnect within it announces nothing")
	l.Duration(&c.Warmup, "WARMUP", 3*time.Second, "how long a starting presence service syncs gateways before it announces anything (at least one gateway HEARTBEAT_INTERVAL)")
	l.Duration(&c.SyncTimeout, "SYNC_TIMEOUT", 2*time.Second, "how long a gateway has to send its full state when asked")
	c.Log.Register(l)
}

func (c Config) validate() error {
	var problems []string
	if c.LeaveGrace < 0 {
		problems = append(problems, "LEAVE_GRACE must not be negative")
	}
	if c.Warmup < 0 {
		problems = append(problems, "WARMUP must not be negative")
	}
	if c.SyncTimeout <= 0 {
		problems = append(problems, "SYNC_TIMEOUT must be positive")
	}
	if err := c.NATS.Validate(); err != nil {
		problems = append(problems, err.Error())
	}
	if err := c.Log.Validate(); err != nil {
		problems = append(problems, err.Error())
	}
	if len(problems) > 0 {
		return fmt.Errorf("presence config: %s", strings.Join(problems, "; "))
	}
	return nil
}
