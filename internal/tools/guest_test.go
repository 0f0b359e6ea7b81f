//go:build linux

package tools_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/tools"
	"github.com/aetherium/aetherium/internal/tools/toolstest"
)

// guestCatalog is a catalog of tools served by reg: npm packages, a tarball with a top directory, a single file,
// one that requires another, and a debian tool.
func guestCatalog(t *testing.T, reg *toolstest.Registry) *tools.Catalog {
	t.Helper()
	_, greetSum := reg.AddFile("greet-1.0.0.tar.gz", toolstest.TarGz("greet-1.0.0/", map[string]string{
		"bin/greet": "#!/bin/sh\necho \"greet 1.0.0 from $(dirname \"$(readlink -f \"$0\")\")\"\n", "share/doc": "docs\n"}))
	_, singleSum := reg.AddFile("single-0.9", []byte("#!/bin/sh\necho single 0.9\n"))
	yaml := `tools:
  hello:
    description: npm test tool
    kind: npm
    package: "@test/hello"
    default: latest
    bins: {hello: bin/hello}
    verify: [hello, --version]
  needs-hello:
    description: requires hello
    kind: npm
    package: needs-hello
    default: latest
    requires: [hello]
    bins: {needs-hello: bin/needs-hello}
    verify: [needs-hello]
  bad:
    description: its tarball does not match its integrity
    kind: npm
    package: bad
    default: latest
    bins: {bad: bin/bad}
    verify: [bad]
  greet:
    description: tarball test tool
    kind: tarball
    url: ` + reg.URL + `/files/greet-{version}.tar.gz
    default: latest
    strip_components: 1
    versions: {"1.0.0": ` + greetSum + `}
    bins: {greet: bin/greet}
    verify: [greet]
  single:
    description: single-file test tool
    kind: tarball
    format: file
    url: ` + reg.URL + `/files/single-{version}
    default: latest
    versions: {"0.9": ` + singleSum + `}
    bins: {single: single}
    verify: [single]
  jq:
    description: debian tool
    kind: debian
    packages: [jq]
    bins: {jq: /usr/bin/jq}
    verify: [jq, --version]
`
	c, err := tools.Load(strings.NewReader(yaml))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func hello(v string, code int) map[string]string {
	return map[string]string{"bin/hello": "#!/bin/sh\necho hello " + v + "\nexit " + map[bool]string{true: "0", false: "1"}[code == 0] + "\n",
		"lib/data.txt": "data of " + v + "\n"}
}

// TestInstallIntoGuest installs tools from a local registry into a real QEMU guest through its agent: the guest
// has no network; the host downloads, the agent uploads, the guest unpacks and runs them.
func TestInstallIntoGuest(t *testing.T) {
	b := newBackend(t, busyboxPath, nil)
	c := boot(t, b, "tools-guest", 0)
	target := tools.NewAgentTarget(c, "tools-guest")
	reg := toolstest.NewRegistry(t)
	reg.AddNPM("@test/hello", "1.0.0", map[string]map[string]string{"1.0.0": hello("1.0.0", 0), "2.0.0": hello("2.0.0", 1)})
	reg.AddNPM("needs-hello", "0.1.0", map[string]map[string]string{"0.1.0": {"bin/needs-hello": "#!/bin/sh\nexec hello\n"}})
	reg.AddNPM("bad", "1.0.0", map[string]map[string]string{"1.0.0": {"bin/bad": "#!/bin/sh\necho bad\n"}})
	reg.CorruptNPM("bad", "1.0.0")
	cat := guestCatalog(t, reg)
	cache := t.TempDir()
	in, err := tools.NewInstaller(tools.Config{Catalog: cat, CacheDir: cache, NPMRegistry: reg.URL})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var lines []string
	progress := func(l string) { lines = append(lines, l); t.Log("progress: " + l) }

	reqs, err := cat.Parse([]string{"hello", "greet", "single"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	done, err := in.Install(ctx, target, reqs, progress)
	if err != nil {
		t.Fatal(err)
	}
	if len(done) != 3 || done[0].Version != "1.0.0" || done[0].Verified != "hello 1.0.0" || !done[0].Downloaded ||
		done[1].Name != "greet" || done[2].Verified != "single 0.9" {
		t.Fatalf("installed: %+v", done)
	}
	all := strings.Join(lines, "\n")
	for _, want := range []string{"resolving hello, greet, single", "downloading hello 1.0.0 (", "installing hello 1.0.0", "verified hello: hello 1.0.0"} {
		if !strings.Contains(all, want) {
			t.Errorf("progress lacks %q:\n%s", want, all)
		}
	}
	if out := mustSh(t, c, "hello; greet; single"); out != "hello 1.0.0\ngreet 1.0.0 from /opt/aetherium/tools/greet/1.0.0/bin\nsingle 0.9\n" {
		t.Errorf("running the tools printed %q", out)
	}
	// Unpacked as root (the tarball says uid 65534), readable by everyone, linked, recorded; no temporary files.
	if out := mustSh(t, c, "stat -c '%u %a' /opt/aetherium/tools/hello/1.0.0/lib/data.txt; readlink /usr/local/bin/hello; readlink /opt/aetherium/tools/hello/current; ls -A /opt/aetherium/tools"); out !=
		"0 644\n/opt/aetherium/tools/hello/1.0.0/bin/hello\n1.0.0\ngreet\nhello\nsingle\ntools.json\n" {
		t.Errorf("layout in the guest:\n%s", out)
	}
	inv, err := in.Inventory(ctx, target)
	if err != nil || inv["hello"] != "1.0.0" || inv["greet"] != "1.0.0" || inv["single"] != "0.9" {
		t.Errorf("inventory: %v, %v", inv, err)
	}

	// Installing again downloads and installs nothing.
	hits := reg.FileHits()
	done, err = in.Install(ctx, target, reqs, nil)
	if err != nil || !done[0].AlreadyPresent || !done[1].AlreadyPresent || reg.FileHits() != hits {
		t.Fatalf("second install: %+v, %v, %d new downloads", done, err, reg.FileHits()-hits)
	}

	// A required tool that is present is not installed again.
	done, err = in.Install(ctx, target, []tools.Request{{Name: "needs-hello"}}, nil)
	if err != nil || len(done) != 2 || !done[0].AlreadyPresent || done[1].Verified != "hello 1.0.0" {
		t.Fatalf("needs-hello: %+v, %v", done, err)
	}

	t.Run("failed verification rolls back", func(t *testing.T) {
		_, err := in.Install(ctx, target, []tools.Request{{Name: "hello", Version: "2.0.0"}}, nil)
		if err == nil || !strings.Contains(err.Error(), "verify hello 2.0.0") || !strings.Contains(err.Error(), "hello 2.0.0") {
			t.Fatalf("install of a version whose verification fails: %v", err)
		}
		if out := mustSh(t, c, "hello; readlink /opt/aetherium/tools/hello/current; ls /opt/aetherium/tools/hello; ls -A /opt/aetherium/tools"); out !=
			"hello 1.0.0\n1.0.0\n1.0.0\ncurrent\ngreet\nhello\nneeds-hello\nsingle\ntools.json\n" {
			t.Errorf("after the failed install:\n%s", out)
		}
		if inv, _ := in.Inventory(ctx, target); inv["hello"] != "1.0.0" {
			t.Errorf("inventory after the failed install: %v", inv)
		}
	})

	t.Run("bad checksum installs nothing", func(t *testing.T) {
		_, err := in.Install(ctx, target, []tools.Request{{Name: "bad"}}, nil)
		if !errors.Is(err, tools.ErrChecksum) || !strings.Contains(err.Error(), "bad 1.0.0") {
			t.Fatalf("install of a corrupt download: %v; want ErrChecksum naming it", err)
		}
		if out, code := sh(t, c, "ls /opt/aetherium/tools/bad /usr/local/bin/bad /opt/aetherium/tools/.tmp"); code == 0 {
			t.Errorf("the corrupt tool left files: %s", out)
		}
		if inv, _ := in.Inventory(ctx, target); inv["bad"] != "" {
			t.Errorf("the corrupt tool was recorded: %v", inv)
		}
	})

	t.Run("debian tool needs a Debian template", func(t *testing.T) {
		_, err := in.Install(ctx, target, []tools.Request{{Name: "jq"}}, nil)
		if err == nil || !strings.Contains(err.Error(), "no dpkg database") || !strings.Contains(err.Error(), "jq") {
			t.Fatalf("debian tool into busybox: %v", err)
		}
	})

	t.Run("host cache serves a new guest", func(t *testing.T) {
		mustSh(t, c, "rm -rf /opt/aetherium/tools /usr/local/bin/hello /usr/local/bin/greet")
		hits := reg.FileHits()
		done, err := in.Install(ctx, target, []tools.Request{{Name: "hello"}, {Name: "greet"}}, nil)
		if err != nil || done[0].Downloaded || done[1].Downloaded || done[0].AlreadyPresent || reg.FileHits() != hits {
			t.Fatalf("install from the cache: %+v, %v, %d downloads", done, err, reg.FileHits()-hits)
		}
		if out := mustSh(t, c, "hello"); out != "hello 1.0.0\n" {
			t.Errorf("hello printed %q", out)
		}
	})
}
