package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// stack is an embedded NATS server and a fresh gateway process, all on
// loopback.
type stack struct {
	ns  *server.Server
	cmd *exec.Cmd
	dir string
	url string
	pid int
}

func startStack(ctx context.Context, c config, log io.Writer) (*stack, error) {
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true, MaxPayload: 1 << 20})
	if err != nil {
		return nil, err
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return nil, errors.New("nats server did not start")
	}
	s := &stack{ns: ns}
	bin := c.gatewayBin
	if bin == "" {
		if s.dir, err = os.MkdirTemp("", "chatload"); err != nil {
			s.close()
			return nil, err
		}
		bin = filepath.Join(s.dir, "gateway")
		fmt.Fprintln(log, "building the gateway…")
		build := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/fly-chat/chat/services/gateway/cmd/gateway")
		if out, err := build.CombinedOutput(); err != nil {
			s.close()
			return nil, fmt.Errorf("go build: %v\n%s", err, out)
		}
	}
	s.cmd = exec.Command(bin)
	// The load generator is one address range and sends faster than people:
	// the per-address and rate limits would measure themselves.
	s.cmd.Env = append([]string{
		"HOST=127.0.0.1", "PORT=0", "METRICS_ADDR=127.0.0.1:0", "NATS_URL=" + ns.ClientURL(), "LOG_LEVEL=info",
		"MAX_CONNECTIONS=0", "MAX_CONNECTIONS_PER_IP=0", "RATE_LIMIT=1e6", "RATE_BURST=1000000",
	}, c.gatewayEnv...)
	s.cmd.Stderr = log
	stdout, err := s.cmd.StdoutPipe()
	if err != nil {
		s.close()
		return nil, err
	}
	if err := s.cmd.Start(); err != nil {
		s.close()
		return nil, err
	}
	s.pid = s.cmd.Process.Pid
	addr := make(chan string, 1)
	go func() {
		re := regexp.MustCompile(`msg="gateway listening" addr=(\S+)`)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				addr <- m[1]
			}
		}
	}()
	select {
	case a := <-addr:
		s.url = "ws://" + a + "/ws"
		return s, nil
	case <-time.After(20 * time.Second):
		s.close()
		return nil, errors.New("the gateway did not start")
	}
}

func (s *stack) close() {
	if s.cmd != nil && s.cmd.Process != nil {
		s.cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { s.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			s.cmd.Process.Kill()
		}
	}
	s.ns.Shutdown()
	if s.dir != "" {
		os.RemoveAll(s.dir)
	}
}

// mustBeLoopback refuses any target but this machine.
func mustBeLoopback(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return err
	}
	ip := net.ParseIP(u.Hostname())
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("%s: chatload only targets loopback addresses (127.0.0.0/8, ::1)", raw)
	}
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
