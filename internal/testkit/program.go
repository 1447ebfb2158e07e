package testkit

import (
	"bytes"
	"context"
	"io"
	"maps"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// RunFunc is a program's run function, the way each service's Run is shaped.
type RunFunc func(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error

// Program is a whole program running in-process.
type Program struct {
	// Attrs are the attributes of the log line that announced the program
	// was listening, such as "addr" and "ops_addr".
	Attrs map[string]string

	cancel context.CancelFunc
	done   chan error
	out    *testWriter
	err    error
	once   sync.Once
}

// Start runs run with env as its whole environment, waits for the log line
// whose message contains ready, and stops the program when the test ends,
// failing the test unless it returned nil.
func Start(t testing.TB, run RunFunc, env map[string]string, ready string) *Program {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	p := &Program{cancel: cancel, done: make(chan error, 1), out: &testWriter{w: t.Output(), ready: ready, attrs: make(chan map[string]string, 1)}}
	env = maps.Clone(env)
	go func() { p.done <- run(ctx, nil, func(k string) string { return env[k] }, p.out) }()
	t.Cleanup(func() {
		if err := p.Stop(); err != nil {
			t.Errorf("program returned %v", err)
		}
	})
	select {
	case p.Attrs = <-p.out.attrs:
	case err := <-p.done:
		p.done <- err
		t.Fatalf("program exited before it was ready: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatalf("program not ready: no log line %q", ready)
	}
	return p
}

// Stop cancels the program's context, as SIGTERM does, and returns what its
// run function returned. Later calls return the same.
func (p *Program) Stop() error {
	p.once.Do(func() {
		p.cancel()
		select {
		case p.err = <-p.done:
		case <-time.After(60 * time.Second):
			p.err = context.DeadlineExceeded
		}
		p.out.close()
	})
	return p.err
}

// testWriter copies a program's log to the test's output, looks for the
// ready line, and drops writes once the program is stopped (a goroutine of
// the program may still log after run returned).
type testWriter struct {
	mu     sync.Mutex
	w      io.Writer
	closed bool
	ready  string
	attrs  chan map[string]string
	seen   bool
}

var attrRE = regexp.MustCompile(`(\w+)=("(?:[^"\\]|\\.)*"|\S*)`)

func (w *testWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return len(b), nil
	}
	w.w.Write(b)
	if !w.seen && bytes.Contains(b, []byte(w.ready)) {
		w.seen = true
		attrs := make(map[string]string)
		for _, m := range attrRE.FindAllStringSubmatch(string(b), -1) {
			attrs[m[1]] = strings.Trim(m[2], `"`)
		}
		w.attrs <- attrs
	}
	return len(b), nil
}

func (w *testWriter) close() {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
}
