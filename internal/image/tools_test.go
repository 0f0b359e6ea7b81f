//go:build linux

package image

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/tools"
	"github.com/aetherium/aetherium/internal/tools/toolstest"
)

func toolCatalog(t *testing.T, reg *toolstest.Registry) *tools.Catalog {
	t.Helper()
	_, sum := reg.AddFile("greet-1.0.0.tar.gz", toolstest.TarGz("greet/", map[string]string{"bin/greet": "#!/bin/sh\necho greet\n"}))
	c, err := tools.Load(strings.NewReader(`tools:
  hello:
    description: test tool
    kind: npm
    package: hello
    default: latest
    bins: {hello: bin/hello}
    verify: [hello]
  greet:
    description: test tarball
    kind: tarball
    url: ` + reg.URL + `/files/greet-{version}.tar.gz
    default: latest
    strip_components: 1
    versions: {"1.0.0": ` + sum + `}
    bins: {greet: bin/greet}
    verify: [greet]
  jq:
    description: debian tool
    kind: debian
    packages: [jq]
    bins: {jq: /usr/bin/jq}
    verify: [jq, --version]
`))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestBuildWithTools installs tools into a Docker-sourced template through the chroot, and checks what the
// template records and when it is reused.
func TestBuildWithTools(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("AETHERIUM_REQUIRE_SERVICES") == "1" {
			t.Fatal("AETHERIUM_REQUIRE_SERVICES=1 but installing tools into templates needs root")
		}
		t.Skip("SKIPPED: installing tools into templates needs root (chroot, mounts)")
	}
	b, _ := newBuilder(t)
	reg := toolstest.NewRegistry(t)
	reg.AddNPM("hello", "1.0.0", map[string]map[string]string{"1.0.0": {"bin/hello": "#!/bin/sh\necho hello 1.0.0\n"}})
	inst, err := tools.NewInstaller(tools.Config{Catalog: toolCatalog(t, reg), CacheDir: t.TempDir(), NPMRegistry: reg.URL})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	opts := BuildOptions{FromDocker: testImage, Name: "withtools", AgentBinary: agentBinary, Tools: []string{"hello", "greet"},
		ToolInstaller: inst}
	var progress bytes.Buffer
	opts.Progress = &progress
	m, reused, err := b.Build(ctx, opts)
	if err != nil || reused {
		t.Fatalf("Build: %v (reused %v)\n%s", err, reused, progress.String())
	}
	if m.Tools["hello"] != "1.0.0" || m.Tools["greet"] != "1.0.0" || len(m.Tools) != 2 {
		t.Errorf("manifest tools: %v", m.Tools)
	}
	for _, want := range []string{"tools: verified hello: hello 1.0.0", "tools: verified greet: greet", "tools installed and verified"} {
		if !strings.Contains(progress.String(), want) {
			t.Errorf("progress lacks %q:\n%s", want, progress.String())
		}
	}
	if out := debugfs(t, m.Path, "cat /opt/aetherium/tools/tools.json"); !strings.Contains(out, `"hello": "1.0.0"`) {
		t.Errorf("tools.json in the template: %s", out)
	}
	if out := debugfs(t, m.Path, "stat /usr/local/bin/hello"); !strings.Contains(out, "/opt/aetherium/tools/hello/1.0.0/bin/hello") {
		t.Errorf("/usr/local/bin/hello in the template: %s", out)
	}
	// Nothing of the host stays: the mount points are empty, no temporary directory or resolv.conf copy.
	for dir, most := range map[string]int{"/proc": 2, "/sys": 2, "/dev": 8, "/opt/aetherium/tools": 5} {
		out := debugfs(t, m.Path, "ls -p "+dir)
		if n := strings.Count(out, "\n/"); n > most || strings.Contains(out, "/.tmp/") {
			t.Errorf("ls %s in the template has %d entries (at most %d expected):\n%s", dir, n, most, out)
		}
	}
	if out := debugfs(t, m.Path, "stat /etc/resolv.conf"); strings.Contains(out, "Size: ") && !strings.Contains(out, "Size: 0") {
		t.Errorf("a resolv.conf was left in the template:\n%s", out)
	}
	got, err := b.store.Get(m.Ref())
	if err != nil || got.Tools["hello"] != "1.0.0" {
		t.Errorf("stored manifest: %+v, %v", got.Tools, err)
	}
	if miss := got.MissingTools(inst.Catalog(), []tools.Request{{Name: "hello"}, {Name: "greet", Version: "1"}, {Name: "jq"}}); len(miss) != 1 || miss[0].Name != "jq" {
		t.Errorf("MissingTools = %v, want jq", miss)
	}

	// The same request resolves the same way: reused. A new release under it: a new template.
	again, reused, err := b.Build(ctx, opts)
	if err != nil || !reused || again.Version != m.Version {
		t.Fatalf("rebuild with unchanged tools: %v, reused %v, %s vs %s", err, reused, again.Version, m.Version)
	}
	reg.AddNPM("hello", "1.1.0", map[string]map[string]string{"1.0.0": {"bin/hello": "#!/bin/sh\necho hello 1.0.0\n"},
		"1.1.0": {"bin/hello": "#!/bin/sh\necho hello 1.1.0\n"}})
	newer, reused, err := b.Build(ctx, opts)
	if err != nil || reused || newer.Version == m.Version || newer.Tools["hello"] != "1.1.0" {
		t.Fatalf("rebuild after a new release: %v, reused %v, tools %v", err, reused, newer.Tools)
	}
	// Without tools the inputs are those of a template without them (hashes of old templates still match).
	plain, _, err := b.Build(ctx, BuildOptions{FromDocker: testImage, Name: "withtools", AgentBinary: agentBinary})
	if err != nil || plain.InputsHash == m.InputsHash || len(plain.Tools) != 0 {
		t.Fatalf("build without tools: %v, %+v", err, plain)
	}

	t.Run("refusals", func(t *testing.T) {
		for _, tc := range []struct {
			opts BuildOptions
			want string
			is   error
		}{
			{BuildOptions{Tools: []string{"hello"}}, "no tool installer", nil},
			{BuildOptions{Tools: []string{"nodejs"}, ToolInstaller: inst}, "available tools are greet, hello, jq", tools.ErrUnknownTool},
			{BuildOptions{Tools: []string{"hello@7"}, ToolInstaller: inst}, "no version", tools.ErrUnknownVersion},
			{BuildOptions{Tools: []string{"jq"}, ToolInstaller: inst}, "no dpkg database", nil},
		} {
			o := tc.opts
			o.FromDocker, o.Name, o.AgentBinary = testImage, "refused", agentBinary
			_, _, err := b.Build(ctx, o)
			if err == nil || !strings.Contains(err.Error(), tc.want) || (tc.is != nil && !errors.Is(err, tc.is)) {
				t.Errorf("Build(tools %v) = %v; want an error with %q", tc.opts.Tools, err, tc.want)
			}
		}
		if ms, _ := b.store.versions("refused"); len(ms) != 0 {
			t.Errorf("refused builds made templates: %v", ms)
		}
	})
}

