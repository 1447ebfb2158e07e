package protocol

import (
	"fmt"
	"testing"
)

// The per-message work of the wire contract: decoding what a client sends,
// encoding what everyone receives, and what the gateway reads back from a
// frame NATS delivers. Each reports its allocations.

var clientMessage = []byte(`{"type":"message","name":"alice","message":"a message of about sixty-four bytes, typed by a person at a keyboard","cid":"c-42"}`)

func BenchmarkDecodeClient(b *testing.B) {
	b.ReportAllocs()
	b.SetBytes(int64(len(clientMessage)))
	for b.Loop() {
		if f, err := DecodeClient(clientMessage); err != nil || f.Type != TypeMessage {
			b.Fatal(f, err)
		}
	}
}

func BenchmarkMessageAppendJSON(b *testing.B) {
	m := Message{ID: "sbffeA2bjC72ezbp3iTSeK", Name: "alice", Message: "a message of about sixty-four bytes, typed by a person at a keyboard", TS: 1796409184351, CID: "c-42"}
	buf := m.AppendJSON(nil)
	b.ReportAllocs()
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		buf = m.AppendJSON(buf[:0])
	}
}

// BenchmarkMessageAppendJSONEscaped is a message full of what JSON must
// escape and what browsers must not be sent raw.
func BenchmarkMessageAppendJSONEscaped(b *testing.B) {
	m := Message{ID: "sbffeA2bjC72ezbp3iTSeK", Name: "zoë", Message: "\"quotes\", <tags> & \\backslashes\\\n\tand emoji 😀 and \u2028 separators", TS: 1796409184351}
	buf := m.AppendJSON(nil)
	b.ReportAllocs()
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		buf = m.AppendJSON(buf[:0])
	}
}

func BenchmarkMessageTS(b *testing.B) {
	frame := Message{ID: "sbffeA2bjC72ezbp3iTSeK", Name: "alice", Message: "hi", TS: 1796409184351}.AppendJSON(nil)
	b.ReportAllocs()
	for b.Loop() {
		if ts, ok := MessageTS(frame); !ok || ts != 1796409184351 {
			b.Fatal(ts, ok)
		}
	}
}

func BenchmarkNoticeAppendJSON(b *testing.B) {
	n := Notice{Type: TypeLeave, Name: "bob", Reason: ReasonClosed, V: 123456, TS: 1796409184351}
	buf := n.AppendJSON(nil)
	b.ReportAllocs()
	for b.Loop() {
		buf = n.AppendJSON(buf[:0])
	}
}

func BenchmarkNormalizeHandle(b *testing.B) {
	for _, h := range []string{"alice", "  Zoë Ångström  "} {
		b.Run(fmt.Sprintf("%q", h), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := NormalizeHandle(h); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkRosterAppendClientJSON is the roster a client gets on joining a
// room of 1,000.
func BenchmarkRosterAppendClientJSON(b *testing.B) {
	r := Roster{Count: 1000, V: 99}
	for i := range 1000 {
		r.Handles = append(r.Handles, fmt.Sprintf("user-%04d", i))
	}
	buf := r.AppendClientJSON(nil)
	b.ReportAllocs()
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		buf = r.AppendClientJSON(buf[:0])
	}
}
