// Package ops holds what both services need to be operated: the logger they
// build from LOG_LEVEL and LOG_FORMAT, and the ops listener serving
// /healthz, /readyz and /metrics.
package ops

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/fly-chat/chat/internal/envflag"
)

// LogConfig selects the log level and format.
type LogConfig struct {
	Level  string // LOG_LEVEL: debug, info, warn, error
	Format string // LOG_FORMAT: text or json; empty means json on Fly, text elsewhere
	OnFly  bool   // FLY_APP_NAME is set
}

// Register declares LOG_LEVEL and LOG_FORMAT.
func (c *LogConfig) Register(l *envflag.Loader) {
	l.String(&c.Level, "LOG_LEVEL", "info", "log level: debug, info, warn or error")
	l.String(&c.Format, "LOG_FORMAT", "", "log format: text or json (default: json on Fly, text elsewhere)")
	c.OnFly = l.Env("FLY_APP_NAME") != ""
}

// Validate reports a level or format NewLogger would refuse.
func (c LogConfig) Validate() error {
	_, _, err := c.parse()
	return err
}

func (c LogConfig) parse() (level slog.Level, format string, err error) {
	if err := level.UnmarshalText([]byte(c.Level)); err != nil {
		return level, "", fmt.Errorf("LOG_LEVEL=%q: want debug, info, warn or error", c.Level)
	}
	switch format = strings.ToLower(c.Format); format {
	case "":
		format = "text"
		if c.OnFly {
			format = "json"
		}
	case "json", "text":
	default:
		return level, "", fmt.Errorf("LOG_FORMAT=%q: want text or json", c.Format)
	}
	return level, format, nil
}

// NewLogger builds the service's logger writing to w.
func NewLogger(w io.Writer, c LogConfig) (*slog.Logger, error) {
	level, format, err := c.parse()
	if err != nil {
		return nil, err
	}
	opts := &slog.HandlerOptions{Level: level}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return slog.New(slog.NewTextHandler(w, opts)), nil
}

// NewRegistry returns a registry holding the Go runtime and process
// collectors, for a service to add its own metrics to.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return reg
}

// Handler serves the ops endpoints: Health's, and /metrics, the registry in
// the Prometheus text format.
func Handler(g prometheus.Gatherer, ready func() error) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	mux.Handle("/", Health(ready))
	return mux
}

// Health serves the health endpoints, for load balancers and schedulers:
//
//	/healthz  200 while the process runs
//	/readyz   200 when ready() returns nil, else 503 with its reason
func Health(ready func() error) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ready\n")
	})
	return mux
}
