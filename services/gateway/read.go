package gateway

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"unicode/utf8"

	"github.com/gobwas/ws"

	"github.com/fly-chat/chat/pkg/protocol"
)

// reader is a connection's incoming-bytes state. Bytes arrive in whatever
// pieces the socket gives (from the epoll workers, or the fallback
// goroutine); consume turns them into frames. It is owned by whoever holds
// conn.readMu. An idle connection holds no buffer at all: stash and msg
// exist only while a frame or a message is incomplete.
type reader struct {
	stash  []byte // bytes of an unfinished frame, carried to the next read
	msg    []byte // the fragmented text message being assembled
	inFrag bool   // a fragmented text message is in progress
	skip   int64  // payload bytes still to discard (a refused frame, or everything after a broken header)
	ended  bool   // teardown began: nothing more is read
}

var errIncomplete = errors.New("incomplete frame header")

// parseHeader decodes a frame header at the start of b, returning its length.
func parseHeader(b []byte) (h ws.Header, n int, err error) {
	if len(b) < 2 {
		return h, 0, errIncomplete
	}
	h.Fin = b[0]&0x80 != 0
	h.Rsv = (b[0] & 0x70) >> 4
	h.OpCode = ws.OpCode(b[0] & 0x0f)
	h.Masked = b[1]&0x80 != 0
	n = 2
	switch l := b[1] & 0x7f; l {
	case 126:
		if len(b) < 4 {
			return h, 0, errIncomplete
		}
		h.Length, n = int64(binary.BigEndian.Uint16(b[2:])), 4
	case 127:
		if len(b) < 10 {
			return h, 0, errIncomplete
		}
		v := binary.BigEndian.Uint64(b[2:])
		if v>>63 != 0 {
			return h, 0, ws.ErrHeaderLengthMSB
		}
		h.Length, n = int64(v), 10
	default:
		h.Length = int64(l)
	}
	if h.Masked {
		if len(b) < n+4 {
			return h, 0, errIncomplete
		}
		copy(h.Mask[:], b[n:n+4])
		n += 4
	}
	return h, n, nil
}

// consume handles bytes just read from the socket. It reports false once the
// connection is over from the reading side: the peer closed, or teardown
// began. data is not kept: whatever is left unfinished is copied.
func (c *conn) consume(data []byte) bool {
	c.readMu.Lock()
	defer c.readMu.Unlock()
	return c.consumeLocked(data)
}

// consumeLocked is consume, for a caller holding readMu.
func (c *conn) consumeLocked(data []byte) bool {
	rd := &c.rd
	if rd.ended {
		return false
	}
	stashed := len(rd.stash) > 0
	if stashed {
		rd.stash = append(rd.stash, data...) // amortized: a frame trickled a byte at a time costs linear work
		data = rd.stash
	}
	more := c.frames(&data)
	switch {
	case !more || len(data) == 0:
		rd.stash = nil // an idle connection holds no buffer
	case stashed: // the rest is the stash's tail: move it to the front
		rd.stash = rd.stash[:copy(rd.stash, data)]
	default: // the rest is in the caller's buffer
		rd.stash = bytes.Clone(data)
	}
	return more
}

