package gateway

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/prometheus/client_golang/prometheus"
)

// The reader gets bytes in whatever pieces the socket gives: a frame's
// header, mask and payload may be split anywhere, and several frames may
// come in one piece. Whatever the split, the client gets the same answers,
// in order.
func TestFramesSplitAnywhere(t *testing.T) {
	var stream bytes.Buffer
	for _, f := range []ws.Frame{
		ws.NewPingFrame([]byte("p1")),
		ws.NewTextFrame([]byte("__ping__")),
		ws.NewTextFrame([]byte(`{"type":"message",`)),
		ws.NewFrame(ws.OpText, false, []byte("__pi")),
		ws.NewPingFrame([]byte("p2")), // control frames may come between fragments
		ws.NewFrame(ws.OpContinuation, true, []byte("ng__")),
		ws.NewTextFrame([]byte(`{"type":"message","message":` + strings.Repeat(" ", 300))), // 16-bit length
		ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusNormalClosure, "")),
	} {
		if err := ws.WriteFrame(&stream, ws.MaskFrame(f)); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{"pong p1", "text __ping__", "error bad_json", "pong p2", "text __ping__", "error bad_json", "close 1000"}

	cfg := keepaliveConfig()
	g := New(cfg, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	t.Cleanup(g.closeIO)
	for size := 1; size <= stream.Len(); size++ {
		srv, cli := net.Pipe()
		done := make(chan struct{})
		go func() {
			c := newConn(g, srv)
			c.start(nil, "", false, g.hub.add(c))
			close(done)
		}()
		go func() {
			for b := stream.Bytes(); len(b) > 0; b = b[min(size, len(b)):] {
				if _, err := cli.Write(b[:min(size, len(b))]); err != nil {
					return
				}
			}
		}()
		cli.SetReadDeadline(time.Now().Add(10 * time.Second))
		var got []string
		for {
			h, p, err := readFrame(t, cli)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("pieces of %d bytes: %v after %q", size, err, got)
			}
			switch h.OpCode {
			case ws.OpPong:
				got = append(got, "pong "+string(p))
			case ws.OpClose:
				code, _ := ws.ParseCloseFrameData(p)
				got = append(got, fmt.Sprint("close ", code))
			case ws.OpText:
				if bytes.Contains(p, []byte(`"code":"bad_json"`)) {
					got = append(got, "error bad_json")
				} else {
					got = append(got, "text "+string(p))
				}
			default:
				got = append(got, fmt.Sprint("opcode ", h.OpCode))
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("pieces of %d bytes: got %q, want %q", size, got, want)
		}
		cli.Close()
		<-done
	}
}

// A frame trickled a byte per read costs work linear in its size, not
// quadratic: a client cannot make the shared readers copy its message over
// and over.
func TestTrickledFrameCostsLinearWork(t *testing.T) {
	g := New(keepaliveConfig(), slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	t.Cleanup(g.closeIO)
	srv, cli := net.Pipe()
	defer cli.Close()
	c := newConn(g, srv)
	frame, err := ws.CompileFrame(ws.MaskFrame(ws.NewTextFrame([]byte(`"` + strings.Repeat("x", 60<<10) + `"`))))
	if err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for i := range frame {
		if !c.consume(frame[i : i+1]) {
			t.Fatal("the connection ended")
		}
	}
	runtime.ReadMemStats(&after)
	// Doubling growth of one buffer is under 4× the frame; a copy per
	// read would be tens of thousands of times that.
	if got := after.TotalAlloc - before.TotalAlloc; got > 8*uint64(len(frame)) {
		t.Fatalf("a %d-byte frame a byte at a time allocated %d bytes", len(frame), got)
	}
}
