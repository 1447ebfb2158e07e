package gateway

import (
	"encoding/binary"

	"github.com/gobwas/ws"

	"github.com/fly-chat/chat/pkg/protocol"
)

// Frames every connection may be sent, compiled once.
var (
	pingFrame = compileFrame(ws.OpPing, nil)
	pingReply = compileFrame(ws.OpText, []byte(protocol.Ping))
)

// compileFrame returns a complete, unmasked server frame in one allocation,
// ready to be written to any number of sockets.
func compileFrame(op ws.OpCode, payload []byte) []byte {
	n := len(payload)
	b := make([]byte, 0, ws.MaxHeaderSize-4+n)
	b = append(b, 0x80|byte(op)) // FIN, no extensions
	switch {
	case n < 126:
		b = append(b, byte(n))
	case n <= 0xffff:
		b = append(b, 126, byte(n>>8), byte(n))
	default:
		b = append(b, 127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	return append(b, payload...)
}
