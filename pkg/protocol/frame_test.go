package protocol

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestDecodeClient(t *testing.T) {
	tests := []struct {
		in       string
		want     ClientFrame
		wantCode string
	}{
		{in: `{"type":"message","message":"hi"}`, want: ClientFrame{Type: "message", Message: "hi"}},
		{in: `{"type":"message","name":"alice","message":"hi"}`, want: ClientFrame{Type: "message", Name: "alice", Message: "hi"}},
		{in: `{"type":"status","name":"alice","message":"is now online"}`, want: ClientFrame{Type: "status", Name: "alice", Message: "is now online"}},
		{in: `{"type":"who"}`, want: ClientFrame{Type: "who"}},
		{in: `{"type":"who","extra":[1,2,{"x":null}]}`, want: ClientFrame{Type: "who"}},
		{in: `{"type":"join","name":"alice"}`, wantCode: CodeUnknownType},
		{in: `{"message":"hi"}`, wantCode: CodeUnknownType},
		{in: `{}`, wantCode: CodeUnknownType},
		{in: `{"type":"message","message":5}`, wantCode: CodeBadJSON},
		{in: `{"type":5}`, wantCode: CodeBadJSON},
		{in: `["message"]`, wantCode: CodeBadJSON},
		{in: `"message"`, wantCode: CodeBadJSON},
		{in: `null`, wantCode: CodeUnknownType},
		{in: `{"type":"message"`, wantCode: CodeBadJSON},
		{in: `hello`, wantCode: CodeBadJSON},
		{in: ``, wantCode: CodeBadJSON},
		{in: `{"type":"message","message":"hi"} {}`, wantCode: CodeBadJSON},
		{in: `{"type":"message","message":"hi","cid":"c-1"}`, want: ClientFrame{Type: "message", Message: "hi", CID: "c-1"}},
		{in: `{"type":"message","message":"hi","cid":"` + strings.Repeat("x", 65) + `"}`, wantCode: CodeBadJSON},
	}
	for _, tt := range tests {
		got, err := DecodeClient([]byte(tt.in))
		if tt.wantCode != "" {
			var perr *Error
			if !errors.As(err, &perr) || perr.Code != tt.wantCode {
				t.Errorf("DecodeClient(%s) error = %v, want code %s", tt.in, err, tt.wantCode)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("DecodeClient(%s) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
}

func TestMessageAppendJSON(t *testing.T) {
	m := Message{ID: "abc", Name: "alice", Message: `hi <b>"there"</b> & \ é 😀` + "\n\u2028", TS: 1733300000000}
	got := string(m.AppendJSON(nil))
	want := `{"type":"message","id":"abc","name":"alice","message":"hi \u003cb\u003e\"there\"\u003c/b\u003e \u0026 \\ é 😀\n\u2028","ts":1733300000000}`
	if got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	f, err := DecodeServer([]byte(got))
	if err != nil {
		t.Fatal(err)
	}
	if f.Type != TypeMessage || f.ID != m.ID || f.Name != m.Name || f.Message != m.Message || f.TS != m.TS {
		t.Fatalf("round trip: %+v", f)
	}
}

func TestCIDIsEchoed(t *testing.T) {
	m := string(Message{ID: "a", Name: "b", Message: "c", TS: 1, CID: "x1"}.AppendJSON(nil))
	if want := `{"type":"message","id":"a","name":"b","message":"c","ts":1,"cid":"x1"}`; m != want {
		t.Errorf("message %s, want %s", m, want)
	}
	e := string((&Error{Code: CodeUnavailable, Message: "m", CID: "x1"}).AppendJSON(nil))
	if want := `{"type":"error","code":"unavailable","name":"error","message":"m","cid":"x1"}`; e != want {
		t.Errorf("error %s, want %s", e, want)
	}
	st := string(Status{State: StateReconnecting, Message: "hold on"}.AppendJSON(nil))
	if want := `{"type":"status","state":"reconnecting","name":"server","message":"hold on"}`; st != want {
		t.Errorf("status %s, want %s", st, want)
	}
}

func TestErrorAppendJSON(t *testing.T) {
	e := &Error{Code: CodeBadJSON, Message: "malformed JSON"}
	got := string(e.AppendJSON(nil))
	want := `{"type":"error","code":"bad_json","name":"error","message":"malformed JSON"}`
	if got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
}

func TestIsPing(t *testing.T) {
	if !IsPing([]byte("__ping__")) || IsPing([]byte(`"__ping__"`)) || IsPing(nil) {
		t.Fatal("IsPing wrong")
	}
}

// FuzzDecodeClient checks the decoder never panics, answers every input
// with a frame or a coded *Error, and only ever returns known types.
func FuzzDecodeClient(f *testing.F) {
	for _, s := range []string{
		`{"type":"message","message":"hi"}`,
		`{"type":"status","name":"alice","message":"is now online"}`,
		`{"type":"who"}`, `{"type":"message","message":5}`, `[]`, `{"type":"\ud800"}`,
		"{\"type\":\"message\",\"message\":\"\xff\"}", `__ping__`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fr, err := DecodeClient(data)
		if err != nil {
			var perr *Error
			if !errors.As(err, &perr) || (perr.Code != CodeBadJSON && perr.Code != CodeUnknownType) {
				t.Fatalf("error %v is not a coded *Error", err)
			}
			if !json.Valid(perr.AppendJSON(nil)) {
				t.Fatalf("error frame is not JSON: %s", perr.AppendJSON(nil))
			}
			return
		}
		switch fr.Type {
		case TypeMessage, TypeStatus, TypeWho:
		default:
			t.Fatalf("decoded unknown type %q", fr.Type)
		}
		if !json.Valid(data) {
			t.Fatalf("accepted invalid JSON %q", data)
		}
	})
}

// FuzzMessageAppendJSON checks the hand-written encoder against
// encoding/json: always valid JSON, and it decodes to what was encoded.
func FuzzMessageAppendJSON(f *testing.F) {
	f.Add("id", "alice", "hi", int64(1), "")
	f.Add("", "é", "<script>\u2028\x00\"\\", int64(-1), "c")
	f.Add("x", "\xff", "a\xc3", int64(1<<62), "\xfe")
	f.Fuzz(func(t *testing.T, id, name, text string, ts int64, cid string) {
		b := Message{ID: id, Name: name, Message: text, TS: ts, CID: cid}.AppendJSON(nil)
		if !json.Valid(b) {
			t.Fatalf("not valid JSON: %q", b)
		}
		got, err := DecodeServer(b)
		if err != nil {
			t.Fatal(err)
		}
		want := Message{ID: utf8Valid(id), Name: utf8Valid(name), Message: utf8Valid(text), TS: ts, CID: utf8Valid(cid)}
		if got.Type != TypeMessage || got.ID != want.ID || got.Name != want.Name || got.Message != want.Message || got.TS != want.TS || got.CID != want.CID {
			t.Fatalf("round trip: got %+v, want %+v", got, want)
		}
	})
}

// utf8Valid is what encoding/json does to invalid UTF-8: each bad byte
// becomes U+FFFD.
func utf8Valid(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		b.WriteRune(r)
		i += n
	}
	return b.String()
}

func TestMessageTS(t *testing.T) {
	for _, m := range []Message{
		{ID: "a", Name: "b", Message: `"ts":1`, TS: 1733300000123},
		{ID: "a", Name: `x","ts":5`, Message: "hi", TS: 42, CID: "c"},
	} {
		if ts, ok := MessageTS(m.AppendJSON(nil)); !ok || ts != m.TS {
			t.Errorf("MessageTS(%s) = %d, %v", m.AppendJSON(nil), ts, ok)
		}
	}
	if _, ok := MessageTS([]byte(`{"type":"join"}`)); ok {
		t.Error("found a ts in a frame without one")
	}
}
