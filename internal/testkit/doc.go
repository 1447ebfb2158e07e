// Package testkit holds what the services' tests share: an embedded NATS
// server, a websocket client that speaks raw frames, and a runner that starts
// a whole program in-process on port 0. It is a module of its own so that
// nats-server never enters the services' runtime dependencies.
package testkit