// TestChrootSeesNothingOfTheHost: commands run in a template's staging tree get their own pid namespace and /proc
// (no host process, so no /proc/1/root into the host) and a /dev without the host's disks.
func TestChrootSeesNothingOfTheHost(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("AETHERIUM_REQUIRE_SERVICES") == "1" {
			t.Fatal("AETHERIUM_REQUIRE_SERVICES=1 but chroot tests need root")
		}
		t.Skip("SKIPPED: needs root")
	}
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatalf("needs Debian's busybox-static: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bin", "busybox"), bb, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, app := range []string{"sh", "ls", "cat", "wc"} {
		if err := os.Symlink("busybox", filepath.Join(dir, "bin", app)); err != nil {
			t.Fatal(err)
		}
	}
	c, err := openChroot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := c.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
		if ms, _ := mountsUnder(dir); len(ms) != 0 {
			t.Errorf("mounts left under the staging tree: %v", ms)
		}
	}()
	env := map[string]string{"PATH": "/bin"}
	res, err := c.Run(t.Context(), []string{"sh", "-c", "ls /proc | grep -c '^[0-9]' || true; cat /proc/1/cmdline; echo; ls /dev"}, env)
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("run: %+v %v", res, err)
	}
	out := string(res.Output)
	lines := strings.Split(out, "\n")
	if n, _ := strconv.Atoi(strings.TrimSpace(lines[0])); n == 0 || n > 4 {
		t.Fatalf("the chroot sees %s processes (want only its own):\n%s", lines[0], out)
	}
	if strings.Contains(lines[1], "init") || strings.Contains(lines[1], "systemd") {
		t.Fatalf("pid 1 in the chroot is the host's: %q", lines[1])
	}
	for _, dev := range []string{"sda", "vda", "nvme0n1", "kvm", "mem"} {
		for _, f := range strings.Fields(strings.Join(lines[2:], " ")) {
			if f == dev {
				t.Fatalf("/dev in the chroot has the host's %s:\n%s", dev, out)
			}
		}
	}
	if !strings.Contains(out, "null") || !strings.Contains(out, "urandom") {
		t.Fatalf("/dev lacks the basic devices:\n%s", out)
	}
}
