// Command chatdev runs the whole chat stack in one process for local
// development: an embedded NATS server, a gateway and the presence service,
// on localhost.
//
//	go run ./cmd/chatdev
//
// Settings are the services' own environment variables (see the README);
// chatdev only points them at its NATS server and at localhost, and gives
// presence its own ops address, PRESENCE_METRICS_ADDR.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/fly-chat/chat/services/gateway"
	"github.com/fly-chat/chat/services/presence"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "chatdev:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	fs := flag.NewFlagSet("chatdev", flag.ContinueOnError)
	fs.SetOutput(stdout)
	natsPort := fs.Int("nats-port", 4222, "port of the embedded NATS server on 127.0.0.1 (-1: any free port)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}

	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: *natsPort, NoSigs: true, NoLog: true})
	if err != nil {
		return fmt.Errorf("nats server: %w", err)
	}
	ns.Start()
	defer ns.Shutdown()
	if !ns.ReadyForConnections(10 * time.Second) {
		return errors.New("embedded nats server did not start (is the port taken? try -nats-port=-1)")
	}

	// The services read their usual variables; chatdev points them at its
	// NATS server and fills in localhost defaults.
	overrides := map[string]string{"NATS_URL": ns.ClientURL(), "NATSAPPHOST": ""}
	defaults := map[string]string{"HOST": "127.0.0.1", "PORT": "8080", "METRICS_ADDR": "127.0.0.1:9091", "PRESENCE_METRICS_ADDR": "127.0.0.1:9092"}
	env := func(k string) string {
		if v, ok := overrides[k]; ok {
			return v
		}
		if v := getenv(k); v != "" {
			return v
		}
		return defaults[k]
	}
	presenceEnv := func(k string) string {
		if k == "METRICS_ADDR" {
			k = "PRESENCE_METRICS_ADDR"
		}
		return env(k)
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Either service stopping stops the other; the first error is the answer.
	done := make(chan error, 2)
	go func() { done <- presence.Run(ctx, nil, presenceEnv, stdout) }()
	go func() { done <- gateway.Run(ctx, nil, env, stdout) }()
	wait := func() error {
		first := <-done
		cancel()
		return errors.Join(first, <-done)
	}

	for _, addr := range []string{presenceEnv("METRICS_ADDR"), env("METRICS_ADDR")} {
		if err := waitReady(ctx, addr, done); err != nil {
			cancel()
			return errors.Join(err, wait())
		}
	}
	host := env("HOST")
	if host == "" || host == "127.0.0.1" || host == "0.0.0.0" || host == "::" {
		host = "localhost"
	}
	fmt.Fprintf(stdout, "\n  chat is running: open http://%s in two browser tabs (NATS at %s)\n\n",
		net.JoinHostPort(host, env("PORT")), ns.ClientURL())
	return wait()
}

// waitReady polls a service's /readyz until it answers 200. A service that
// stops meanwhile is put back on done for the caller.
func waitReady(ctx context.Context, metricsAddr string, done chan error) error {
	host, port, err := net.SplitHostPort(metricsAddr)
	if err != nil {
		return err
	}
	if host == "" {
		host = "127.0.0.1"
	}
	url := "http://" + net.JoinHostPort(host, port) + "/readyz"
	for {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case err := <-done:
			done <- err
			return errors.New("a service stopped before it was ready")
		case <-ctx.Done():
			return nil
		case <-time.After(50 * time.Millisecond):
		}
	}
}
