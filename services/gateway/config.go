package gateway

import (
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/fly-chat/chat/internal/envflag"
	"github.com/fly-chat/chat/internal/natsconn"
	"github.com/fly-chat/chat/internal/ops"
	"github.com/fly-chat/chat/pkg/protocol"
)

// Config is every setting of a gateway. LoadConfig fills it from the
// environment (12-factor, as Fly sets it) and flags (for local use); a flag
// wins over its environment variable.
type Config struct {
	Host        string // HOST: interface to listen on; empty means all
	Port        string // PORT: websocket and page port
	MetricsAddr string // METRICS_ADDR: ops listener (/metrics, /healthz, /readyz)

	NATS natsconn.Config // NATS_URL, NATSAPPHOST

	MaxMessageBytes int           // MAX_MESSAGE_BYTES: largest websocket message accepted
	PingInterval    time.Duration // PING_INTERVAL: idle time before the gateway pings a client
	PongTimeout     time.Duration // PONG_TIMEOUT: how long a pinged client has to answer
	SendQueue       int           // SEND_QUEUE: frames queued for one client before it is a slow consumer
	SendQueueBytes  int           // SEND_QUEUE_BYTES: bytes queued for one client before it is a slow consumer
	WriteTimeout    time.Duration // WRITE_TIMEOUT: longest a single socket write may block
	FlushInterval   time.Duration // FLUSH_INTERVAL: a busy socket is written at most once per interval
	SocketBuffer    int           // SOCKET_SEND_BUFFER: the kernel's send buffer per websocket
	IOMode          string        // IO_MODE: epoll (Linux) or goroutine: how sockets are read
	ShutdownTimeout time.Duration // SHUTDOWN_TIMEOUT: budget for a graceful stop

	AllowedOrigins      string        // ALLOWED_ORIGINS: pages that may open websockets; empty means this host's own
	RateLimit           float64       // RATE_LIMIT: frames a client may send per second, sustained
	RateBurst           int           // RATE_BURST: frames a client may send at once
	FloodTimeout        time.Duration // FLOOD_TIMEOUT: how long a client may keep exceeding the rate before it is closed
	MaxConnections      int           // MAX_CONNECTIONS: websockets on this gateway; 0 means no limit
	MaxConnectionsPerIP int           // MAX_CONNECTIONS_PER_IP: websockets from one address; 0 means no limit
	HandshakeTimeout    time.Duration // HANDSHAKE_TIMEOUT: time for the HTTP request and the upgrade

	HeartbeatInterval time.Duration // HEARTBEAT_INTERVAL: how often presence hears from this gateway
	DeliveryTimeout   time.Duration // DELIVERY_TIMEOUT: how long an accepted message is retried before its sender is told
	ReplayWindow      time.Duration // REPLAY_WINDOW: how far back messages are kept for gateways that lost NATS
	ShutdownBatch     int           // SHUTDOWN_BATCH: sockets closed at a time on shutdown

	Log ops.LogConfig // LOG_LEVEL, LOG_FORMAT

	MachineID string // FLY_MACHINE_ID: names this gateway; generated when empty
	Region    string // FLY_REGION
}

// Addr is the websocket listener's address.
func (c Config) Addr() string { return net.JoinHostPort(c.Host, c.Port) }

// LoadConfig reads the configuration from args and getenv. It returns
// flag.ErrHelp after printing usage to out when asked for -h.
func LoadConfig(args []string, getenv func(string) string, out io.Writer) (Config, error) {
	var c Config
	l := envflag.New("gateway", getenv, out)
	c.register(l)
	if err := l.Parse(args); err != nil {
		return c, err
	}
	return c, c.validate()
}

