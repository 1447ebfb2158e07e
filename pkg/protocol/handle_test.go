package protocol

import (
	"errors"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

func TestNormalizeHandle(t *testing.T) {
	tests := []struct {
		in, want string // want "" means rejected
	}{
		{"alice", "alice"},
		{"  alice \t", "alice"},
		{"alice smith", "alice smith"},
		{"e\u0301mile", "émile"}, // NFD in, NFC out
		{"Zoë", "Zoë"},
		{"李小龙", "李小龙"},
		{"😀", "😀"},
		{strings.Repeat("a", 32), strings.Repeat("a", 32)},
		{strings.Repeat("é", 32), strings.Repeat("é", 32)}, // 32 characters, 64 bytes
		{strings.Repeat("e\u0301", 32), strings.Repeat("é", 32)},

		{"", ""},
		{"   ", ""},
		{strings.Repeat("a", 33), ""},
		{"ali\x00ce", ""},
		{"ali\nce", ""},
		{"ali\u200bce", ""},  // zero width space (Cf)
		{"ali\u200dce", ""},  // zero width joiner (Cf)
		{"\u3164", ""},       // Hangul filler, looks empty
		{"a\u3164", ""},      // Hangul filler inside
		{"ali\u00a0ce", ""},  // no-break space
		{"ali\u2028ce", ""},  // line separator
		{"alice\ufe0f", ""},  // variation selector
		{"\u202eecila", ""},  // right-to-left override
		{"al\ue000ice", ""},  // private use
		{"al\U000e0041", ""}, // tag character
		{"\u0301abc", ""},    // starts with a combining mark
		{"\U0010fffe", ""},   // noncharacter, unassigned
		{"error", ""},
		{"Online", ""},
		{"SERVER", ""},
		{"ali\xffce", ""},
	}
	for _, tt := range tests {
		got, err := NormalizeHandle(tt.in)
		if tt.want == "" {
			var perr *Error
			if !errors.As(err, &perr) || perr.Code != CodeBadHandle || perr.Message == "" {
				t.Errorf("NormalizeHandle(%q) = %q, %v; want a bad_handle error", tt.in, got, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("NormalizeHandle(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

// FuzzNormalizeHandle checks the rules hold for whatever is accepted, and
// that normalising is idempotent.
func FuzzNormalizeHandle(f *testing.F) {
	for _, s := range []string{"alice", " bob ", "e\u0301", "\u3164", "a\u200bb", "error", strings.Repeat("x", 40)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		h, err := NormalizeHandle(s)
		if err != nil {
			var perr *Error
			if !errors.As(err, &perr) || perr.Code != CodeBadHandle {
				t.Fatalf("error %v is not bad_handle", err)
			}
			return
		}
		if n := utf8.RuneCountInString(h); n < 1 || n > MaxHandleChars {
			t.Fatalf("accepted %q of %d characters", h, n)
		}
		if strings.TrimSpace(h) != h {
			t.Fatalf("accepted untrimmed %q", h)
		}
		again, err := NormalizeHandle(h)
		if err != nil || again != h {
			t.Fatalf("not idempotent: %q → %q → %q, %v", s, h, again, err)
		}
	})
}

// HandleRanges says exactly what NormalizeHandle does about each code point.
func TestHandleRangesAgreeWithNormalizeHandle(t *testing.T) {
	disallowed, marks := HandleRanges()
	in := func(rs []Range, r rune) bool {
		for _, x := range rs {
			if r >= x[0] && r <= x[1] {
				return true
			}
		}
		return false
	}
	for r := rune(0x20); r <= unicode.MaxRune; r += 7 {
		if r >= 0xd800 && r <= 0xdfff {
			continue
		}
		_, errInside := NormalizeHandle("a" + string(r) + "b")
		_, errFirst := NormalizeHandle(string(r) + "b")
		if want := in(disallowed, r); want != (errInside != nil) {
			t.Fatalf("%U: in disallowed %v, NormalizeHandle error %v", r, want, errInside)
		}
		if in(marks, r) && !in(disallowed, r) && errFirst == nil {
			t.Fatalf("%U: a leading mark accepted", r)
		}
	}
	if len(disallowed) < 100 || len(marks) < 100 {
		t.Fatalf("suspiciously few ranges: %d, %d", len(disallowed), len(marks))
	}
}
