package gateway_test

import (
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"testing"

	"github.com/gobwas/ws"

	"github.com/fly-chat/chat/internal/testkit"
	"github.com/fly-chat/chat/pkg/protocol"
)

// maxMessage is the gateway's default MAX_MESSAGE_BYTES.
const maxMessage = 64 << 10

// messageOfSize is a message frame of exactly n bytes.
func messageOfSize(n int) string {
	const head, tail = `{"type":"message","message":"`, `"}`
	return head + strings.Repeat("x", n-len(head)-len(tail)) + tail
}

// Each bad input gets its close code or error frame, and everyone else
// keeps chatting: after each case a bystander's message still reaches a
// watcher on the same gateway.
// It runs with either way of reading sockets.
func TestBadInput(t *testing.T) {
	for _, mode := range ioModes {
		t.Run(mode, func(t *testing.T) { testBadInput(t, mode) })
	}
}

// ioModes are the values of IO_MODE.
var ioModes = []string{"epoll", "goroutine"}

func testBadInput(t *testing.T, mode string) {
	ns := testkit.StartNATS(t)
	g := startGateway(t, ns.ClientURL(), map[string]string{"IO_MODE": mode})
	bystander, watcher := join(t, g, "bystander"), join(t, g, "watcher")

	tests := []struct {
		name      string
		url       string     // default: bound as "bad"
		send      []ws.Frame // sent in order
		wantClose int        // 0: the connection stays open
		wantError string     // error frame code expected first, if any
	}{
		{name: "frame over the limit", send: []ws.Frame{text(messageOfSize(maxMessage + 1))}, wantClose: protocol.CloseTooBig},
		{name: "fragments over the limit", send: []ws.Frame{
			ws.NewFrame(ws.OpText, false, []byte(messageOfSize(maxMessage)[:maxMessage/2])),
			ws.NewFrame(ws.OpContinuation, true, []byte(messageOfSize(maxMessage)[maxMessage/2:]+" ")),
		}, wantClose: protocol.CloseTooBig},
		{name: "invalid UTF-8", send: []ws.Frame{text("{\"type\":\"message\",\"message\":\"\xff\xfe\"}")}, wantClose: protocol.CloseInvalidData},
		{name: "UTF-8 cut short at the end of the last fragment", send: []ws.Frame{
			ws.NewFrame(ws.OpText, false, []byte("{\"type\":\"message\",\"message\":\"\xc3")),
			ws.NewFrame(ws.OpContinuation, true, []byte("\"}")),
		}, wantClose: protocol.CloseInvalidData},
		{name: "length that overflows", send: []ws.Frame{
			ws.NewFrame(ws.OpText, false, []byte(`{"type":"me`)),
			{Header: ws.Header{Fin: true, OpCode: ws.OpContinuation, Length: math.MaxInt64 - 5}},
		}, wantClose: protocol.CloseTooBig},
		{name: "reserved data opcode", send: []ws.Frame{ws.NewFrame(ws.OpCode(0x3), true, []byte("x"))}, wantClose: protocol.CloseProtocolError},
		{name: "reserved control opcode", send: []ws.Frame{ws.NewFrame(ws.OpCode(0xb), true, []byte("x"))}, wantClose: protocol.CloseProtocolError},
		{name: "binary frame", send: []ws.Frame{ws.NewBinaryFrame([]byte(`{"type":"message","message":"hi"}`))}, wantClose: protocol.CloseUnsupported},
		{name: "continuation without a start", send: []ws.Frame{ws.NewFrame(ws.OpContinuation, true, []byte("x"))}, wantClose: protocol.CloseProtocolError},
		{name: "oversized ping", send: []ws.Frame{ws.NewPingFrame(make([]byte, 126))}, wantClose: protocol.CloseProtocolError},
		{name: "bad handle in the URL", url: g.ws + "?handle=%E3%85%A4", wantError: protocol.CodeBadHandle, wantClose: protocol.ClosePolicy},
		{name: "empty handle in the URL", url: g.ws + "?handle=", wantError: protocol.CodeBadHandle, wantClose: protocol.ClosePolicy},
		{name: "bad handle in a status frame", url: g.ws, send: []ws.Frame{text(`{"type":"status","name":"a\u200bb"}`)}, wantError: protocol.CodeBadHandle, wantClose: protocol.ClosePolicy},
		{name: "reserved handle", url: g.ws, send: []ws.Frame{text(`{"type":"status","name":"Error"}`)}, wantError: protocol.CodeBadHandle, wantClose: protocol.ClosePolicy},
		{name: "malformed JSON", send: []ws.Frame{text(`{"type":"message",`)}, wantError: protocol.CodeBadJSON},
		{name: "not an object", send: []ws.Frame{text(`["message","hi"]`)}, wantError: protocol.CodeBadJSON},
		{name: "wrong field type", send: []ws.Frame{text(`{"type":"message","message":42}`)}, wantError: protocol.CodeBadJSON},
		{name: "unknown type", send: []ws.Frame{text(`{"type":"join","name":"bad"}`)}, wantError: protocol.CodeUnknownType},
		{name: "no type", send: []ws.Frame{text(`{"message":"hi"}`)}, wantError: protocol.CodeUnknownType},
		{name: "empty message", send: []ws.Frame{text(`{"type":"message","message":"  \n "}`)}, wantError: protocol.CodeEmptyMessage},
		{name: "message before a handle", url: g.ws, send: []ws.Frame{text(`{"type":"message","message":"hi"}`)}, wantError: protocol.CodeNoHandle},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			url := tt.url
			if url == "" {
				url = g.ws + "?handle=bad"
			}
			bad := testkit.Dial(t, url)
			for _, f := range tt.send {
				if err := bad.SendFrame(f); err != nil {
					t.Fatal(err)
				}
			}
			if tt.wantError != "" {
				f := bad.ExpectError(tt.wantError, wait)
				if f.Name != protocol.ErrorName || f.Message == "" {
					t.Fatalf("error frame not readable as name:message: %+v", f)
				}
			}
			if tt.wantClose != 0 {
				f := bad.ExpectClose(tt.wantClose, wait)
				t.Logf("closed %d %q", f.CloseCode, f.CloseReason)
				// The gateway finishes the closing handshake: a clean
				// end of stream, not a reset that could have cost the
				// client the close frame.
				if _, err := bad.Next(wait); !errors.Is(err, io.EOF) {
					t.Fatalf("after the close: %v, want EOF", err)
				}
			} else {
				// Still open, and still usable (the status frame binds
				// a connection that has no handle yet, and is ignored
				// by one that has).
				text := fmt.Sprintf("bad recovered %d", i)
				bad.Send(`{"type":"status","name":"bad"}`)
				bad.Send(`{"type":"message","message":"` + text + `"}`)
				bad.ExpectMessage("bad", text, wait)
			}
			text := fmt.Sprintf("bystander after %d", i)
			bystander.Send(`{"type":"message","message":"` + text + `"}`)
			watcher.ExpectMessage("bystander", text, wait)
		})
	}
}

