package gateway

import (
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fly-chat/chat/internal/testkit"
)

// FuzzConnFrames feeds a connection arbitrary bytes after the upgrade: a
// real gateway on a real NATS server, the client end a pipe. Whatever
// arrives, the connection must end once the client goes, without a panic,
// and without leaving its writer behind.
func FuzzConnFrames(f *testing.F) {
	frame := func(fr ws.Frame) []byte {
		b, _ := ws.CompileFrame(ws.MaskFrameInPlace(fr))
		return b
	}
	f.Add(frame(ws.NewTextFrame([]byte(`{"type":"status","name":"alice"}`))))
	f.Add(append(frame(ws.NewTextFrame([]byte(`{"type":"status","name":"bob"}`))), frame(ws.NewTextFrame([]byte(`{"type":"message","message":"hi","cid":"1"}`)))...))
	f.Add(frame(ws.NewTextFrame([]byte("__ping__"))))
	f.Add(frame(ws.NewFrame(ws.OpText, false, []byte(`{"type":"me`))))
	f.Add(frame(ws.NewCloseFrame(ws.NewCloseFrameBody(1000, "bye"))))
	f.Add(frame(ws.NewPingFrame([]byte("p"))))
	f.Add(frame(ws.NewBinaryFrame([]byte{0, 1, 2})))
	f.Add([]byte{0x81, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))

	ns := testkit.StartNATS(f)
	cfg, err := LoadConfig(nil, func(k string) string {
		return map[string]string{"NATS_URL": ns.ClientURL(), "RATE_LIMIT": "1e6", "RATE_BURST": "1000000"}[k]
	}, io.Discard)
	if err != nil {
		f.Fatal(err)
	}
	g := New(cfg, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	if err := g.Connect(); err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { g.stopBackground(); g.nc.Close(); g.closeIO() })

	f.Fuzz(func(t *testing.T, data []byte) {
		srv, cli := net.Pipe()
		c := newConn(g, srv)
		done := make(chan struct{})
		go func() {
			c.start(nil, "", false, g.hub.add(c))
			close(done)
		}()
		go io.Copy(io.Discard, cli) // whatever the gateway answers
		cli.SetWriteDeadline(time.Now().Add(time.Second))
		cli.Write(data)
		cli.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("the connection did not end after the client left (%d bytes sent)", len(data))
		}
	})
}
