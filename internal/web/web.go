// Package web serves the dashboard (the files of web/static, embedded) at the gateway's root: its files under
// /assets/, and index.html for every other path, so that the app's own routes (/vms/ID, /runs, ...) can be
// reloaded and linked. The API mounts it for what is outside /api/ (api.Config.Web); it never answers /api/ paths.
package web

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/base64"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strconv"
	"strings"

	assets "github.com/aetherium/aetherium/web"
)

// CSP is the dashboard's Content-Security-Policy: its own scripts only (no inline script, no eval), fetches and
// WebSockets to its own origin, no framing. Inline styles are allowed because xterm.js sizes its terminal with a
// <style> element it writes at run time.
const CSP = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; " +
	"connect-src 'self' ws: wss:; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; " +
	"frame-ancestors 'none'"

type file struct {
	body, gz    []byte
	etag, ctype string
}

// Handler serves the dashboard.
type Handler struct {
	files map[string]*file // by URL path: /assets/... and "/" (index.html)
}

// New loads the embedded files (once: they are small) with their ETags and gzipped copies.
func New() *Handler {
	h, err := newHandler(assets.Static, "static")
	if err != nil {
		panic("web: embedded assets: " + err.Error()) // the files are embedded: only a broken build gets here
	}
	return h
}

func newHandler(fsys fs.FS, root string) (*Handler, error) {
	h := &Handler{files: map[string]*file{}}
	err := fs.WalkDir(fsys, root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(fsys, p)
		if err != nil {
			return err
		}
		rel := strings.TrimPrefix(p, root+"/")
		sum := sha256.Sum256(b)
		f := &file{body: b, etag: `"` + base64.RawURLEncoding.EncodeToString(sum[:12]) + `"`, ctype: contentType(rel)}
		if len(b) > 1024 && compressible(f.ctype) {
			var buf bytes.Buffer
			zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
			zw.Write(b)
			zw.Close()
			if buf.Len() < len(b) {
				f.gz = buf.Bytes()
			}
		}
		if rel == "index.html" {
			h.files["/"] = f
		} else {
			h.files["/assets/"+rel] = f
		}
		return nil
	})
	return h, err
}

func contentType(name string) string {
	switch path.Ext(name) {
	case ".js", ".mjs":
		return "text/javascript; charset=utf-8"
	case ".css":
		return "text/css; charset=utf-8"
	case ".html":
		return "text/html; charset=utf-8"
	case ".svg":
		return "image/svg+xml"
	case ".json", ".webmanifest":
		return "application/json"
	case "":
		return "text/plain; charset=utf-8" // LICENSE, VERSIONS, SHA256SUMS
	}
	if t := mime.TypeByExtension(path.Ext(name)); t != "" {
		return t
	}
	return "application/octet-stream"
}

func compressible(ctype string) bool {
	return strings.HasPrefix(ctype, "text/") || strings.HasPrefix(ctype, "application/json") || ctype == "image/svg+xml"
}

// ServeHTTP answers GET and HEAD: a file under /assets/ (404 for an unknown one), index.html for any other path
// outside /api/ (a 404 there: the API's paths are never the app's).
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hd := w.Header()
	hd.Set("Content-Security-Policy", CSP)
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("X-Frame-Options", "DENY")
	hd.Set("Referrer-Policy", "no-referrer")
	p := r.URL.Path
	if p == "/api" || strings.HasPrefix(p, "/api/") {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		hd.Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	var f *file
	if strings.HasPrefix(p, "/assets/") {
		f = h.files[path.Clean(p)]
		if f == nil {
			http.Error(w, "not found", http.StatusNotFound)
			return
		}
	} else {
		f = h.files["/"] // the app's routes are the app's business
	}
	// Revalidated every time (no build step, so no hashed names); a match is a 304 of no bytes.
	hd.Set("Cache-Control", "no-cache")
	hd.Set("ETag", f.etag)
	hd.Set("Vary", "Accept-Encoding")
	hd.Set("Content-Type", f.ctype)
	if match := r.Header.Get("If-None-Match"); match != "" && strings.Contains(match, f.etag) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	body := f.body
	if f.gz != nil && acceptsGzip(r) {
		hd.Set("Content-Encoding", "gzip")
		body = f.gz
	}
	hd.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		w.Write(body)
	}
}

func acceptsGzip(r *http.Request) bool {
	for _, part := range strings.Split(r.Header.Get("Accept-Encoding"), ",") {
		enc, q, _ := strings.Cut(strings.TrimSpace(part), ";")
		if strings.EqualFold(strings.TrimSpace(enc), "gzip") {
			return strings.TrimSpace(q) != "q=0"
		}
	}
	return false
}
