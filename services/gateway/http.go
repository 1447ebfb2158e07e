package gateway

import (
	"bufio"
	"bytes"
	"net"
	"net/http"
	"strconv"
	"strings"

	"github.com/fly-chat/chat/internal/ops"
	"github.com/fly-chat/chat/services/gateway/web"
)

// routes serves the chat page and its assets, websocket upgrades on "/"
// (where the original client connects) and "/ws", and /healthz and /readyz
// (also on the ops listener), which platform health checks can reach only
// on this port.
func (g *Gateway) routes() http.Handler {
	page, health := web.Handler(), ops.Health(g.Ready)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/ws" || r.URL.Path == "/" && strings.EqualFold(r.Header.Get("Upgrade"), "websocket"):
			g.serveWS(w, r)
		case r.URL.Path == "/healthz" || r.URL.Path == "/readyz":
			health.ServeHTTP(w, r)
		default:
			page.ServeHTTP(w, r)
		}
	})
}

// serveWS upgrades the request and hands the socket to a conn. A bad
// ?handle= still gets the upgrade, so the browser can be told why in an
// error frame before the close.
func (g *Gateway) serveWS(w http.ResponseWriter, r *http.Request) {
	select {
	case <-g.draining:
		g.m.upgrades.WithLabelValues("draining").Inc()
		http.Error(w, "shutting down", http.StatusServiceUnavailable)
		return
	default:
	}
	ip, rej := g.admit.admit(r)
	if rej != nil {
		g.m.upgrades.WithLabelValues(strconv.Itoa(rej.status)).Inc()
		g.log.Debug("upgrade refused", "remote", r.RemoteAddr, "status", rej.status, "reason", rej.reason)
		if rej.status != http.StatusForbidden {
			w.Header().Set("Retry-After", "10")
		}
		http.Error(w, rej.reason, rej.status)
		return
	}
	q := r.URL.Query()
	handle, hasHandle := q.Get("handle"), q.Has("handle")

	var (
		c          *conn
		registered bool
	)
	hook := hijackHook{ResponseWriter: w, hijacked: func(nc net.Conn) {
		// A fixed kernel send buffer: the kernel's autotuning would let a
		// client that stops reading pin megabytes there, out of sight of
		// the send queue's limits.
		if tc, ok := nc.(*net.TCPConn); ok && g.cfg.SocketBuffer > 0 {
			tc.SetWriteBuffer(g.cfg.SocketBuffer)
		}
		// Join the hub before the upgrade response goes out, so a client
		// cannot miss a message published once it sees it is connected.
		c = newConn(g, nc)
		c.ip = ip
		c.admitted.Store(true)
		registered = g.hub.add(c)
	}}
	nc, rw, _, err := g.upgrader.Upgrade(r, hook)
	if err != nil {
		if c == nil || c.admitted.Swap(false) {
			g.admit.release(ip)
		}
		if c != nil {
			c.ended.Do(func() {}) // it never started: nothing to tear down
			g.hub.remove(c)
		}
		if nc != nil {
			nc.Close()
		}
		g.m.upgrades.WithLabelValues("rejected").Inc()
		g.log.Debug("upgrade rejected", "remote", r.RemoteAddr, "err", err)
		return
	}
	g.m.upgrades.WithLabelValues("ok").Inc()

	// Frames a client sent right behind its request may sit in the HTTP
	// server's buffer; read those first, then the socket, and let the
	// 4 KiB buffer go.
	var early []byte
	if n := rw.Reader.Buffered(); n > 0 {
		early, _ = rw.Reader.Peek(n)
		early = bytes.Clone(early)
	}
	go c.start(early, handle, hasHandle, registered)
}

// hijackHook lets serveWS act between the hijack and the upgrade response,
// which ws.HTTPUpgrader writes right after hijacking.
type hijackHook struct {
	http.ResponseWriter
	hijacked func(net.Conn)
}

func (h hijackHook) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	nc, rw, err := http.NewResponseController(h.ResponseWriter).Hijack()
	if err == nil {
		h.hijacked(nc)
	}
	return nc, rw, err
}
