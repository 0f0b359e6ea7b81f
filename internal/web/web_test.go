package web

import (
	"bufio"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	assets "github.com/aetherium/aetherium/web"
)

func get(t *testing.T, h http.Handler, method, path string, hdr map[string]string) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(method, path, nil)
	for k, v := range hdr {
		r.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func TestHandler(t *testing.T) {
	h := New()
	for _, c := range []struct {
		path, status, ctype, contains string
	}{
		{"/", "200", "text/html; charset=utf-8", `<script type="module" src="/assets/app.js">`},
		{"/vms", "200", "text/html; charset=utf-8", "<title>Aetherium</title>"},
		{"/vms/0b6f2b8e-7a8b-4f2c-9c1d-5b1e2f3a4b5c", "200", "text/html; charset=utf-8", "<main"},
		{"/runs/x/y", "200", "text/html; charset=utf-8", "<main"},
		{"/assets/app.js", "200", "text/javascript; charset=utf-8", "import"},
		{"/assets/style.css", "200", "text/css; charset=utf-8", ":root"},
		{"/assets/vendor/xterm.mjs", "200", "text/javascript; charset=utf-8", "Terminal"},
		{"/assets/vendor/xterm.css", "200", "text/css; charset=utf-8", ".xterm"},
		{"/assets/icon.svg", "200", "image/svg+xml", "<svg"},
		{"/assets/nope.js", "404", "", ""},
		{"/assets/../web.go", "404", "", ""},
		{"/api/v1/nope", "404", "", ""}, // never the app's
		{"/api", "404", "", ""},
	} {
		w := get(t, h, "GET", c.path, nil)
		if got := w.Code; strconv.Itoa(got) != c.status {
			t.Errorf("GET %s: %d, want %s", c.path, got, c.status)
			continue
		}
		hd := w.Header()
		if hd.Get("Content-Security-Policy") != CSP || hd.Get("X-Content-Type-Options") != "nosniff" || hd.Get("X-Frame-Options") != "DENY" {
			t.Errorf("GET %s: security headers %v", c.path, hd)
		}
		if c.status != "200" {
			continue
		}
		if hd.Get("Content-Type") != c.ctype || !strings.Contains(w.Body.String(), c.contains) {
			t.Errorf("GET %s: Content-Type %q, body has %q: %v", c.path, hd.Get("Content-Type"), c.contains, strings.Contains(w.Body.String(), c.contains))
		}
		if hd.Get("ETag") == "" || hd.Get("Cache-Control") != "no-cache" {
			t.Errorf("GET %s: ETag %q Cache-Control %q", c.path, hd.Get("ETag"), hd.Get("Cache-Control"))
		}
		// Revalidation: the same ETag is a 304 without a body.
		if w2 := get(t, h, "GET", c.path, map[string]string{"If-None-Match": hd.Get("ETag")}); w2.Code != 304 || w2.Body.Len() != 0 {
			t.Errorf("GET %s with its ETag: %d, %d bytes", c.path, w2.Code, w2.Body.Len())
		}
	}
	for _, want := range []string{"default-src 'self'", "script-src 'self';", "frame-ancestors 'none'", "connect-src 'self' ws: wss:"} {
		if !strings.Contains(CSP, want) {
			t.Errorf("CSP lacks %q", want)
		}
	}
	if strings.Contains(strings.Split(strings.Split(CSP, "script-src")[1], ";")[0], "unsafe") {
		t.Error("scripts must not be unsafe-inline or unsafe-eval")
	}
	// Compressed for clients that take gzip, the same bytes once decompressed.
	plain := get(t, h, "GET", "/assets/vendor/xterm.mjs", nil)
	gz := get(t, h, "GET", "/assets/vendor/xterm.mjs", map[string]string{"Accept-Encoding": "br, gzip"})
	if gz.Header().Get("Content-Encoding") != "gzip" || gz.Body.Len() >= plain.Body.Len()/2 {
		t.Fatalf("gzip: encoding %q, %d of %d bytes", gz.Header().Get("Content-Encoding"), gz.Body.Len(), plain.Body.Len())
	}
	zr, err := gzip.NewReader(gz.Body)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(zr)
	if string(b) != plain.Body.String() {
		t.Error("the gzipped file differs from the file")
	}
	// Other methods, and HEAD.
	if w := get(t, h, "POST", "/vms", nil); w.Code != 405 || w.Header().Get("Allow") != "GET, HEAD" {
		t.Errorf("POST: %d Allow %q", w.Code, w.Header().Get("Allow"))
	}
	if w := get(t, h, "HEAD", "/", nil); w.Code != 200 || w.Body.Len() != 0 || w.Header().Get("Content-Length") == "0" {
		t.Errorf("HEAD: %d, %d bytes, Content-Length %q", w.Code, w.Body.Len(), w.Header().Get("Content-Length"))
	}
}

// TestNoInlineScripts: the CSP forbids inline scripts and handlers, so the page must have none.
func TestNoInlineScripts(t *testing.T) {
	b, err := fs.ReadFile(assets.Static, "static/index.html")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for _, bad := range []string{"<script>", " onclick=", " onload=", "javascript:", "<style"} {
		if strings.Contains(s, bad) {
			t.Errorf("index.html has %q", bad)
		}
	}
}

// TestVendorFilesMatchTheirSums: web/static/vendor is what web/vendor.sh copied from the pinned packages
// (web/vendor.sh --check compares with the packages themselves; this catches an edit by hand).
func TestVendorFilesMatchTheirSums(t *testing.T) {
	f, err := assets.Static.Open("static/vendor/SHA256SUMS")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		sum, name, ok := strings.Cut(sc.Text(), "  ")
		if !ok {
			t.Fatalf("bad line %q", sc.Text())
		}
		b, err := fs.ReadFile(assets.Static, "static/vendor/"+name)
		if err != nil {
			t.Fatal(err)
		}
		got := sha256.Sum256(b)
		if hex.EncodeToString(got[:]) != sum {
			t.Errorf("%s does not match SHA256SUMS: run web/vendor.sh", name)
		}
		n++
	}
	if n < 4 {
		t.Errorf("SHA256SUMS lists %d files", n)
	}
}

// TestModulesParse: every module of the app parses (node --check; skipped without node). The browser test
// (test/e2e TestDashboard) runs them; this catches a syntax error in a second.
func TestModulesParse(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("SKIPPED: node is not on PATH")
	}
	dir := t.TempDir()
	entries, err := fs.ReadDir(assets.Static, "static")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".js") {
			continue
		}
		b, _ := fs.ReadFile(assets.Static, "static/"+e.Name())
		p := filepath.Join(dir, strings.TrimSuffix(e.Name(), ".js")+".mjs")
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(node, "--check", p).CombinedOutput(); err != nil {
			t.Errorf("%s does not parse: %s", e.Name(), out)
		}
	}
}
