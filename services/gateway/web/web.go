// Package web is the chat page, embedded in the gateway binary. Nothing it
// serves loads anything from another origin.
package web

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"io/fs"
	"net/http"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/fly-chat/chat/pkg/protocol"
)

//go:embed static
var static embed.FS

// Policy is the page's Content-Security-Policy: its own scripts, styles and
// websocket, nothing inline, nothing from elsewhere.
const Policy = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; " +
	"base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

type file struct {
	body []byte
	etag string // strong, from the content
	hash string // the version assets are linked with
}

// Handler serves the page at "/" and its assets. The page links each asset
// with ?v=<content hash>, so an asset fetched with its current version is
// cached for good, while the page itself is revalidated (by ETag) on every
// load: a new deploy is picked up at once, and nothing is fetched twice.
func Handler() http.Handler {
	files := map[string]*file{}
	err := fs.WalkDir(static, "static", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		body, err := static.ReadFile(p)
		if err != nil {
			return err
		}
		files[strings.TrimPrefix(p, "static/")] = &file{body: body}
		return nil
	})
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	// The page checks handles with the server's own tables.
	disallowed, marks := protocol.HandleRanges()
	rules, _ := json.Marshal(map[string][]protocol.Range{"disallowed": disallowed, "marks": marks})
	app := files["app.js"]
	start, end := bytes.Index(app.body, []byte("/*HANDLE_RULES*/")), bytes.Index(app.body, []byte("/*END*/"))
	if start < 0 || end < start {
		panic("web: app.js has no /*HANDLE_RULES*/ placeholder")
	}
	app.body = slices.Concat(app.body[:start], rules, app.body[end+len("/*END*/"):])
	for _, f := range files {
		sum := sha256.Sum256(f.body)
		f.hash = hex.EncodeToString(sum[:6])
	}

	page := files["index.html"]
	for name, f := range files {
		if name == "index.html" {
			continue
		}
		for _, attr := range []string{`src="`, `href="`} {
			page.body = bytes.ReplaceAll(page.body, []byte(attr+name+`"`), []byte(attr+name+"?v="+f.hash+`"`))
		}
	}
	for _, f := range files {
		sum := sha256.Sum256(f.body)
		f.etag = `"` + hex.EncodeToString(sum[:12]) + `"`
	}

	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		name := strings.TrimPrefix(path.Clean(r.URL.Path), "/")
		if name == "" {
			name = "index.html"
		}
		f, ok := files[name]
		if !ok {
			http.NotFound(w, r)
			return
		}
		h := w.Header()
		h.Set("Content-Security-Policy", Policy)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("ETag", f.etag)
		if name != "index.html" && r.URL.Query().Get("v") == f.hash {
			h.Set("Cache-Control", "public, max-age=31536000, immutable")
		} else {
			h.Set("Cache-Control", "no-cache")
		}
		http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(f.body))
	})
}
