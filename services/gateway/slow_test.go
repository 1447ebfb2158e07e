package gateway_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/fly-chat/chat/internal/testkit"
	"github.com/fly-chat/chat/pkg/protocol"
)

// A client that stops reading is cut off with 1008 "slow consumer" once its
// queue overflows, while everyone else keeps getting every message promptly.
func TestSlowReaderIsCutOff(t *testing.T) {
	for _, mode := range ioModes {
		t.Run(mode, func(t *testing.T) { testSlowReaderIsCutOff(t, mode) })
	}
}

func testSlowReaderIsCutOff(t *testing.T, mode string) {
	ns := testkit.StartNATS(t)
	g := startGateway(t, ns.ClientURL(), map[string]string{"SEND_QUEUE": "16", "IO_MODE": mode})
	// A tiny receive buffer so the kernel stops absorbing for it early.
	slow := testkit.Dial(t, g.ws+"?handle=slow", testkit.DialOptions{ReadBuffer: 4096})
	talker := join(t, g, "talker")

	payload := strings.Repeat("y", 16<<10)
	cutOff := false
	for i := 0; !cutOff; i++ {
		if i == 2000 {
			t.Fatal("2000 messages of 16 KiB and the reader that never reads is still connected")
		}
		text := fmt.Sprintf("%d %s", i, payload)
		sent := time.Now()
		talker.Send(`{"type":"message","message":"` + text + `"}`)
		talker.ExpectMessage("talker", text, wait)
		if d := time.Since(sent); d > time.Second {
			t.Fatalf("message %d took %v to come back while a reader is stuck", i, d)
		}
		if i%10 == 9 {
			cutOff = testkit.Value(testkit.Scrape(t, g.metrics), "chat_gateway_dropped_messages_total", "reason", "slow_consumer") > 0
		}
	}

	// The stuck client, reading at last, finds what was written before the
	// cut, then the close frame.
	f := slow.ExpectClose(protocol.ClosePolicy, wait)
	if f.CloseReason != "slow consumer" {
		t.Fatalf("close reason %q", f.CloseReason)
	}
	testkit.WaitMetric(t, g.metrics, wait, func(v float64) bool { return v == 1 },
		"chat_gateway_disconnects_total", "code", "1008", "reason", "slow_consumer")

	talker.Send(`{"type":"message","message":"after the cut"}`)
	talker.ExpectMessage("talker", "after the cut", wait)
}

// A reader that falls behind for a moment (a burst bigger than its socket
// buffers) and catches up is a healthy client: it is not dropped later,
// however long it is quiet afterwards (the slow writer's deadline does not
// outlive its write).
func TestCaughtUpReaderStaysConnected(t *testing.T) {
	for _, mode := range ioModes {
		t.Run(mode, func(t *testing.T) {
			ns := testkit.StartNATS(t)
			g := startGateway(t, ns.ClientURL(), map[string]string{"WRITE_TIMEOUT": "1s", "IO_MODE": mode})
			reader := testkit.Dial(t, g.ws+"?handle=reader", testkit.DialOptions{ReadBuffer: 4096})
			talker := join(t, g, "talker")

			payload := strings.Repeat("y", 16<<10)
			for i := range 12 { // ~200 KiB while the reader is not reading
				talker.Send(fmt.Sprintf(`{"type":"message","message":"%d %s"}`, i, payload))
				talker.ExpectMessage("talker", fmt.Sprintf("%d %s", i, payload), wait)
			}
			for i := range 12 {
				reader.ExpectMessage("talker", fmt.Sprintf("%d %s", i, payload), wait)
			}
			time.Sleep(1500 * time.Millisecond) // quiet for longer than WRITE_TIMEOUT: the point of the test
			talker.Send(`{"type":"message","message":"later"}`)
			reader.ExpectMessage("talker", "later", wait)
		})
	}
}
