package gateway

import (
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
)

// admission decides, before the upgrade, whether a websocket may open: its
// Origin must be allowed, and neither the gateway nor the client's address
// may be over its connection limit. A client turned away gets a plain HTTP
// status it can read: 403, 503 or 429.
type admission struct {
	origins  []string // allowed origins, lower case; empty means the request's own host; "*" means any
	max      int      // connections on this gateway; 0 means no limit
	maxPerIP int      // connections from one address; 0 means no limit
	onFly    bool     // trust Fly-Client-IP: Fly's proxy sets it, nobody else can reach us

	mu    sync.Mutex
	total int
	perIP map[string]int
}

func newAdmission(cfg Config) *admission {
	a := &admission{max: cfg.MaxConnections, maxPerIP: cfg.MaxConnectionsPerIP, onFly: cfg.Log.OnFly, perIP: map[string]int{}}
	for _, o := range strings.Split(cfg.AllowedOrigins, ",") {
		if o = strings.ToLower(strings.TrimSpace(o)); o != "" {
			a.origins = append(a.origins, strings.TrimSuffix(o, "/"))
		}
	}
	return a
}

// rejection is why a request may not upgrade.
type rejection struct {
	status int
	reason string // for the metric and the response body
}

// admit checks r and, if it may upgrade, counts its connection from ip,
// which release(ip) uncounts. A request without an Origin header is not
// from a browser (command-line tools, load generators) and is not checked
// for it.
func (a *admission) admit(r *http.Request) (ip string, rej *rejection) {
	if origin := r.Header.Get("Origin"); origin != "" && !a.originAllowed(origin, r.Host) {
		return "", &rejection{http.StatusForbidden, "origin not allowed"}
	}
	ip = a.clientIP(r)
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case a.max > 0 && a.total >= a.max:
		return "", &rejection{http.StatusServiceUnavailable, "too many connections"}
	case a.maxPerIP > 0 && a.perIP[ip] >= a.maxPerIP:
		return "", &rejection{http.StatusTooManyRequests, "too many connections from your address"}
	}
	a.total++
	a.perIP[ip]++
	return ip, nil
}

// release uncounts a connection admit counted; call it once per admission.
func (a *admission) release(ip string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.total--
	if a.perIP[ip]--; a.perIP[ip] <= 0 {
		delete(a.perIP, ip)
	}
}

// originAllowed reports whether a browser page at origin may connect. With
// no allowlist, only a page served by this host may: the same origin as the
// request's Host.
func (a *admission) originAllowed(origin, host string) bool {
	origin = strings.ToLower(strings.TrimSuffix(origin, "/"))
	if len(a.origins) == 0 {
		u, err := url.Parse(origin)
		return err == nil && u.Host != "" && strings.EqualFold(u.Host, host)
	}
	for _, o := range a.origins {
		if o == "*" || o == origin {
			return true
		}
	}
	return false
}

// clientIP is the address limits count by: on Fly, the client's address as
// Fly's proxy saw it; elsewhere the socket's peer.
func (a *admission) clientIP(r *http.Request) string {
	if a.onFly {
		if ip := strings.TrimSpace(r.Header.Get("Fly-Client-IP")); ip != "" {
			return ip
		}
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}
