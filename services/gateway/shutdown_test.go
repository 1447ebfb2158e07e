package gateway_test

import (
	"bufio"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fly-chat/chat/internal/testkit"
	"github.com/fly-chat/chat/pkg/protocol"
)

// Stopping the program (what SIGTERM does to main) closes every socket with
// 1001 after what was already queued for it, stops listening, and returns
// nil.
func TestShutdownClosesSocketsWithGoingAway(t *testing.T) {
	ns := testkit.StartNATS(t)
	g := startGateway(t, ns.ClientURL())
	alice, bob := join(t, g, "alice"), join(t, g, "bob")
	// Bob reads nothing until the shutdown has begun.
	for i := range 5 {
		alice.Send(fmt.Sprintf(`{"type":"message","message":"last words %d"}`, i))
	}
	testkit.WaitMetric(t, g.metrics, wait, func(v float64) bool { return v == 10 }, "chat_gateway_messages_total", "direction", "out")

	stopped := make(chan error, 1)
	go func() { stopped <- g.Stop() }()
	for i := range 5 {
		bob.ExpectMessage("alice", fmt.Sprintf("last words %d", i), wait)
	}
	for _, c := range []*testkit.Client{alice, bob} {
		c.ExpectClose(protocol.CloseGoingAway, wait)
	}
	if err := <-stopped; err != nil {
		t.Fatalf("run returned %v", err)
	}
	if c, err := testkit.DialErr(g.ws + "?handle=late"); err == nil {
		c.Conn.Close()
		t.Fatal("upgrade accepted after shutdown")
	}
}

// The real binary: it carries no NATS server, and SIGTERM or SIGINT makes
// it close sockets with 1001 and exit 0.
func TestBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := filepath.Join(t.TempDir(), "gateway")
	if out, err := exec.Command("go", "build", "-o", bin, "./cmd/gateway").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	deps, err := exec.Command("go", "version", "-m", bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(deps), "nats-server") {
		t.Fatalf("the gateway binary links nats-server:\n%s", deps)
	}

	ns := testkit.StartNATS(t)
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			cmd := exec.Command(bin)
			cmd.Env = []string{"HOST=127.0.0.1", "PORT=0", "METRICS_ADDR=127.0.0.1:0", "NATS_URL=" + ns.ClientURL()}
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			cmd.Stderr = os.Stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { cmd.Process.Kill() })
			addr := make(chan string, 1)
			go func() {
				re := regexp.MustCompile(`msg="gateway listening" addr=(\S+) ops_addr=(\S+)`)
				sc := bufio.NewScanner(stdout)
				for sc.Scan() {
					if m := re.FindStringSubmatch(sc.Text()); m != nil {
						addr <- m[1]
					}
				}
			}()
			var a string
			select {
			case a = <-addr:
			case <-time.After(wait):
				t.Fatal("gateway did not start")
			}
			if resp, err := http.Get("http://" + a + "/"); err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("page: %v %v", resp, err)
			}
			c := testkit.Dial(t, "ws://"+a+"/ws?handle=alice")
			c.Send(`{"type":"message","message":"hi"}`)
			c.ExpectMessage("alice", "hi", wait)

			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			c.ExpectClose(protocol.CloseGoingAway, wait)
			if err := cmd.Wait(); err != nil {
				t.Fatalf("exit after %v: %v", sig, err)
			}
		})
	}
}

// While a gateway drains, /readyz answers 503, so load balancers stop
// sending it new clients before its sockets are closed.
func TestReadyzIs503WhileDraining(t *testing.T) {
	ns := testkit.StartNATS(t)
	g := startGateway(t, ns.ClientURL())
	join(t, g, "silent") // never answers the close frame: the drain waits for it
	if code := status(t, g.ops+"/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz %d before the drain", code)
	}
	stopped := make(chan error, 1)
	go func() { stopped <- g.Stop() }()
	deadline := time.Now().Add(wait)
	for status(t, g.ops+"/readyz") != http.StatusServiceUnavailable {
		select {
		case <-stopped:
			t.Fatal("stopped without /readyz ever saying 503")
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("/readyz never said 503")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
}

func status(t *testing.T, url string) int {
	resp, err := http.Get(url)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}
