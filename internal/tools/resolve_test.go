//go:build linux

package tools

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aetherium/aetherium/internal/tools/toolstest"
)

// testCatalog is a catalog whose npm tools live on a FakeRegistry and whose tarball tool is served by it.
func testCatalog(t testing.TB, reg *toolstest.Registry) *Catalog {
	t.Helper()
	url, sum := reg.AddFile("greet-1.0.0.tar.gz", toolstest.TarGz("greet-1.0.0/", map[string]string{"bin/greet": "#!/bin/sh\necho greet 1.0.0\n"}))
	_ = url
	yaml := `tools:
  hello:
    description: test tool
    kind: npm
    package: "@test/hello"
    default: stable
    aliases: {stable: "1"}
    bins: {hello: bin/hello}
    verify: [hello, --version]
  needs-hello:
    description: test tool that requires hello
    kind: npm
    package: needs-hello
    default: latest
    requires: [hello]
    bins: {needs-hello: bin/needs-hello}
    verify: [needs-hello]
  greet:
    description: test tarball
    kind: tarball
    url: ` + reg.URL + `/files/greet-{version}.tar.gz
    default: latest
    strip_components: 1
    versions: {"1.0.0": ` + sum + `}
    bins: {greet: bin/greet}
    verify: [greet]
  dpkg-thing:
    description: test debian tool
    kind: debian
    packages: [jq]
    bins: {jq: /usr/bin/jq}
    verify: [jq, --version]
`
	c, err := Load(strings.NewReader(yaml))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func script(out string) string { return "#!/bin/sh\necho '" + out + "'\n" }

func publishHello(reg *toolstest.Registry) {
	reg.AddNPM("@test/hello", "2.0.0", map[string]map[string]string{
		"1.0.0":       {"bin/hello": script("hello 1.0.0")},
		"1.2.0":       {"bin/hello": script("hello 1.2.0")},
		"1.3.0-rc.1":  {"bin/hello": script("hello 1.3.0-rc.1")},
		"2.0.0":       {"bin/hello": script("hello 2.0.0")},
		"3.0.0-beta1": {"bin/hello": script("hello 3")},
	})
	reg.AddNPM("needs-hello", "0.1.0", map[string]map[string]string{"0.1.0": {"bin/needs-hello": "#!/bin/sh\nexec hello\n"}})
}

func newTestInstaller(t testing.TB, reg *toolstest.Registry, cache string) *Installer {
	t.Helper()
	if cache == "" {
		cache = t.TempDir()
	}
	in, err := NewInstaller(Config{Catalog: testCatalog(t, reg), CacheDir: cache, NPMRegistry: reg.URL})
	if err != nil {
		t.Fatal(err)
	}
	return in
}

func TestResolve(t *testing.T) {
	reg := toolstest.NewRegistry(t)
	publishHello(reg)
	in := newTestInstaller(t, reg, "")
	ctx := context.Background()
	for spec, want := range map[string]string{"": "1.2.0", "stable": "1.2.0", "1": "1.2.0", "latest": "2.0.0",
		"1.0.0": "1.0.0", "1.3.0-rc.1": "1.3.0-rc.1", "2": "2.0.0"} {
		rs, err := in.Resolve(ctx, []Request{{Name: "hello", Version: spec}}, nil)
		if err != nil || len(rs) != 1 || rs[0].Version != want {
			t.Errorf("hello@%q resolved to %+v, %v; want %s", spec, rs, err, want)
			continue
		}
		if rs[0].Checksum.Algo != "sha512" || !rs[0].Checksum.valid() || !strings.HasPrefix(rs[0].URL, reg.URL) {
			t.Errorf("hello@%q: %+v", spec, rs[0])
		}
	}
	_, err := in.Resolve(ctx, []Request{{Name: "hello", Version: "9"}}, nil)
	if !errors.Is(err, ErrUnknownVersion) || !strings.Contains(err.Error(), "2.0.0, 1.2.0, 1.0.0") || !strings.Contains(err.Error(), "latest") {
		t.Errorf("hello@9: %v; want ErrUnknownVersion listing the newest versions and tags", err)
	}

	// Requirements come first and are marked implicit; one asked for is not.
	rs, err := in.Resolve(ctx, []Request{{Name: "needs-hello"}}, nil)
	if err != nil || len(rs) != 2 || rs[0].Name != "hello" || !rs[0].Implicit || rs[1].Name != "needs-hello" || rs[1].Implicit {
		t.Fatalf("needs-hello resolved to %+v, %v", rs, err)
	}
	rs, err = in.Resolve(ctx, []Request{{Name: "needs-hello"}, {Name: "hello", Version: "1.0.0"}}, nil)
	if err != nil || rs[0].Name != "hello" || rs[0].Implicit || rs[0].Version != "1.0.0" {
		t.Fatalf("needs-hello with hello@1.0.0: %+v, %v", rs, err)
	}

	// Tarballs resolve from the catalog alone; debian tools to their packages.
	rs, err = in.Resolve(ctx, []Request{{Name: "greet", Version: "1"}, {Name: "dpkg-thing"}}, nil)
	if err != nil || rs[0].Version != "1.0.0" || rs[0].Checksum.Algo != "sha256" || !strings.HasSuffix(rs[0].URL, "/files/greet-1.0.0.tar.gz") ||
		rs[1].Kind != KindDebian || rs[1].Packages[0] != "jq" {
		t.Fatalf("greet and dpkg-thing: %+v, %v", rs, err)
	}
	if _, err := in.Resolve(ctx, []Request{{Name: "greet", Version: "2"}}, nil); !errors.Is(err, ErrUnknownVersion) || !strings.Contains(err.Error(), "available: 1.0.0") {
		t.Errorf("greet@2: %v", err)
	}
	if _, err := in.Resolve(ctx, []Request{{Name: "nope"}}, nil); !errors.Is(err, ErrUnknownTool) {
		t.Errorf("unknown tool: %v", err)
	}

	// Keys differ with the version and the file, so templates of different resolutions differ.
	a, _ := in.Resolve(ctx, []Request{{Name: "hello", Version: "1.0.0"}}, nil)
	b, _ := in.Resolve(ctx, []Request{{Name: "hello", Version: "1.2.0"}}, nil)
	if a[0].Key() == b[0].Key() || !strings.Contains(a[0].Key(), "sha512:") {
		t.Errorf("keys: %q and %q", a[0].Key(), b[0].Key())
	}
}

func TestResolveOfflineUsesSavedPackageData(t *testing.T) {
	reg := toolstest.NewRegistry(t)
	publishHello(reg)
	cache := t.TempDir()
	in := newTestInstaller(t, reg, cache)
	ctx := context.Background()
	reg.SetDown(true)
	if _, err := in.Resolve(ctx, []Request{{Name: "hello"}}, nil); err == nil || !strings.Contains(err.Error(), "503") {
		t.Fatalf("resolve with the registry down and nothing saved: %v; want the 503", err)
	}
	reg.SetDown(false)
	if _, err := in.Resolve(ctx, []Request{{Name: "hello"}}, nil); err != nil {
		t.Fatal(err)
	}
	reg.SetDown(true)
	var lines []string
	rs, err := in.Resolve(ctx, []Request{{Name: "hello"}}, func(l string) { lines = append(lines, l) })
	if err != nil || rs[0].Version != "1.2.0" {
		t.Fatalf("offline resolve: %+v, %v", rs, err)
	}
	if !strings.Contains(strings.Join(lines, "\n"), "saved earlier") {
		t.Errorf("no progress line about the saved data: %q", lines)
	}
}

func TestFetchCache(t *testing.T) {
	reg := toolstest.NewRegistry(t)
	publishHello(reg)
	cache := t.TempDir()
	in := newTestInstaller(t, reg, cache)
	ctx := context.Background()
	rs, err := in.Resolve(ctx, []Request{{Name: "hello", Version: "1.0.0"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := rs[0]
	var lines []string
	f, err := in.cache.fetch(ctx, r.URL, r.Checksum, "hello", func(l string) { lines = append(lines, l) })
	if err != nil || !f.Downloaded || len(lines) != 1 || !strings.HasPrefix(lines[0], "downloading hello (") {
		t.Fatalf("first fetch: %+v, %v, %q", f, err, lines)
	}
	hits := reg.FileHits()
	g, err := in.cache.fetch(ctx, r.URL, r.Checksum, "hello", func(string) {})
	if err != nil || g.Downloaded || g.Path != f.Path || reg.FileHits() != hits {
		t.Fatalf("second fetch: %+v, %v; %d downloads, want the cached file and no new download", g, err, reg.FileHits()-hits)
	}

	// A damaged cache file is never used: it is fetched again.
	if err := os.Chmod(f.Path, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.Path, []byte("damaged"), 0o644); err != nil {
		t.Fatal(err)
	}
	g, err = in.cache.fetch(ctx, r.URL, r.Checksum, "hello", func(string) {})
	if err != nil || !g.Downloaded || reg.FileHits() != hits+1 {
		t.Fatalf("fetch over a damaged cache file: %+v, %v", g, err)
	}

	// A download that does not match is refused, and neither it nor a partial file stays.
	reg.CorruptNPM("@test/hello", "1.2.0")
	rs, err = in.Resolve(ctx, []Request{{Name: "hello", Version: "1.2.0"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = in.cache.fetch(ctx, rs[0].URL, rs[0].Checksum, "hello 1.2.0", func(string) {})
	if !errors.Is(err, ErrChecksum) || !strings.Contains(err.Error(), "hello 1.2.0") {
		t.Fatalf("corrupt download: %v; want ErrChecksum naming it", err)
	}
	if _, err := os.Stat(in.cache.blobPath(rs[0].Checksum)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a mismatching download was kept: %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(cache, "tmp", "*")); len(left) != 0 {
		t.Errorf("partial downloads left: %v", left)
	}

	// A missing file is an error that says so.
	_, err = in.cache.fetch(ctx, reg.URL+"/nothing-here", rs[0].Checksum, "missing", func(string) {})
	if err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("404: %v", err)
	}
}

func TestParseIntegrity(t *testing.T) {
	if _, err := parseIntegrity("sha1-AAAA"); err == nil {
		t.Error("sha1 integrity accepted")
	}
	if _, err := parseIntegrity("sha512-notbase64!"); err == nil {
		t.Error("malformed sha512 accepted")
	}
	c, err := parseIntegrity("sha1-AAAA sha512-z4PhNX7vuL3xVChQ1m2AB9Yg5AULVxXcg/SpIdNs6c5H0NE8XYXysP+DGNKHfuwvY7kxvUdBeoGlODJ6+SfaPg==")
	if err != nil || c.Algo != "sha512" || len(c.Hex) != 128 {
		t.Errorf("parseIntegrity: %+v, %v", c, err)
	}
}

func TestParsePrintURIs(t *testing.T) {
	out := []byte("'http://deb.debian.org/debian/pool/main/j/jq/jq_1.6-2.1%2bdeb12u2_amd64.deb' jq_1.6-2.1+deb12u2_amd64.deb 63984 SHA256:f2303584378ac85f6d3a9ae8e46412196061681e81610d3b020abe4b5d389eb0\n" +
		"'http://deb.debian.org/debian/pool/main/j/jq/libjq1_1.6-2.1%2bdeb12u2_amd64.deb' libjq1_1.6-2.1+deb12u2_amd64.deb 135656 SHA256:f501b6349a3c2462af59e7a598ebd71e7889de46c9ddf852eb12ebeba7df21a2\n")
	files, err := parsePrintURIs(out)
	if err != nil || len(files) != 2 || files[0].Package() != "jq" || files[1].Package() != "libjq1" || files[1].Size != 135656 {
		t.Fatalf("parsePrintURIs: %+v, %v", files, err)
	}
	if _, err := parsePrintURIs([]byte("'http://x/y.deb' ../y.deb 1 SHA256:f501b6349a3c2462af59e7a598ebd71e7889de46c9ddf852eb12ebeba7df21a2\n")); err == nil {
		t.Error("a file name with a path was accepted")
	}
	if _, err := parsePrintURIs([]byte("'http://x/y.deb' y.deb 1 MD5Sum:abc\n")); err == nil {
		t.Error("an MD5 line was accepted")
	}
}
