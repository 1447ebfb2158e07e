package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// SubjectMsg is the NATS subject every chat message travels on. Its payload
// is exactly the "message" frame clients receive.
const SubjectMsg = "msg"

// Ping is the original client's text keepalive. A gateway answers it with the
// same text to the sender only.
const Ping = "__ping__"

// Frame types.
const (
	TypeMessage = "message" // both directions
	TypeStatus  = "status"  // client → gateway: binds the handle
	TypeWho     = "who"     // client → gateway: asks for the roster
	TypeError   = "error"   // gateway → client
)

// ClientFrame is a decoded client → gateway frame.
type ClientFrame struct {
	Type    string `json:"type"`
	Name    string `json:"name"`
	Message string `json:"message"`
	CID     string `json:"cid"` // optional: the client's id for a message, echoed back (see Message)
}

// MaxCIDBytes bounds a client message id.
const MaxCIDBytes = 64

// DecodeClient decodes one client text frame (not Ping). Its errors are
// *Error values with CodeBadJSON or CodeUnknownType, ready to send back.
func DecodeClient(data []byte) (ClientFrame, error) {
	var f ClientFrame
	if err := json.Unmarshal(data, &f); err != nil {
		return f, decodeError(err)
	}
	if len(f.CID) > MaxCIDBytes {
		return f, &Error{Code: CodeBadJSON, Message: "cid is longer than 64 bytes"}
	}
	switch f.Type {
	case TypeMessage, TypeStatus, TypeWho:
		return f, nil
	case "":
		return f, &Error{Code: CodeUnknownType, Message: `frame has no "type"`}
	default:
		return f, &Error{Code: CodeUnknownType, Message: "unknown frame type " + strconv.Quote(truncate(f.Type, 32))}
	}
}

func decodeError(err error) *Error {
	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &typeErr) {
		if typeErr.Field == "" {
			return &Error{Code: CodeBadJSON, Message: "malformed JSON: a frame must be an object"}
		}
		return &Error{Code: CodeBadJSON, Message: fmt.Sprintf("malformed JSON: %q must be a %s", typeErr.Field, typeErr.Type)}
	}
	return &Error{Code: CodeBadJSON, Message: "malformed JSON"}
}

// Message is a chat message as the gateway stamped it.
type Message struct {
	ID      string // unique per message, assigned by the accepting gateway
	Name    string // the sender's handle
	Message string // the text, as the sender wrote it
	TS      int64  // the accepting gateway's clock, unix milliseconds
	CID     string // the sender's own id for it, if it gave one: how it recognises its message
}

// AppendJSON appends m's wire form, the "message" frame, to dst.
func (m Message) AppendJSON(dst []byte) []byte {
	dst = append(dst, `{"type":"message","id":`...)
	dst = appendString(dst, m.ID)
	dst = append(dst, `,"name":`...)
	dst = appendString(dst, m.Name)
	dst = append(dst, `,"message":`...)
	dst = appendString(dst, m.Message)
	dst = append(dst, `,"ts":`...)
	dst = strconv.AppendInt(dst, m.TS, 10)
	if m.CID != "" {
		dst = append(dst, `,"cid":`...)
		dst = appendString(dst, m.CID)
	}
	return append(dst, '}')
}

// Status is the gateway telling its clients about its link to the rest of
// the chat: {"type":"status","state":"reconnecting","name":"server","message":"…"}.
type Status struct {
	State   string // StateReconnecting or StateConnected
	Message string
}

// Status states.
const (
	StateReconnecting = "reconnecting"
	StateConnected    = "connected"
)

// StatusName is the "name" of status frames.
const StatusName = "server"

// AppendJSON appends s's wire form to dst.
func (s Status) AppendJSON(dst []byte) []byte {
	dst = append(dst, `{"type":"status","state":`...)
	dst = appendString(dst, s.State)
	dst = append(dst, `,"name":"`+StatusName+`","message":`...)
	dst = appendString(dst, s.Message)
	return append(dst, '}')
}

// ServerFrame is any gateway → client frame, decoded. Fields a type does not
// use stay zero. Gateways never decode these on their hot path; tests, tools
// and the load generator do.
type ServerFrame struct {
	Type    string   `json:"type"`
	ID      string   `json:"id,omitempty"`
	Name    string   `json:"name"`
	Message string   `json:"message"`
	TS      int64    `json:"ts,omitempty"`
	Code    string   `json:"code,omitempty"`    // error
	Reason  string   `json:"reason,omitempty"`  // leave
	V       uint64   `json:"v,omitempty"`       // join, leave, presence
	Handles []string `json:"handles,omitempty"` // presence
	Count   int      `json:"count,omitempty"`   // presence
	State   string   `json:"state,omitempty"`   // status
	CID     string   `json:"cid,omitempty"`     // message, error
}

// DecodeServer decodes a gateway → client frame.
func DecodeServer(data []byte) (ServerFrame, error) {
	var f ServerFrame
	err := json.Unmarshal(data, &f)
	return f, err
}

// IsPing reports whether a text frame is the Ping keepalive.
func IsPing(data []byte) bool { return bytes.Equal(data, pingBytes) }

var pingBytes = []byte(Ping)

// appendString appends s as a JSON string. It escapes what encoding/json
// escapes (including <, > and & so a frame is safe to embed in HTML, and
// U+2028/U+2029 for old JavaScript parsers) and replaces invalid UTF-8 with
// U+FFFD.
func appendString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < 0x80 {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hex[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "…"
}

var tsKey = []byte(`"ts":`)

// MessageTS finds the server timestamp of a "message" frame without
// decoding it. In valid JSON the bytes "ts": can only be a key: a quote
// inside a string is always escaped.
func MessageTS(frame []byte) (int64, bool) {
	i := bytes.LastIndex(frame, tsKey)
	if i < 0 {
		return 0, false
	}
	var ts int64
	n := 0
	for _, c := range frame[i+len(tsKey):] {
		if c < '0' || c > '9' {
			break
		}
		ts = ts*10 + int64(c-'0')
		n++
	}
	return ts, n > 0 && n < 19
}
