package envflag

import (
	"errors"
	"flag"
	"io"
	"strings"
	"testing"
	"time"
)

func TestLoader(t *testing.T) {
	env := map[string]string{"PORT": "9000", "PING_INTERVAL": "3s", "SEND_QUEUE": "7"}
	var (
		port, host string
		ping       time.Duration
		queue      int
	)
	l := New("test", func(k string) string { return env[k] }, io.Discard)
	l.String(&port, "PORT", "8080", "port")
	l.String(&host, "HOST", "localhost", "host")
	l.Duration(&ping, "PING_INTERVAL", time.Second, "ping")
	l.Int(&queue, "SEND_QUEUE", 1, "queue")
	if err := l.Parse([]string{"-port", "9001"}); err != nil {
		t.Fatal(err)
	}
	if port != "9001" || host != "localhost" || ping != 3*time.Second || queue != 7 {
		t.Fatalf("got port=%s host=%s ping=%v queue=%d", port, host, ping, queue)
	}
	if got := l.Settings()[2]; got.Flag != "ping-interval" || got.Default != "1s" {
		t.Fatalf("setting %+v", got)
	}
}

func TestLoaderErrors(t *testing.T) {
	env := map[string]string{"PING_INTERVAL": "3", "SEND_QUEUE": "many"}
	var (
		ping  time.Duration
		queue int
	)
	l := New("test", func(k string) string { return env[k] }, io.Discard)
	l.Duration(&ping, "PING_INTERVAL", time.Second, "ping")
	l.Int(&queue, "SEND_QUEUE", 1, "queue")
	err := l.Parse(nil)
	if err == nil || !strings.Contains(err.Error(), `PING_INTERVAL="3"`) || !strings.Contains(err.Error(), `SEND_QUEUE="many"`) {
		t.Fatalf("want both bad values reported, got %v", err)
	}
	if err := New("test", func(string) string { return "" }, io.Discard).Parse([]string{"-h"}); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("-h: %v", err)
	}
	if err := New("test", func(string) string { return "" }, io.Discard).Parse([]string{"extra"}); err == nil {
		t.Fatal("stray argument accepted")
	}
}
