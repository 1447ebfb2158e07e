package tests

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/pelletier/go-toml/v2"
	"go.yaml.in/yaml/v4"

	"github.com/fly-chat/chat/internal/envflag"
	"github.com/fly-chat/chat/internal/testkit"
	"github.com/fly-chat/chat/services/gateway"
	"github.com/fly-chat/chat/services/presence"
)

// root is the repository, from this package's directory.
const root = ".."

// settings maps each variable a service reads to its default.
func settings(ss []envflag.Setting) map[string]string {
	m := map[string]string{}
	for _, s := range ss {
		m[s.Env] = s.Default
	}
	return m
}

// flyVars are set by Fly, read by both services.
var flyVars = []string{"FLY_MACHINE_ID", "FLY_REGION", "FLY_APP_NAME"}

// flyConfig is the part of fly.toml we use. Decoding is strict: a key not
// here (a typo, a setting that does nothing) fails the test.
type flyConfig struct {
	App           string `toml:"app"`
	PrimaryRegion string `toml:"primary_region"`
	KillSignal    string `toml:"kill_signal"`
	KillTimeout   string `toml:"kill_timeout"`
	Build         struct {
		Args map[string]string `toml:"args"`
	} `toml:"build"`
	Env         map[string]string `toml:"env"`
	HTTPService *struct {
		InternalPort       int    `toml:"internal_port"`
		ForceHTTPS         bool   `toml:"force_https"`
		AutoStopMachines   string `toml:"auto_stop_machines"`
		AutoStartMachines  bool   `toml:"auto_start_machines"`
		MinMachinesRunning int    `toml:"min_machines_running"`
		Concurrency        struct {
			Type      string `toml:"type"`
			SoftLimit int    `toml:"soft_limit"`
			HardLimit int    `toml:"hard_limit"`
		} `toml:"concurrency"`
		Checks []struct {
			GracePeriod string `toml:"grace_period"`
			Interval    string `toml:"interval"`
			Timeout     string `toml:"timeout"`
			Method      string `toml:"method"`
			Path        string `toml:"path"`
		} `toml:"checks"`
	} `toml:"http_service"`
	Services []map[string]any `toml:"services"`
	Checks   map[string]struct {
		Type        string `toml:"type"`
		Port        int    `toml:"port"`
		Path        string `toml:"path"`
		Interval    string `toml:"interval"`
		Timeout     string `toml:"timeout"`
		GracePeriod string `toml:"grace_period"`
	} `toml:"checks"`
	Metrics struct {
		Port int    `toml:"port"`
		Path string `toml:"path"`
	} `toml:"metrics"`
	VM []struct {
		Size   string `toml:"size"`
		Memory string `toml:"memory"`
	} `toml:"vm"`
}

func loadFly(t *testing.T, name string) flyConfig {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, "deploy", name))
	if err != nil {
		t.Fatal(err)
	}
	var c flyConfig
	d := toml.NewDecoder(bytes.NewReader(data))
	d.DisallowUnknownFields()
	if err := d.Decode(&c); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return c
}

// setting is the value a service would run with: the app's env, else the
// default.
func setting(env map[string]string, defaults map[string]string, key string) string {
	if v, ok := env[key]; ok {
		return v
	}
	return defaults[key]
}

func portOf(t *testing.T, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("address %q: %v", addr, err)
	}
	n, _ := strconv.Atoi(p)
	return n
}

func checkCommonFly(t *testing.T, name string, c flyConfig, defaults map[string]string) {
	t.Helper()
	for k := range c.Env {
		if _, ok := defaults[k]; !ok {
			t.Errorf("%s sets %s, which the service does not read", name, k)
		}
	}
	if c.KillSignal != "SIGTERM" {
		t.Errorf("%s: kill_signal %q, want SIGTERM (what the service drains on)", name, c.KillSignal)
	}
	if c.Build.Args["NATSAPP"] == "" {
		t.Errorf("%s: no [build.args] NATSAPP", name)
	}
	ops := portOf(t, setting(c.Env, defaults, "METRICS_ADDR"))
	if c.Metrics.Port != ops || c.Metrics.Path != "/metrics" {
		t.Errorf("%s: [metrics] on %d%s, the ops listener is :%d/metrics", name, c.Metrics.Port, c.Metrics.Path, ops)
	}
	if len(c.Checks) == 0 {
		t.Errorf("%s has no machine checks", name)
	}
	for n, ch := range c.Checks {
		if ch.Type != "http" || ch.Port != ops || (ch.Path != "/healthz" && ch.Path != "/readyz") {
			t.Errorf("%s: check %s is %+v, want http on the ops port %d", name, n, ch, ops)
		}
	}
}

