//go:build unix

package testkit

import (
	"syscall"
	"testing"
)

// NeedOpenFiles raises the soft limit on open files to at least n, up to
// the hard limit, and skips the test or benchmark when that is not enough.
func NeedOpenFiles(tb testing.TB, n int) {
	tb.Helper()
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		tb.Fatal(err)
	}
	if l.Cur >= uint64(n) {
		return
	}
	l.Cur = min(max(uint64(n), l.Cur), l.Max)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil || l.Cur < uint64(n) {
		tb.Skipf("need %d open files, the limit is %d: %v", n, l.Cur, err)
	}
}
