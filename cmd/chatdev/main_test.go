package main

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/fly-chat/chat/internal/testkit"
	"github.com/fly-chat/chat/pkg/protocol"
)

// freePort returns a loopback port nothing listens on right now.
func freePort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
}

// The one command a new user runs: it prints a URL, the page is there, and
// two tabs chat through the embedded NATS server.
func TestStackChatsLocally(t *testing.T) {
	env := map[string]string{
		"PORT": freePort(t), "METRICS_ADDR": "127.0.0.1:" + freePort(t), "PRESENCE_METRICS_ADDR": "127.0.0.1:" + freePort(t),
		"LOG_LEVEL": "warn", "WARMUP": "100ms",
	}
	pr, pw := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-nats-port=-1"}, func(k string) string { return env[k] }, pw)
		pw.Close()
	}()
	urls := make(chan string, 1)
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		re := regexp.MustCompile(`open (http://\S+)`)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			t.Log(sc.Text())
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				urls <- m[1]
			}
		}
	}()
	var url string
	select {
	case url = <-urls:
	case err := <-done:
		t.Fatalf("chatdev exited: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("chatdev printed no URL")
	}
	if url != "http://localhost:"+env["PORT"] {
		t.Fatalf("printed %s", url)
	}

	resp, err := http.Get(url)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %v %v", url, resp, err)
	}
	resp.Body.Close()
	ws := "ws://127.0.0.1:" + env["PORT"] + "/ws?handle="
	alice := testkit.Dial(t, ws+"alice")
	alice.Expect("alice's roster", 5*time.Second, func(f protocol.ServerFrame) bool { return f.Type == protocol.TypePresence })
	bob := testkit.Dial(t, ws+"bob")
	alice.Expect("bob's join", 5*time.Second, func(f protocol.ServerFrame) bool { return f.Type == protocol.TypeJoin && f.Name == "bob" })
	alice.Send(`{"type":"message","message":"hello bob"}`)
	bob.ExpectMessage("alice", "hello bob", 5*time.Second)

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("chatdev returned %v", err)
	}
	<-scanned
}
