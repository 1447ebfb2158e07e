// Package tests holds the system tests: the real programs (gateways, the
// presence service, the gateway binary) on real embedded NATS servers and
// clusters, driven the way users and operators drive them. Each service's
// own module tests it alone.
package tests