func (c *Config) register(l *envflag.Loader) {
	l.String(&c.Host, "HOST", "", "interface to listen on (empty: all)")
	l.String(&c.Port, "PORT", "8080", "port for the chat page and websockets")
	l.String(&c.MetricsAddr, "METRICS_ADDR", ":9091", "address of the ops listener: /metrics, /healthz, /readyz")
	c.NATS.Register(l)
	l.Int(&c.MaxMessageBytes, "MAX_MESSAGE_BYTES", 64<<10, "largest websocket message a client may send (close 1009 above)")
	l.String(&c.AllowedOrigins, "ALLOWED_ORIGINS", "", "comma-separated origins whose pages may open websockets, or * (default: only pages from this host)")
	l.Float(&c.RateLimit, "RATE_LIMIT", 10, "frames a client may send per second, sustained (error rate_limited above)")
	l.Int(&c.RateBurst, "RATE_BURST", 20, "frames a client may send in a burst")
	l.Duration(&c.FloodTimeout, "FLOOD_TIMEOUT", 3*time.Second, "how long a client may keep exceeding RATE_LIMIT before it is closed with 1008")
	l.Int(&c.MaxConnections, "MAX_CONNECTIONS", 20000, "websockets this gateway holds at most (503 above; 0: no limit)")
	l.Int(&c.MaxConnectionsPerIP, "MAX_CONNECTIONS_PER_IP", 100, "websockets one client address may hold (429 above; 0: no limit)")
	l.Duration(&c.HandshakeTimeout, "HANDSHAKE_TIMEOUT", 10*time.Second, "time a client has to send its HTTP request and complete the upgrade")
	l.Duration(&c.PingInterval, "PING_INTERVAL", 25*time.Second, "idle time after which the gateway pings a client")
	l.Duration(&c.PongTimeout, "PONG_TIMEOUT", 10*time.Second, "time a pinged client has to answer before it is dropped")
	l.Int(&c.SendQueue, "SEND_QUEUE", 256, "frames queued for one client before it is cut off as a slow consumer")
	l.Int(&c.SendQueueBytes, "SEND_QUEUE_BYTES", 1<<20, "bytes queued for one client before it is cut off as a slow consumer")
	l.Duration(&c.WriteTimeout, "WRITE_TIMEOUT", 10*time.Second, "longest a socket write may block before the client is dropped")
	l.Duration(&c.FlushInterval, "FLUSH_INTERVAL", 50*time.Millisecond, "the writers (one per CPU) write their sockets at most once per interval, so under load a socket gets one write for many messages (0: write every message at once)")
	l.Int(&c.SocketBuffer, "SOCKET_SEND_BUFFER", 64<<10, "kernel send buffer per websocket, bytes: caps what a client that stops reading holds in the kernel (0: the kernel's autotuning)")
	l.String(&c.IOMode, "IO_MODE", "epoll", "how sockets are read: epoll (a few workers for all sockets; Linux only, elsewhere goroutine) or goroutine (one blocked reader per socket)")
	l.Duration(&c.ShutdownTimeout, "SHUTDOWN_TIMEOUT", 10*time.Second, "budget for closing sockets and draining NATS on SIGTERM")
	l.Duration(&c.HeartbeatInterval, "HEARTBEAT_INTERVAL", 2*time.Second, "how often the gateway tells presence it is alive; 3 missed make its users leave")
	l.Duration(&c.DeliveryTimeout, "DELIVERY_TIMEOUT", 10*time.Second, "how long an accepted message is republished until NATS confirms it; then its sender gets not_delivered")
	l.Duration(&c.ReplayWindow, "REPLAY_WINDOW", time.Minute, "how far back this gateway keeps its messages for gateways that lost NATS and ask for a replay")
	l.Int(&c.ShutdownBatch, "SHUTDOWN_BATCH", 500, "sockets closed at a time on shutdown, 100ms apart, so clients reconnect elsewhere gradually")
	c.Log.Register(l)
	c.MachineID = l.Env("FLY_MACHINE_ID")
	c.Region = l.Env("FLY_REGION")
}

func (c Config) validate() error {
	var problems []string
	check := func(ok bool, msg string) {
		if !ok {
			problems = append(problems, msg)
		}
	}
	check(c.MaxMessageBytes >= 128, "MAX_MESSAGE_BYTES must be at least 128")
	check(c.PingInterval > 0, "PING_INTERVAL must be positive")
	check(c.PongTimeout > 0, "PONG_TIMEOUT must be positive")
	check(c.SendQueue > 0, "SEND_QUEUE must be positive")
	check(c.SendQueueBytes >= c.MaxMessageBytes, "SEND_QUEUE_BYTES must be at least MAX_MESSAGE_BYTES")
	check(c.WriteTimeout > 0, "WRITE_TIMEOUT must be positive")
	check(c.FlushInterval >= 0 && c.FlushInterval < time.Second, "FLUSH_INTERVAL must be 0 to 1s")
	check(c.IOMode == "epoll" || c.IOMode == "goroutine", "IO_MODE must be epoll or goroutine")
	check(c.SocketBuffer >= 0, "SOCKET_SEND_BUFFER must not be negative")
	check(c.ShutdownTimeout > 0, "SHUTDOWN_TIMEOUT must be positive")
	check(c.HeartbeatInterval >= 10*time.Millisecond, "HEARTBEAT_INTERVAL must be at least 10ms")
	check(c.RateLimit > 0 && c.RateBurst > 0, "RATE_LIMIT and RATE_BURST must be positive")
	check(c.FloodTimeout > 0, "FLOOD_TIMEOUT must be positive")
	check(c.MaxConnections >= 0 && c.MaxConnectionsPerIP >= 0, "MAX_CONNECTIONS and MAX_CONNECTIONS_PER_IP must not be negative")
	check(c.HandshakeTimeout > 0, "HANDSHAKE_TIMEOUT must be positive")
	check(c.DeliveryTimeout > ackTimeout, "DELIVERY_TIMEOUT must be longer than 1s")
	check(c.ReplayWindow >= 0, "REPLAY_WINDOW must not be negative")
	check(c.ShutdownBatch > 0, "SHUTDOWN_BATCH must be positive")
	check(c.MachineID == "" || protocol.ValidID(c.MachineID), "FLY_MACHINE_ID must be letters, digits, - and _")
	if err := c.NATS.Validate(); err != nil {
		problems = append(problems, err.Error())
	}
	if err := c.Log.Validate(); err != nil {
		problems = append(problems, err.Error())
	}
	if len(problems) > 0 {
		return fmt.Errorf("gateway config: %s", strings.Join(problems, "; "))
	}
	return nil
}
