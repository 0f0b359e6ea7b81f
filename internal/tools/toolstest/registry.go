// Package toolstest has fixtures for tests of tool installs: a local npm-compatible registry that also serves
// plain files.
package toolstest

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"testing"
)

// Registry is a local HTTP server that answers like an npm registry (package documents with dist-tags,
// versions, tarball URLs and sha512 integrity, and the tarballs it made) and serves plain files (for tarball
// tools).
type Registry struct {
	URL string

	mu    sync.Mutex
	docs  map[string]map[string]any // package name -> document
	files map[string][]byte         // URL path -> content
	hits  map[string]int            // URL path -> GETs
	down  bool
}

// NewRegistry starts a registry that stops when the test ends.
func NewRegistry(t testing.TB) *Registry {
	t.Helper()
	r := &Registry{docs: map[string]map[string]any{}, files: map[string][]byte{}, hits: map[string]int{}}
	srv := httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(srv.Close)
	r.URL = srv.URL
	return r
}

func (r *Registry) serve(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := req.URL.EscapedPath()
	r.hits[p]++
	if r.down {
		http.Error(w, "down for the test", http.StatusServiceUnavailable)
		return
	}
	if b, ok := r.files[p]; ok {
		w.Header().Set("Content-Type", "application/octet-stream")
		_, _ = w.Write(b)
		return
	}
	name := strings.Replace(strings.TrimPrefix(p, "/"), "%2f", "/", 1)
	name = strings.Replace(name, "%2F", "/", 1)
	if doc, ok := r.docs[name]; ok {
		w.Header().Set("Content-Type", "application/vnd.npm.install-v1+json")
		_ = json.NewEncoder(w).Encode(doc)
		return
	}
	http.NotFound(w, req)
}

// SetDown makes every request fail with 503 (true) or be served again (false).
func (r *Registry) SetDown(down bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.down = down
}

// Hits is how often path was requested.
func (r *Registry) Hits(path string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.hits[path]
}

// FileHits is how many downloads of files (not package documents) were served.
func (r *Registry) FileHits() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for p, c := range r.hits {
		if _, ok := r.files[p]; ok {
			n += c
		}
	}
	return n
}

// AddNPM publishes versions of pkg: each one's tarball holds package/package.json and files (path -> content;
// files under bin/ are executable). latest is the "latest" dist-tag.
func (r *Registry) AddNPM(pkg, latest string, versions map[string]map[string]string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	vs := map[string]any{}
	for v, files := range versions {
		all := map[string]string{"package.json": `{"name":"` + pkg + `","version":"` + v + `"}`}
		for k, c := range files {
			all[k] = c
		}
		tgz := TarGz("package/", all)
		file := "/" + strings.ReplaceAll(pkg, "/", "-") + "/-/" + strings.ReplaceAll(pkg, "/", "-") + "-" + v + ".tgz"
		r.files[file] = tgz
		sum := sha512.Sum512(tgz)
		vs[v] = map[string]any{"name": pkg, "version": v, "dist": map[string]any{
			"tarball": r.URL + file, "integrity": "sha512-" + base64.StdEncoding.EncodeToString(sum[:]),
			"shasum": "unused"}}
	}
	r.docs[pkg] = map[string]any{"name": pkg, "dist-tags": map[string]string{"latest": latest}, "versions": vs}
}

// CorruptNPM replaces the tarball of pkg@version with other bytes, leaving its published integrity as it was.
func (r *Registry) CorruptNPM(pkg, version string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	file := "/" + strings.ReplaceAll(pkg, "/", "-") + "/-/" + strings.ReplaceAll(pkg, "/", "-") + "-" + version + ".tgz"
	r.files[file] = TarGz("package/", map[string]string{"package.json": "{}", "bin/evil": "#!/bin/sh\necho evil\n"})
}

// AddFile serves content at /files/name and returns its URL and sha256.
func (r *Registry) AddFile(name string, content []byte) (url, sum string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.files["/files/"+name] = content
	s := sha256.Sum256(content)
	return r.URL + "/files/" + name, hex.EncodeToString(s[:])
}

// TarGz makes a gzip-compressed tar of files (path -> content) under prefix; files below a bin/ directory get
// mode 0755, others 0644. Directories are implied, as in npm's tarballs.
func TarGz(prefix string, files map[string]string) []byte {
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		mode := int64(0o644)
		if strings.HasPrefix(n, "bin/") || strings.Contains(n, "/bin/") {
			mode = 0o755
		}
		_ = tw.WriteHeader(&tar.Header{Name: prefix + n, Mode: mode, Size: int64(len(files[n])), Typeflag: tar.TypeReg,
			Uname: "nobody", Uid: 65534, Gid: 65534})
		_, _ = tw.Write([]byte(files[n]))
	}
	_ = tw.Close()
	_ = gz.Close()
	return buf.Bytes()
}
