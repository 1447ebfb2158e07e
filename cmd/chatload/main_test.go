package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// chatload never targets anything but loopback.
func TestRefusesAddressesOffLoopback(t *testing.T) {
	for _, url := range []string{"ws://10.0.0.1:8080/ws", "ws://example.com/ws", "ws://[fdaa::3]:8080/ws"} {
		var out, errs bytes.Buffer
		err := run(context.Background(), []string{"-url", url, "-clients", "1", "-senders", "1"}, &out, &errs)
		if err == nil || !strings.Contains(err.Error(), "loopback") {
			t.Errorf("%s: %v, want a refusal naming loopback", url, err)
		}
	}
}

// A small run against a fresh gateway reports every delivery, and its JSON
// line agrees with what was sent.
func TestSmallBroadcast(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts a gateway")
	}
	var out bytes.Buffer
	var errs lockedBuffer // the gateway's stderr is copied into it too
	args := []string{"-clients", "40", "-senders", "4", "-rate", "40", "-duration", "1s", "-settle", "0"}
	if err := run(t.Context(), args, &out, &errs); err != nil {
		t.Fatalf("%v\n%s", err, errs.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	var r report
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &r); err != nil {
		t.Fatalf("last line is not the JSON report: %v\n%s", err, out.String())
	}
	t.Logf("\n%s", out.String())
	switch {
	case r.Clients != 40 || r.Sent < 20:
		t.Fatalf("ramped %d clients, sent %d messages", r.Clients, r.Sent)
	case r.Expected != r.Sent*40 || r.Delivered != r.Expected || r.Lost != 0 || r.Duplicates != 0:
		t.Fatalf("expected %d deliveries, got %d, lost %d, duplicates %d", r.Expected, r.Delivered, r.Lost, r.Duplicates)
	case r.RSSIdle <= 0 || r.CPUSeconds <= 0 || r.P99MS <= 0:
		t.Fatalf("missing figures: %+v", r)
	}
}