func TestFlyGatewayConfig(t *testing.T) {
	c := loadFly(t, "fly-gateway.toml")
	defaults := settings(gateway.Settings())
	for _, v := range flyVars {
		defaults[v] = ""
	}
	checkCommonFly(t, "fly-gateway.toml", c, defaults)
	hs := c.HTTPService
	if hs == nil {
		t.Fatal("fly-gateway.toml has no [http_service]")
	}
	if port, _ := strconv.Atoi(defaults["PORT"]); hs.InternalPort != port || setting(c.Env, defaults, "PORT") != defaults["PORT"] {
		t.Errorf("internal_port %d, but the gateway listens on PORT %s", hs.InternalPort, setting(c.Env, defaults, "PORT"))
	}
	if hs.Concurrency.Type != "connections" || hs.Concurrency.SoftLimit <= 0 || hs.Concurrency.HardLimit < hs.Concurrency.SoftLimit {
		t.Errorf("concurrency %+v", hs.Concurrency)
	}
	if len(hs.Checks) == 0 || hs.Checks[0].Path != "/readyz" {
		t.Errorf("the service checks %+v, want /readyz (the gateway serves it on its port too)", hs.Checks)
	}
	kill, err := time.ParseDuration(c.KillTimeout)
	if err != nil {
		t.Fatal(err)
	}
	drain, _ := time.ParseDuration(setting(c.Env, defaults, "SHUTDOWN_TIMEOUT"))
	if kill < drain {
		t.Errorf("kill_timeout %v is shorter than the drain, SHUTDOWN_TIMEOUT %v", kill, drain)
	}
}

func TestFlyPresenceConfig(t *testing.T) {
	c := loadFly(t, "fly-presence.toml")
	defaults := settings(presence.Settings())
	for _, v := range flyVars {
		defaults[v] = ""
	}
	checkCommonFly(t, "fly-presence.toml", c, defaults)
	if c.HTTPService != nil || len(c.Services) > 0 {
		t.Error("presence has a public service")
	}
}

func loadCompose(t *testing.T) *types.Project {
	t.Helper()
	abs, _ := filepath.Abs(root)
	p, err := loader.LoadWithContext(t.Context(), types.ConfigDetails{
		WorkingDir:  abs,
		ConfigFiles: []types.ConfigFile{{Filename: filepath.Join(abs, "docker-compose.yml")}},
		Environment: map[string]string{},
	}, func(o *loader.Options) { o.SetProjectName("chat", true) })
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func env(s types.ServiceConfig) map[string]string {
	m := map[string]string{}
	for k, v := range s.Environment {
		if v != nil {
			m[k] = *v
		}
	}
	return m
}

// The compose stack: a 3-node NATS cluster, two gateways on different
// nodes, presence, exporters, Prometheus and Grafana; every variable set is
// one the programs read; every port is the one the program listens on.
func TestComposeStack(t *testing.T) {
	p := loadCompose(t)
	want := []string{"gateway-1", "gateway-2", "grafana", "nats-1", "nats-2", "nats-3",
		"nats-exporter-1", "nats-exporter-2", "nats-exporter-3", "presence", "prometheus"}
	if got := slices.Sorted(func(yield func(string) bool) {
		for n := range p.Services {
			if !yield(n) {
				return
			}
		}
	}); !slices.Equal(got, want) {
		t.Fatalf("services %v, want %v", got, want)
	}

	gw, pr := settings(gateway.Settings()), settings(presence.Settings())
	firstNode := map[string]string{}
	for _, name := range []string{"gateway-1", "gateway-2", "presence"} {
		s := p.Services[name]
		known := gw
		if name == "presence" {
			known = pr
		}
		e := env(s)
		for k := range e {
			if _, ok := known[k]; !ok {
				t.Errorf("%s sets %s, which it does not read", name, k)
			}
		}
		if s.Build == nil {
			t.Fatalf("%s is not built from the repository", name)
		}
		if _, err := os.Stat(filepath.Join(s.Build.Context, s.Build.Dockerfile)); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		firstNode[name] = strings.Split(e["NATS_URL"], ",")[0]
	}
	if firstNode["gateway-1"] == firstNode["gateway-2"] {
		t.Errorf("both gateways start on %s", firstNode["gateway-1"])
	}
	for name, host := range map[string]string{"gateway-1": "8080", "gateway-2": "8081"} {
		s := p.Services[name]
		port, _ := strconv.Atoi(setting(env(s), gw, "PORT"))
		if len(s.Ports) != 1 || s.Ports[0].Published != host || int(s.Ports[0].Target) != port {
			t.Errorf("%s ports %+v, want %s → %d", name, s.Ports, host, port)
		}
	}
	for i := 1; i <= 3; i++ {
		cmd := strings.Join(p.Services["nats-"+strconv.Itoa(i)].Command, " ")
		for j := 1; j <= 3; j++ {
			if j != i && !strings.Contains(cmd, "nats://nats-"+strconv.Itoa(j)+":6222") {
				t.Errorf("nats-%d does not route to nats-%d: %s", i, j, cmd)
			}
		}
	}

	// Prometheus scrapes each service where it serves /metrics.
	data, err := os.ReadFile(filepath.Join(root, "deploy", "prometheus", "prometheus.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var prom struct {
		ScrapeConfigs []struct {
			Job           string `yaml:"job_name"`
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	if err := yaml.Unmarshal(data, &prom); err != nil {
		t.Fatal(err)
	}
	metricsPort := func(name string) int {
		s := p.Services[name]
		switch {
		case strings.HasPrefix(name, "gateway"):
			return portOf(t, setting(env(s), gw, "METRICS_ADDR"))
		case name == "presence":
			return portOf(t, setting(env(s), pr, "METRICS_ADDR"))
		case strings.HasPrefix(name, "nats-exporter"):
			if i := slices.Index(s.Command, "-port"); i >= 0 {
				n, _ := strconv.Atoi(s.Command[i+1])
				return n
			}
		}
		return -1
	}
	scraped := map[string]bool{}
	for _, sc := range prom.ScrapeConfigs {
		for _, st := range sc.StaticConfigs {
			for _, target := range st.Targets {
				host, port, _ := net.SplitHostPort(target)
				if _, ok := p.Services[host]; !ok {
					t.Errorf("job %s scrapes %s, which is no compose service", sc.Job, target)
					continue
				}
				if n, _ := strconv.Atoi(port); n != metricsPort(host) {
					t.Errorf("job %s scrapes %s, but %s serves metrics on %d", sc.Job, target, host, metricsPort(host))
				}
				scraped[host] = true
			}
		}
	}
	for name := range p.Services {
		if metricsPort(name) > 0 && !scraped[name] {
			t.Errorf("Prometheus does not scrape %s", name)
		}
	}
}

// The Grafana dashboard is valid JSON and asks only for metrics the
// services export.
func TestDashboardQueriesExistingMetrics(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(root, "deploy", "grafana", "dashboards", "chat.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatal(err)
	}
	ns := testkit.StartNATS(t)
	pp := startPresence(t, ns.ClientURL())
	pg, url := startGateway(t, ns.ClientURL())
	u, _ := connect(t, url, "alice")
	u.Send(`{"type":"message","message":"so that every series exists"}`)
	u.ExpectMessage("alice", "so that every series exists", wait)
	exported := map[string]bool{}
	for _, addr := range []string{pg.Attrs["ops_addr"], pp.Attrs["ops_addr"]} {
		for name := range testkit.Scrape(t, "http://"+addr+"/metrics") {
			exported[name] = true
		}
	}
	re := regexp.MustCompile(`\b(chat_[a-z_]+|process_[a-z_]+)`)
	for _, p := range d.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			for _, m := range re.FindAllString(tg.Expr, -1) {
				base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(m, "_bucket"), "_sum"), "_count")
				if !exported[m] && !exported[base] {
					t.Errorf("panel %q queries %s, which nothing exports", p.Title, m)
				}
			}
		}
	}
}

