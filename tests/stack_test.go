package tests

import (
	"bufio"
	"fmt"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/fly-chat/chat/internal/testkit"
	"github.com/fly-chat/chat/pkg/protocol"
	"github.com/fly-chat/chat/services/gateway"
	"github.com/fly-chat/chat/services/presence"
)

const (
	wait      = 5 * time.Second
	grace     = 500 * time.Millisecond // LEAVE_GRACE in these tests
	heartbeat = 200 * time.Millisecond // HEARTBEAT_INTERVAL in these tests
)

// startPresence runs the presence program, env adding to the test
// defaults, and waits until it is past its warm-up.
func startPresence(t *testing.T, natsURL string, env ...map[string]string) *testkit.Program {
	t.Helper()
	e := map[string]string{
		"METRICS_ADDR": "127.0.0.1:0", "NATS_URL": natsURL, "LOG_LEVEL": "debug",
		"LEAVE_GRACE": grace.String(), "WARMUP": (2 * heartbeat).String(),
	}
	for _, o := range env {
		maps.Copy(e, o)
	}
	p := testkit.Start(t, presence.Run, e, "presence listening")
	waitReady(t, "http://"+p.Attrs["ops_addr"]+"/readyz")
	return p
}

func waitReady(t *testing.T, url string) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never ready", url)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// startGateway runs a gateway program in-process; it returns the websocket
// URL prefix, to which a handle is appended.
func startGateway(t *testing.T, natsURL string, env ...map[string]string) (*testkit.Program, string) {
	t.Helper()
	e := map[string]string{
		"HOST": "127.0.0.1", "PORT": "0", "METRICS_ADDR": "127.0.0.1:0", "NATS_URL": natsURL,
		"HEARTBEAT_INTERVAL": heartbeat.String(), "LOG_LEVEL": "debug",
		"RATE_LIMIT": "1e6", "RATE_BURST": "1000000", // these tests send faster than people
	}
	for _, o := range env {
		maps.Copy(e, o)
	}
	p := testkit.Start(t, gateway.Run, e, "gateway listening")
	return p, "ws://" + p.Attrs["addr"] + "/ws?handle="
}

// user is a connected client that knows the newest v it has seen.
type user struct {
	*testkit.Client
	t *testing.T
	v uint64
}

// connect dials url+handle and waits for the roster that follows binding.
func connect(t *testing.T, url, handle string) (*user, protocol.ServerFrame) {
	t.Helper()
	u := &user{Client: testkit.Dial(t, url+handle), t: t}
	r := u.Expect("roster", wait, isType(protocol.TypePresence))
	u.v = r.V
	return u, r
}

// notice returns the next join or leave this user receives that is newer
// than what it has: as the protocol tells clients, notices already covered
// by the roster (v not larger) are skipped.
func (u *user) notice() protocol.ServerFrame {
	u.t.Helper()
	f := u.Expect("a notice", wait, func(f protocol.ServerFrame) bool {
		return (f.Type == protocol.TypeJoin || f.Type == protocol.TypeLeave) && f.V > u.v
	})
	u.v = f.V
	return f
}

// expectNext checks that the next notice is exactly this one, numbered one
// past the last this user saw: so nothing was announced in between.
func (u *user) expectNext(typ, name, reason string) protocol.ServerFrame {
	u.t.Helper()
	want := u.v + 1
	f := u.notice()
	if f.Type != typ || f.Name != name || f.Reason != reason || f.V != want {
		u.t.Fatalf("next notice %s %s %q v%d, want %s %s %q v%d", f.Type, f.Name, f.Reason, f.V, typ, name, reason, want)
	}
	return f
}

// who asks for the roster and returns it.
func (u *user) who() protocol.ServerFrame {
	u.t.Helper()
	u.Send(`{"type":"who"}`)
	return u.Expect("roster", wait, isType(protocol.TypePresence))
}

func isType(typ string) func(protocol.ServerFrame) bool {
	return func(f protocol.ServerFrame) bool { return f.Type == typ }
}

func msgData(m *nats.Msg) string {
	if m == nil {
		return ""
	}
	return string(m.Data)
}

var (
	buildOnce  sync.Once
	gatewayBin string
	buildErr   error
)

// gatewayProcess is the real gateway binary, running.
type gatewayProcess struct {
	cmd *exec.Cmd
	url string // websocket URL prefix, to which a handle is appended
	ops string // http://host:port of its ops listener
}

// startGatewayProcess runs the real gateway binary, so it can be killed
// without a goodbye or sent a signal; env adds to its environment.
func startGatewayProcess(t *testing.T, natsURL string, env ...string) *gatewayProcess {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "gateway-bin")
		if err != nil {
			buildErr = err
			return
		}
		gatewayBin = filepath.Join(dir, "gateway")
		out, err := exec.Command("go", "build", "-o", gatewayBin, "github.com/fly-chat/chat/services/gateway/cmd/gateway").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("%v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatalf("building the gateway: %v", buildErr)
	}
	cmd := exec.Command(gatewayBin)
	cmd.Env = append([]string{"HOST=127.0.0.1", "PORT=0", "METRICS_ADDR=127.0.0.1:0", "NATS_URL=" + natsURL,
		"HEARTBEAT_INTERVAL=" + heartbeat.String()}, env...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	addrs := make(chan []string, 1)
	go func() {
		re := regexp.MustCompile(`msg="gateway listening" addr=(\S+) ops_addr=(\S+)`)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				addrs <- m[1:]
			}
		}
	}()
	select {
	case a := <-addrs:
		return &gatewayProcess{cmd: cmd, url: "ws://" + a[0] + "/ws?handle=", ops: "http://" + a[1]}
	case <-time.After(wait):
		t.Fatal("gateway process did not start")
	}
	return nil
}
