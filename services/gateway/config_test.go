package gateway_test

import (
	"io"
	"os"
	"strings"
	"testing"

	"github.com/fly-chat/chat/services/gateway"
)

// Every setting the gateway reads is documented in the README's table.
func TestREADMEListsEverySetting(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range gateway.Settings() {
		if !strings.Contains(string(readme), "| `"+s.Env+"` |") {
			t.Errorf("README has no table row for %s", s.Env)
		}
	}
}

func TestConfigRejectsBadValues(t *testing.T) {
	for _, env := range []map[string]string{
		{"PING_INTERVAL": "25"},
		{"SEND_QUEUE": "0"},
		{"MAX_MESSAGE_BYTES": "lots"},
		{"SEND_QUEUE_BYTES": "1000"},
		{"LOG_LEVEL": "loud"},
	} {
		if _, err := gateway.LoadConfig(nil, func(k string) string { return env[k] }, io.Discard); err == nil {
			t.Errorf("%v accepted", env)
		}
	}
}