// Limits are inclusive, fragments are reassembled, and a client's websocket
// ping gets a pong.
func TestWellFormedEdgeCases(t *testing.T) {
	ns := testkit.StartNATS(t)
	g := startGateway(t, ns.ClientURL())
	c := join(t, g, "edge")

	big := messageOfSize(maxMessage)
	c.Send(big)
	c.ExpectMessage("edge", big[len(`{"type":"message","message":"`):len(big)-2], wait)

	for _, f := range []ws.Frame{
		ws.NewFrame(ws.OpText, false, []byte(`{"type":"message",`)),
		ws.NewPingFrame([]byte("between fragments")),
		ws.NewFrame(ws.OpContinuation, false, []byte(`"message":"in three `)),
		ws.NewFrame(ws.OpContinuation, true, []byte(`parts é"}`)),
	} {
		if err := c.SendFrame(f); err != nil {
			t.Fatal(err)
		}
	}
	h, p, err := c.NextRaw(deadline())
	if err != nil || h.OpCode != ws.OpPong || string(p) != "between fragments" {
		t.Fatalf("want pong, got %v %q %v", h.OpCode, p, err)
	}
	c.ExpectMessage("edge", "in three parts é", wait)

	// A character split across two fragments is fine.
	for _, f := range []ws.Frame{
		ws.NewFrame(ws.OpText, false, []byte("{\"type\":\"message\",\"message\":\"caf\xc3")),
		ws.NewFrame(ws.OpContinuation, true, []byte("\xa9\"}")),
	} {
		if err := c.SendFrame(f); err != nil {
			t.Fatal(err)
		}
	}
	c.ExpectMessage("edge", "café", wait)

	// A client's close is answered with the same code.
	if err := c.SendFrame(ws.NewCloseFrame(ws.NewCloseFrameBody(4000, "bye"))); err != nil {
		t.Fatal(err)
	}
	c.ExpectClose(4000, wait)
}

func text(s string) ws.Frame { return ws.NewTextFrame([]byte(s)) }