// frames handles every complete frame at the start of *data, leaving the
// unfinished rest in *data. It reports false when the peer's close frame
// has come.
func (c *conn) frames(data *[]byte) bool {
	rd := &c.rd
	for len(*data) > 0 {
		d := *data
		if rd.skip > 0 {
			n := min(rd.skip, int64(len(d)))
			*data, rd.skip = d[n:], rd.skip-n
			continue
		}
		h, hlen, err := parseHeader(d)
		if errors.Is(err, errIncomplete) {
			return true
		}
		if err != nil {
			// Nothing after a broken header can be parsed: say why, then
			// discard everything until the peer leaves or the close grace ends.
			c.fail(protocol.CloseProtocolError, "malformed frame header", reasonProtocol)
			*data, rd.skip = nil, math.MaxInt64
			return true
		}
		c.lastRead.Store(c.now())
		if c.isClosing() { // discarding, until the peer's close frame
			if h.OpCode == ws.OpClose {
				return false
			}
			*data, rd.skip = d[hlen:], h.Length
			continue
		}
		if code, text, reason := c.check(h, rd.inFrag, len(rd.msg)); code != 0 {
			c.fail(code, text, reason)
			*data, rd.skip = d[hlen:], h.Length // skip its payload, so the next header is a header
			continue
		}
		end := int64(hlen) + h.Length // check bounded it by the message size limit
		if int64(len(d)) < end {
			return true
		}
		p := d[hlen:end]
		ws.Cipher(p, h.Mask, 0)
		*data = d[end:]
		switch {
		case h.OpCode.IsControl():
			if !c.control(h.OpCode, p) {
				return false
			}
		case !rd.inFrag && h.Fin: // a whole message in one frame: no copy
			c.text(p)
		default:
			rd.msg = append(rd.msg, p...)
			if rd.inFrag = !h.Fin; !rd.inFrag {
				c.text(rd.msg)
				rd.msg = nil
			}
		}
	}
	return true
}

// check judges a frame header, given the bytes of a fragmented message
// already read. It returns a close code, and why, for a frame to reject.
func (c *conn) check(h ws.Header, inFrag bool, have int) (code int, text, reason string) {
	op := h.OpCode
	switch {
	case h.Rsv != 0 || !h.Masked:
		return protocol.CloseProtocolError, "frames must be masked, without extensions", reasonProtocol
	case op.IsReserved():
		return protocol.CloseProtocolError, "reserved opcode", reasonProtocol
	case op.IsControl():
		if !h.Fin || h.Length > ws.MaxControlFramePayloadSize {
			return protocol.CloseProtocolError, "bad control frame", reasonProtocol
		}
		return 0, "", ""
	case op == ws.OpBinary:
		return protocol.CloseUnsupported, "binary frames are not supported", reasonBinary
	case op == ws.OpText && inFrag, op == ws.OpContinuation && !inFrag:
		return protocol.CloseProtocolError, "unexpected frame", reasonProtocol
	case h.Length > int64(c.g.cfg.MaxMessageBytes-have): // written so it cannot overflow
		return protocol.CloseTooBig, "message too big", reasonTooBig
	}
	return 0, "", ""
}

// text handles one complete text message; it is not kept after the call.
func (c *conn) text(msg []byte) {
	if !utf8.Valid(msg) {
		c.fail(protocol.CloseInvalidData, "text must be UTF-8", reasonInvalidUTF8)
		return
	}
	c.handleText(msg)
}

// control handles a ping, pong or close frame. It reports whether to keep
// reading.
func (c *conn) control(op ws.OpCode, p []byte) bool {
	switch op {
	case ws.OpPing:
		if c.allow() { // a ping flood gets no pongs
			c.send(compileFrame(ws.OpPong, p))
		}
	case ws.OpClose:
		code, reason := ws.ParseCloseFrameData(p)
		switch {
		case len(p) == 0:
			c.setCause(1005, reasonClient) // 1005: closed without a status code
			c.sendClose(protocol.CloseNormal, "", reasonClient, false)
		case ws.CheckCloseFrameData(code, reason) != nil:
			c.sendClose(protocol.CloseProtocolError, "bad close frame", reasonProtocol, false)
		default:
			c.setCause(int(code), reasonClient)
			c.sendClose(int(code), "", reasonClient, false)
		}
		return false
	}
	return true // a pong needs nothing: reading it updated lastRead
}

// readBuf is what the fallback reader reads into at a time.
const readBuf = 4096

// readLoop is the portable reader, for sockets the epoll reader cannot take
// (other systems, IO_MODE=goroutine, pipes in tests): a goroutine blocked in
// Read for the connection's life.
func (c *conn) readLoop(r io.Reader) {
	defer c.teardown()
	buf := make([]byte, readBuf)
	for {
		n, err := r.Read(buf)
		if n > 0 && !c.consume(buf[:n]) {
			return
		}
		if err != nil {
			c.setCause(1006, reasonEOF)
			return
		}
	}
}