// Each service's Dockerfile builds a static binary, turns the NATSAPP build
// argument into NATSAPPHOST as the original example did, and runs it as a
// user that is not root.
func TestDockerfiles(t *testing.T) {
	for _, svc := range []string{"gateway", "presence"} {
		data, err := os.ReadFile(filepath.Join(root, "services", svc, "Dockerfile"))
		if err != nil {
			t.Fatal(err)
		}
		// The instructions of the last stage, the image that ships.
		stages := regexp.MustCompile(`(?m)^FROM `).Split(string(data), -1)
		final := stages[len(stages)-1]
		lines := map[string][]string{}
		for _, l := range strings.Split(final, "\n") {
			if f := strings.Fields(l); len(f) > 1 && !strings.HasPrefix(f[0], "#") {
				lines[f[0]] = append(lines[f[0]], strings.Join(f[1:], " "))
			}
		}
		arg, envAt := slices.IndexFunc(lines["ARG"], func(s string) bool { return strings.HasPrefix(s, "NATSAPP") }), -1
		for i, e := range lines["ENV"] {
			if e == "NATSAPPHOST=$NATSAPP" || e == "NATSAPPHOST=${NATSAPP}" {
				envAt = i
			}
		}
		if arg < 0 || envAt < 0 {
			t.Errorf("%s: the final stage does not turn ARG NATSAPP into ENV NATSAPPHOST: %v", svc, lines)
		}
		user := lines["USER"]
		if len(user) == 0 || strings.HasPrefix(user[len(user)-1], "root") || strings.HasPrefix(user[len(user)-1], "0") {
			t.Errorf("%s runs as %v, want a user that is not root", svc, user)
		}
		if !strings.Contains(string(data), "CGO_ENABLED=0") || !strings.Contains(string(data), "./services/"+svc+"/cmd/"+svc) {
			t.Errorf("%s: not a static build of ./services/%s/cmd/%s", svc, svc, svc)
		}
		if _, err := os.Stat(filepath.Join(root, "services", svc, "cmd", svc, "main.go")); err != nil {
			t.Error(err)
		}
	}
}

// The README's deploy commands name files that exist.
func TestREADMEDeployCommands(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	cmds := regexp.MustCompile(`fly deploy \. --config (\S+) --dockerfile (\S+)`).FindAllSubmatch(readme, -1)
	if len(cmds) != 2 {
		t.Fatalf("%d fly deploy commands in the README, want 2", len(cmds))
	}
	for _, c := range cmds {
		for _, f := range c[1:] {
			if _, err := os.Stat(filepath.Join(root, string(f))); err != nil {
				t.Errorf("the README deploys with %s: %v", f, err)
			}
		}
	}
}
