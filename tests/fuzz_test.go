package tests

import (
	"os/exec"
	"strings"
	"testing"
)

// fuzzTime is how long CI fuzzes each target; the seed corpora also run in
// every plain `go test`.
const fuzzTime = "4s"

// The fuzz targets run for a few seconds each as part of the test command,
// so CI fuzzes every change: the frame decoder, the encoder, the handle
// rules, and a live connection fed arbitrary bytes.
func TestFuzzTargets(t *testing.T) {
	if testing.Short() {
		t.Skip("fuzzing takes a few seconds per target")
	}
	for _, ft := range []struct{ pkg, name string }{
		{"./pkg/protocol", "FuzzDecodeClient"},
		{"./pkg/protocol", "FuzzMessageAppendJSON"},
		{"./pkg/protocol", "FuzzNormalizeHandle"},
		{"./services/gateway", "FuzzConnFrames"},
	} {
		t.Run(ft.name, func(t *testing.T) {
			t.Parallel()
			cmd := exec.Command("go", "test", "-run", "^$", "-fuzz", "^"+ft.name+"$", "-fuzztime", fuzzTime, ft.pkg)
			cmd.Dir = root
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%s: %v\n%s", ft.name, err, out)
			}
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			for _, l := range lines {
				if strings.Contains(l, "execs:") {
					t.Log(strings.TrimSpace(l)) // the last progress line wins in the log
				}
			}
		})
	}
}
