// Command chatload measures a gateway on this machine, over loopback only:
// how much memory an idle websocket costs it, how fast it takes upgrades,
// and how fast and how completely it broadcasts.
//
//	go run ./cmd/chatload -clients 15000 -duration 0          # idle memory per connection
//	go run ./cmd/chatload -clients 2000 -rate 150 -senders 10 # a broadcast of 300,000 deliveries/s
//
// By default it starts a fresh gateway binary (built from this repository)
// on an embedded NATS server; -url and -pid point it at one already
// running. It prints a human summary and one JSON line.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "chatload:", err)
		os.Exit(1)
	}
}

// config is what a run does.
type config struct {
	url        string        // ws://127.0.0.1:port/ws of a running gateway; empty: start one
	pid        int           // that gateway's process id, for RSS and CPU
	gatewayBin string        // the gateway binary to start; empty: build it
	clients    int           // websockets to hold (senders included)
	dialers    int           // upgrades in flight at once while ramping
	senders    int           // clients that send during the broadcast
	rate       float64       // messages per second, all senders together
	size       int           // bytes of message text
	duration   time.Duration // how long the broadcast lasts; 0: measure idle memory only
	settle     time.Duration // wait after the ramp before reading idle memory
	gatewayEnv []string      // extra NAME=value settings for a gateway chatload starts
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c config
	fs := flag.NewFlagSet("chatload", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.url, "url", "", "websocket URL of a running gateway on loopback (default: start a fresh one)")
	fs.IntVar(&c.pid, "pid", 0, "process id of that gateway, to read its memory and CPU")
	fs.StringVar(&c.gatewayBin, "gateway", "", "gateway binary to start (default: go build it from this repository)")
	fs.IntVar(&c.clients, "clients", 1000, "websocket clients to hold, at most 30000")
	fs.IntVar(&c.dialers, "dialers", 64, "upgrades in flight at once while ramping")
	fs.IntVar(&c.senders, "senders", 10, "clients that send during the broadcast")
	fs.Float64Var(&c.rate, "rate", 150, "messages per second, all senders together")
	fs.IntVar(&c.size, "size", 64, "bytes of text per message")
	fs.DurationVar(&c.duration, "duration", 10*time.Second, "length of the broadcast, at most 5m (0: only ramp and measure idle memory)")
	fs.DurationVar(&c.settle, "settle", 3*time.Second, "wait after the ramp before reading the gateway's idle memory")
	env := fs.String("env", "", "comma-separated NAME=value settings for the gateway chatload starts")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	switch {
	case c.clients < 1 || c.clients > 30000:
		return errors.New("-clients must be 1 to 30000")
	case c.duration < 0 || c.duration > 5*time.Minute:
		return errors.New("-duration must be 0 to 5m")
	case c.senders < 1 || c.senders > c.clients:
		return errors.New("-senders must be 1 to -clients")
	case c.rate <= 0 || c.size < 1 || c.size > 60000:
		return errors.New("-rate must be positive, -size 1 to 60000")
	}
	if *env != "" {
		c.gatewayEnv = splitList(*env)
	}
	raiseFileLimit()

	if c.url == "" {
		stack, err := startStack(ctx, c, stderr)
		if err != nil {
			return err
		}
		defer stack.close()
		c.url, c.pid = stack.url, stack.pid
	} else if err := mustBeLoopback(c.url); err != nil {
		return err
	}

	r, err := measure(ctx, c, stderr)
	if err != nil {
		return err
	}
	r.print(stdout)
	line, _ := json.Marshal(r)
	fmt.Fprintln(stdout, string(line))
	return nil
}
