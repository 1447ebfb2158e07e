package presence_test

import (
	"os"
	"strings"
	"testing"

	"github.com/fly-chat/chat/services/presence"
)

// Every setting the presence service reads is documented in the README.
func TestREADMEListsEverySetting(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	section := string(readme)[strings.Index(string(readme), "### Presence"):]
	for _, s := range presence.Settings() {
		if !strings.Contains(section, "`"+s.Env+"`") {
			t.Errorf("README's presence section does not list %s", s.Env)
		}
	}
}
