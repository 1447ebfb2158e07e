package protocol

import (
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// MaxHandleChars is the longest handle, in Unicode code points after NFC.
const MaxHandleChars = 32

// reserved handles are names the gateway and presence service use for their
// own frames ("error:…", "online:…"); a user taking one could forge them in
// the original client, which shows only name + ":" + message.
var reserved = []string{ErrorName, "online", "server", "status", "system"}

// NormalizeHandle returns the canonical form of a handle, or an *Error with
// CodeBadHandle saying what is wrong. The rules, applied in this order:
//
//   - surrounding white space is trimmed;
//   - the rest is NFC-normalised, so "é" typed either way is one handle;
//   - it must be 1 to 32 code points long;
//   - it may not contain control (Cc), format (Cf), surrogate, private-use,
//     unassigned, line or paragraph separator characters, white space other
//     than U+0020, or invisible characters (Unicode's
//     Other_Default_Ignorable_Code_Point and Variation_Selector: Hangul
//     fillers, zero-width joiners and the like), so two handles that look the
//     same are the same;
//   - it may not start with a combining mark, which would attach to the
//     character before it wherever it is shown;
//   - it may not be one of the reserved names, in any letter case.
//
// The page served by the gateway applies the same rules, so a user learns
// of a bad handle before connecting.
func NormalizeHandle(s string) (string, error) {
	if !utf8.ValidString(s) {
		return "", badHandle("handle is not valid UTF-8")
	}
	s = norm.NFC.String(strings.TrimFunc(s, unicode.IsSpace))
	n := utf8.RuneCountInString(s)
	switch {
	case n == 0:
		return "", badHandle("handle is empty")
	case n > MaxHandleChars:
		return "", badHandle("handle is longer than 32 characters")
	}
	for i, r := range s {
		if invisible(r) {
			return "", badHandle("handle contains an invisible or control character")
		}
		if i == 0 && unicode.In(r, unicode.Mn, unicode.Me) {
			return "", badHandle("handle starts with a combining mark")
		}
	}
	for _, name := range reserved {
		if strings.EqualFold(s, name) {
			return "", badHandle("handle " + `"` + s + `"` + " is reserved")
		}
	}
	return s, nil
}

func badHandle(msg string) *Error { return &Error{Code: CodeBadHandle, Message: msg} }

// invisible reports whether r is a character a handle may not contain.
func invisible(r rune) bool {
	switch {
	case r == ' ':
		return false
	case unicode.IsSpace(r), unicode.In(r, unicode.Zs, unicode.Zl, unicode.Zp):
		return true
	case unicode.In(r, unicode.Cc, unicode.Cf, unicode.Cs, unicode.Co):
		return true
	case unicode.In(r, unicode.Other_Default_Ignorable_Code_Point, unicode.Variation_Selector):
		return true
	}
	// Unassigned (Cn) is every code point in no category at all.
	return !unicode.In(r, unicode.L, unicode.M, unicode.N, unicode.P, unicode.S)
}

// Range is an inclusive range of code points.
type Range [2]rune

var ranges = sync.OnceValues(func() (disallowed, marks []Range) {
	add := func(rs []Range, r rune) []Range {
		if n := len(rs); n > 0 && rs[n-1][1] == r-1 {
			rs[n-1][1] = r
			return rs
		}
		return append(rs, Range{r, r})
	}
	for r := rune(0); r <= unicode.MaxRune; r++ {
		if invisible(r) {
			disallowed = add(disallowed, r)
		}
		if unicode.In(r, unicode.Mn, unicode.Me) {
			marks = add(marks, r)
		}
	}
	return disallowed, marks
})

// HandleRanges returns, as sorted ranges, the code points a handle may not
// contain and those it may not start with: exactly what NormalizeHandle
// checks, from the same Unicode tables. A client that applies them (after
// trimming and NFC, and with the length and reserved-name rules) agrees with
// the server about every handle, whatever Unicode version it was built with.
func HandleRanges() (disallowed, leadingMarks []Range) { return ranges() }
