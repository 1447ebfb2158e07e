package testkit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/fly-chat/chat/pkg/protocol"
)

// Client is a websocket client that speaks raw frames, so tests can send
// what browsers would never send and see exactly what the gateway answers.
// One goroutine at a time may read and one may write.
type Client struct {
	t        testing.TB
	Conn     net.Conn
	r        io.Reader // buffered handshake leftovers, then Conn
	Protocol string    // the negotiated subprotocol
}

// DialOptions tune Dial.
type DialOptions struct {
	Protocols  []string
	Header     http.Header
	ReadBuffer int // SO_RCVBUF for the client socket, to make a slow reader quickly
}

// Dial connects to a gateway's websocket URL ("ws://127.0.0.1:port/ws") and
// fails the test if the upgrade does not succeed. The client is closed when
// the test ends.
func Dial(t testing.TB, url string, opts ...DialOptions) *Client {
	t.Helper()
	c, err := DialErr(url, opts...)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	c.t = t
	t.Cleanup(func() { c.Conn.Close() })
	return c
}

// DialErr is Dial returning the error, a ws.StatusError for an HTTP refusal.
// The caller closes the client.
func DialErr(url string, opts ...DialOptions) (*Client, error) {
	var o DialOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	d := ws.Dialer{Timeout: 10 * time.Second, Protocols: o.Protocols}
	if o.Header != nil {
		d.Header = ws.HandshakeHeaderHTTP(o.Header)
	}
	if o.ReadBuffer > 0 {
		nd := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, o.ReadBuffer)
			})
			return errors.Join(err, serr)
		}}
		d.NetDial = nd.DialContext
	}
	conn, br, hs, err := d.Dial(context.Background(), url)
	if err != nil {
		return nil, err
	}
	c := &Client{Conn: conn, r: conn, Protocol: hs.Protocol}
	if br != nil && br.Buffered() > 0 {
		c.r = io.MultiReader(br, conn)
	} else if br != nil {
		ws.PutReader(br)
	}
	return c, nil
}

// SendText sends one masked text frame.
func (c *Client) SendText(s string) error {
	return c.SendFrame(ws.NewTextFrame([]byte(s)))
}

// SendFrame sends f masked, as a client must.
func (c *Client) SendFrame(f ws.Frame) error {
	c.Conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	return ws.WriteFrame(c.Conn, ws.MaskFrameInPlace(f))
}

// Send sends a text frame and fails the test if it cannot.
func (c *Client) Send(s string) {
	c.t.Helper()
	if err := c.SendText(s); err != nil {
		c.t.Fatalf("send %q: %v", s, err)
	}
}

// Frame is what the client read: a text message, or the server's close.
type Frame struct {
	Text        string // text payload; empty for a close
	Closed      bool   // a close frame arrived
	CloseCode   int
	CloseReason string
}

// ErrNoClose is returned by Next when the connection ended without a close
// frame.
var ErrNoClose = errors.New("connection ended without a close frame")

// Next returns the next text frame or close frame within timeout, answering
// pings on the way (unless they are wanted: see NextRaw).
func (c *Client) Next(timeout time.Duration) (Frame, error) {
	deadline := time.Now().Add(timeout)
	for {
		h, p, err := c.NextRaw(deadline)
		if err != nil {
			return Frame{}, err
		}
		switch h.OpCode {
		case ws.OpText:
			return Frame{Text: string(p)}, nil
		case ws.OpClose:
			// Answer as a browser does, so the server can close at once.
			code, reason := ws.ParseCloseFrameData(p)
			c.SendFrame(ws.NewCloseFrame(ws.NewCloseFrameBody(code, "")))
			return Frame{Closed: true, CloseCode: int(code), CloseReason: reason}, nil
		case ws.OpPing:
			if err := c.SendFrame(ws.NewPongFrame(p)); err != nil {
				return Frame{}, err
			}
		case ws.OpPong:
		default:
			return Frame{}, fmt.Errorf("unexpected frame %v", h.OpCode)
		}
	}
}

// NextRaw reads one frame of any kind, whole (servers do not fragment ours).
func (c *Client) NextRaw(deadline time.Time) (ws.Header, []byte, error) {
	c.Conn.SetReadDeadline(deadline)
	h, err := ws.ReadHeader(c.r)
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) {
			err = fmt.Errorf("%w: %w", ErrNoClose, err)
		}
		return h, nil, err
	}
	if h.Masked {
		return h, nil, errors.New("server sent a masked frame")
	}
	p := make([]byte, h.Length)
	_, err = io.ReadFull(c.r, p)
	return h, p, err
}

// Expect reads until a frame satisfies ok and returns it, failing the test
// on a close, an error or the timeout. Frames that do not match are skipped.
func (c *Client) Expect(what string, timeout time.Duration, ok func(protocol.ServerFrame) bool) protocol.ServerFrame {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		f, err := c.Next(time.Until(deadline))
		if err != nil {
			c.t.Fatalf("waiting for %s: %v", what, err)
		}
		if f.Closed {
			c.t.Fatalf("waiting for %s: closed %d %q", what, f.CloseCode, f.CloseReason)
		}
		if f.Text == protocol.Ping {
			continue
		}
		sf, err := protocol.DecodeServer([]byte(f.Text))
		if err != nil {
			c.t.Fatalf("waiting for %s: undecodable frame %q: %v", what, f.Text, err)
		}
		if ok(sf) {
			return sf
		}
	}
}

// ExpectMessage waits for a chat message with this sender and text.
func (c *Client) ExpectMessage(name, text string, timeout time.Duration) protocol.ServerFrame {
	c.t.Helper()
	return c.Expect(fmt.Sprintf("message %s:%q", name, text), timeout, func(f protocol.ServerFrame) bool {
		return f.Type == protocol.TypeMessage && f.Name == name && f.Message == text
	})
}

// ExpectError waits for an error frame with this code.
func (c *Client) ExpectError(code string, timeout time.Duration) protocol.ServerFrame {
	c.t.Helper()
	return c.Expect("error "+code, timeout, func(f protocol.ServerFrame) bool {
		return f.Type == protocol.TypeError && f.Code == code
	})
}

// ExpectClose reads, skipping text, until the close frame and checks its code.
func (c *Client) ExpectClose(code int, timeout time.Duration) Frame {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		f, err := c.Next(time.Until(deadline))
		if err != nil {
			c.t.Fatalf("waiting for close %d: %v", code, err)
		}
		if f.Closed {
			if f.CloseCode != code {
				c.t.Fatalf("closed with %d %q, want %d", f.CloseCode, f.CloseReason, code)
			}
			return f
		}
	}
}
