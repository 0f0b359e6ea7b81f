//go:build linux

package image

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/aetherium/aetherium/internal/image/imagetest"
)

// testMirror is the mirror the Debian tests use; AETHERIUM_DEBIAN_MIRROR points them at a closer one.
func testMirror() string {
	if m := os.Getenv("AETHERIUM_DEBIAN_MIRROR"); m != "" {
		return m
	}
	return DefaultDebianMirror
}

// debianSkipReason says why Debian builds cannot run here: "" when they can. network adds a probe of the mirror.
func debianSkipReason(network bool) string {
	if os.Geteuid() != 0 {
		return "not root (debootstrap needs root)"
	}
	if _, err := exec.LookPath("debootstrap"); err != nil {
		if _, err := os.Stat("/usr/sbin/debootstrap"); err != nil {
			return "debootstrap not installed (apt-get install debootstrap)"
		}
	}
	for _, tool := range []string{"mkfs.ext4", "e2fsck", "debugfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			return tool + " not installed (e2fsprogs)"
		}
	}
	if network {
		url := strings.TrimRight(testMirror(), "/") + "/dists/" + DefaultDebianSuite + "/Release"
		c := http.Client{Timeout: 15 * time.Second}
		resp, err := c.Head(url)
		if err != nil {
			return fmt.Sprintf("Debian mirror unreachable (%v); set AETHERIUM_DEBIAN_MIRROR to a reachable one", err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Sprintf("Debian mirror answers %s for %s", resp.Status, url)
		}
	}
	return ""
}

// requireDebian skips loudly when Debian builds cannot run, and fails instead under AETHERIUM_REQUIRE_SERVICES=1.
func requireDebian(tb testing.TB, network bool) {
	tb.Helper()
	if network && testing.Short() {
		tb.Skip("SKIPPED in -short mode: real debootstrap builds take a minute or more each")
	}
	reason := debianSkipReason(network)
	if reason == "" {
		return
	}
	if os.Getenv("AETHERIUM_REQUIRE_SERVICES") == "1" {
		tb.Fatalf("AETHERIUM_REQUIRE_SERVICES=1 but Debian image builds cannot run: %s", reason)
	}
	tb.Skip("SKIPPED: Debian image builds cannot run: " + reason)
}

var (
	debianAgentOnce sync.Once
	debianAgentPath string
	debianAgentErr  error
)

// testAgent is the agent built by TestMain, or, when TestMain skipped it (no Docker engine), one built here once
// into a directory that TestMain's own temporary directory does not cover (removed by the OS's /tmp clean-up).
func testAgent(tb testing.TB) string {
	tb.Helper()
	if agentBinary != "" {
		return agentBinary
	}
	debianAgentOnce.Do(func() {
		dir, err := os.MkdirTemp("", "aeimg-deb-agent-")
		if err != nil {
			debianAgentErr = err
			return
		}
		debianAgentPath, debianAgentErr = imagetest.BuildAgent(dir)
	})
	if debianAgentErr != nil {
		tb.Fatalf("build the agent: %v", debianAgentErr)
	}
	return debianAgentPath
}

// newDebianStore is an empty store whose clean-up checks that no build left a staging directory or a mount.
func newDebianStore(tb testing.TB) *Store {
	tb.Helper()
	s, err := NewStore(filepath.Join(tb.TempDir(), "images"))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { assertCleanStore(tb, s) })
	return s
}

func assertCleanStore(tb testing.TB, s *Store) {
	tb.Helper()
	if left, _ := os.ReadDir(filepath.Join(s.Dir(), tmpDir)); len(left) != 0 {
		tb.Errorf("staging left behind in %s: %v", filepath.Join(s.Dir(), tmpDir), left)
	}
	real, err := filepath.EvalSymlinks(s.Dir())
	if err != nil {
		tb.Fatal(err)
	}
	if ms, err := mountsUnder(real); err != nil || len(ms) != 0 {
		tb.Errorf("mounts left under the store: %v %v", ms, err)
		_ = unmountUnder(real)
	}
}

// TestDebianBuild makes one real Debian template (a cold debootstrap, 1-3 minutes and ~200 MB) and checks it from
// every side in subtests that share it.
func TestDebianBuild(t *testing.T) {
	requireDebian(t, true)
	agent := testAgent(t)
	s := newDebianStore(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	opts := BuildOptions{FromDebian: DefaultDebianSuite, Mirror: testMirror(), Name: "debian", AgentBinary: agent}
	var progress bytes.Buffer
	opts.Progress = &progress
	start := time.Now()
	m, reused, err := NewBuilder(s, nil, nil).Build(ctx, opts)
	if err != nil {
		t.Fatalf("Build: %v\nprogress:\n%s", err, progress.String())
	}
	t.Logf("cold Debian build: %s, template %d MiB, %d files, %d packages", time.Since(start).Round(time.Second), m.Size>>20, m.Files, len(m.Packages))
	if reused {
		t.Fatal("first build reported reuse")
	}
	for _, step := range []string{"debootstrap " + DefaultDebianSuite + " from", "debootstrap +", "I: Base system installed successfully",
		"debootstrap finished in", "packages installed", "making ext4", "verifying", m.Path} {
		if !strings.Contains(progress.String(), step) {
			t.Errorf("progress lacks %q:\n%s", step, progress.String())
		}
	}

	t.Run("template", func(t *testing.T) {
		if out, err := exec.Command("e2fsck", "-fn", m.Path).CombinedOutput(); err != nil {
			t.Errorf("e2fsck: %v\n%s", err, out)
		}
		if out := debugfs(t, m.Path, "stat "+GuestInit); !strings.Contains(out, "Type: regular") || !strings.Contains(out, "Mode:  0755") {
			t.Errorf("agent in image:\n%s", out)
		}
		// /bin is a symlink to usr/bin (merged /usr): debugfs follows it, as the guest will.
		for _, f := range []string{"/bin/bash", "/bin/sh", "/usr/bin/apt-get", "/usr/bin/dpkg", "/etc/ssl/certs/ca-certificates.crt"} {
			if out := debugfs(t, m.Path, "stat "+f); !strings.Contains(out, "Inode:") || strings.Contains(out, "not found") {
				t.Errorf("%s missing:\n%s", f, out)
			}
		}
		if out := debugfs(t, m.Path, "cat /etc/hostname"); !strings.Contains(out, guestHostname+"\n") {
			t.Errorf("/etc/hostname: %q", out)
		}
		if out := debugfs(t, m.Path, "cat /etc/hosts"); !strings.Contains(out, "127.0.0.1\tlocalhost") {
			t.Errorf("/etc/hosts: %q", out)
		}
		if out := debugfs(t, m.Path, "cat /etc/apt/sources.list"); !strings.Contains(out, DefaultDebianSuite) {
			t.Errorf("sources.list: %q", out)
		}
		// Gone: the build host's resolver configuration, apt's downloads and lists, debootstrap's work directory.
		for _, f := range []string{"/etc/resolv.conf", "/debootstrap"} {
			if out := debugfs(t, m.Path, "stat "+f); !strings.Contains(out, "not found") {
				t.Errorf("%s should not be in the template:\n%s", f, out)
			}
		}
		for _, d := range []string{"/var/lib/apt/lists", "/var/cache/apt/archives"} {
			for _, name := range strings.Fields(debugfs(t, m.Path, "ls "+d)) {
				if strings.HasSuffix(name, ".deb") || strings.HasSuffix(name, "_Packages") || strings.HasSuffix(name, "Release") {
					t.Errorf("%s still has %s", d, name)
				}
			}
		}
		for _, d := range []string{"/proc", "/sys", "/dev", "/tmp", "/run", "/root"} {
			if out := debugfs(t, m.Path, "stat "+d); !strings.Contains(out, "Type: directory") {
				t.Errorf("%s in image:\n%s", d, out)
			}
		}
		if fi, err := os.Stat(m.Path); err != nil || fi.Mode().Perm() != 0o444 || fi.Size() != m.Size {
			t.Errorf("template file: %v %v (manifest size %d)", fi, err, m.Size)
		}
	})

	t.Run("manifest", func(t *testing.T) {
		got, err := s.Get(m.Ref())
		if err != nil {
			t.Fatal(err)
		}
		if got.Source != "debian:"+DefaultDebianSuite || !strings.Contains(got.SourceID, strings.TrimRight(testMirror(), "/")) ||
			!strings.Contains(got.SourceID, "Release of") || got.Boot.Init != GuestInit || got.AgentVersion == "unknown" {
			t.Errorf("manifest: source %q id %q boot %+v agent %q", got.Source, got.SourceID, got.Boot, got.AgentVersion)
		}
		if !slices.IsSortedFunc(got.Packages, func(a, b Package) int { return strings.Compare(a.Name, b.Name) }) {
			t.Error("packages not sorted by name")
		}
		version := regexp.MustCompile(`^([0-9]+:)?[0-9][A-Za-z0-9.+~-]*$`)
		for _, p := range got.Packages {
			if !version.MatchString(p.Version) {
				t.Errorf("package %s has version %q", p.Name, p.Version)
			}
		}
		for _, want := range []string{"apt", "bash", "ca-certificates", "dpkg", "libc6"} {
			if !slices.ContainsFunc(got.Packages, func(p Package) bool { return p.Name == want }) {
				t.Errorf("manifest lacks package %s: %v", want, got.Packages)
			}
		}
		// dpkg's own reading of the template's database, as an independent check of names and versions.
		if _, err := exec.LookPath("dpkg-query"); err != nil {
			t.Log("dpkg-query not installed: comparison with dpkg skipped")
			return
		}
		admin := t.TempDir()
		if out, err := exec.Command("debugfs", "-R", "dump /var/lib/dpkg/status "+filepath.Join(admin, "status"), m.Path).CombinedOutput(); err != nil {
			t.Fatalf("debugfs dump: %v\n%s", err, out)
		}
		out, err := exec.Command("dpkg-query", "--admindir="+admin, "-W", "-f", "${db:Status-Status} ${Package} ${Version}\n").Output()
		if err != nil {
			t.Fatalf("dpkg-query: %v", err)
		}
		var want []string
		for line := range strings.SplitSeq(strings.TrimSpace(string(out)), "\n") {
			if s, ok := strings.CutPrefix(line, "installed "); ok {
				want = append(want, s)
			}
		}
		var have []string
		for _, p := range got.Packages {
			have = append(have, p.Name+" "+p.Version)
		}
		slices.Sort(want)
		if !slices.Equal(have, want) {
			t.Errorf("manifest packages differ from dpkg-query's:\nmanifest: %v\ndpkg:     %v", have, want)
		}
	})

	// A builder whose debootstrap does not exist: any build that tried to run it would fail.
	noDebootstrap := NewBuilder(s, nil, nil)
	noDebootstrap.debootstrap = filepath.Join(t.TempDir(), "no-debootstrap")

	t.Run("reuse", func(t *testing.T) {
		var p bytes.Buffer
		same := opts
		same.Progress = &p
		// The same request spelt differently: a trailing slash, a default package named again.
		same.Mirror = strings.TrimRight(testMirror(), "/") + "/"
		same.Packages = []string{"ca-certificates"}
		start := time.Now()
		again, reused, err := noDebootstrap.Build(ctx, same)
		if err != nil || !reused || again.Version != m.Version || again.SHA256 != m.SHA256 {
			t.Fatalf("identical build: reused=%v version %s (first %s), err %v\n%s", reused, again.Version, m.Version, err, p.String())
		}
		t.Logf("reused in %s", time.Since(start))
		if strings.Contains(p.String(), "debootstrap") || !strings.Contains(p.String(), "reusing "+m.Ref()) {
			t.Errorf("progress of a reuse: %q", p.String())
		}
		// A different package list is a different input: a cold build, which this builder cannot make.
		other := opts
		other.Packages = []string{"git"}
		if _, _, err := noDebootstrap.Build(ctx, other); err == nil || !strings.Contains(err.Error(), "not an executable") {
			t.Fatalf("build with other packages: %v", err)
		}
	})

	t.Run("unknown package", func(t *testing.T) {
		bad := opts
		bad.Name = "nopkg"
		bad.Packages = []string{"aetherium-no-such-package"}
		_, _, err := NewBuilder(s, nil, nil).Build(ctx, bad)
		if err == nil || !strings.Contains(err.Error(), "aetherium-no-such-package") {
			t.Fatalf("build with an unknown package: %v", err)
		}
		t.Logf("unknown package: %v", err)
		if _, err := s.Get("nopkg"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("failed build left a template: %v", err)
		}
		assertCleanStore(t, s)
	})

	t.Run("rebuild", func(t *testing.T) {
		var p bytes.Buffer
		re := opts
		re.Rebuild = true
		re.Progress = &p
		start := time.Now()
		fresh, reused, err := NewBuilder(s, nil, nil).Build(ctx, re)
		if err != nil {
			t.Fatalf("rebuild: %v\n%s", err, p.String())
		}
		t.Logf("rebuild: %s, %s", fresh.Ref(), time.Since(start).Round(time.Second))
		if reused || fresh.Version == m.Version || !strings.HasPrefix(fresh.Version, m.Version+"-") ||
			fresh.InputsHash != m.InputsHash || !strings.Contains(p.String(), "I: Base system installed successfully") {
			t.Fatalf("rebuild gave %s (reused=%v, inputs %s vs %s), first %s", fresh.Ref(), reused, fresh.InputsHash, m.InputsHash, m.Ref())
		}
		if latest, err := s.Get("debian"); err != nil || latest.Version != fresh.Version {
			t.Fatalf("latest after rebuild: %s, %v", latest.Ref(), err)
		}
		// From now on a plain build reuses the newest of the identical versions.
		if again, reused, err := noDebootstrap.Build(ctx, opts); err != nil || !reused || again.Version != fresh.Version {
			t.Fatalf("build after rebuild: %s reused=%v err %v", again.Ref(), reused, err)
		}
		if _, err := s.Get(m.Ref()); err != nil {
			t.Fatalf("the first version is gone after a rebuild: %v", err)
		}
	})
}

// TestDebianBuildInterrupted cancels a build while debootstrap has /proc and /sys mounted in its target: the
// build must end, unmount everything and leave no staging directory.
func TestDebianBuildInterrupted(t *testing.T) {
	requireDebian(t, true)
	s := newDebianStore(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	bctx, bcancel := context.WithCancel(ctx)
	defer bcancel()
	real, err := filepath.EvalSymlinks(s.Dir())
	if err != nil {
		t.Fatal(err)
	}
	w := &cancelOn{marker: "I: Installing core packages", cancel: bcancel, storeDir: real}
	_, _, err = NewBuilder(s, nil, nil).Build(bctx, BuildOptions{FromDebian: DefaultDebianSuite, Mirror: testMirror(), Name: "cut",
		AgentBinary: testAgent(t), Progress: w})
	if err == nil || !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted build: %v\n%s", err, w.buf.String())
	}
	w.mu.Lock()
	seen := w.mounts
	w.mu.Unlock()
	t.Logf("mounted when cancelled: %v; error: %v", seen, err)
	if len(seen) == 0 {
		t.Errorf("nothing was mounted when the build was cancelled, so the test did not exercise the unmount:\n%s", w.buf.String())
	}
	if fi, err := os.Stat("/dev/null"); err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		t.Fatalf("/dev/null damaged: %v %v", fi, err)
	}
	if list, err := s.List(); err != nil || len(list) != 0 {
		t.Fatalf("interrupted build left templates: %v %v", list, err)
	}
	// assertCleanStore (clean-up) checks for staging directories and mounts.
}

// cancelOn is a progress writer that cancels the build when a line contains marker, noting what was mounted in
// the store at that moment.
type cancelOn struct {
	marker   string
	cancel   context.CancelFunc
	storeDir string

	mu     sync.Mutex
	buf    bytes.Buffer
	mounts []string
}

func (c *cancelOn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.buf.Write(p)
	if c.mounts == nil && bytes.Contains(p, []byte(c.marker)) {
		c.mounts, _ = mountsUnder(c.storeDir)
		if c.mounts == nil {
			c.mounts = []string{}
		}
		c.cancel()
	}
	return len(p), nil
}

// TestDebianMirrorUnreachable: debootstrap fails at once, and the error carries its own words and log.
func TestDebianMirrorUnreachable(t *testing.T) {
	requireDebian(t, false)
	s := newDebianStore(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// Port 9 (discard) on loopback: nothing listens there, so the connection is refused at once.
	_, _, err := NewBuilder(s, nil, nil).Build(ctx, BuildOptions{FromDebian: DefaultDebianSuite, Mirror: "http://127.0.0.1:9/debian",
		Name: "offline", AgentBinary: testAgent(t)})
	if err == nil {
		t.Fatal("build from an unreachable mirror succeeded")
	}
	t.Logf("unreachable mirror: %v", err)
	for _, want := range []string{"debootstrap bookworm from http://127.0.0.1:9/debian failed", "reachable", "Failed getting release file", "last lines of its log", "Connection refused"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	if list, err := s.List(); err != nil || len(list) != 0 {
		t.Fatalf("failed build left templates: %v %v", list, err)
	}
}

// TestDebianBadInput: requests that cannot be right are refused before anything runs or is written.
func TestDebianBadInput(t *testing.T) {
	s, err := NewStore(filepath.Join(t.TempDir(), "images"))
	if err != nil {
		t.Fatal(err)
	}
	// Any file will do: these builds must fail before the agent matters.
	agent := filepath.Join(t.TempDir(), "agent")
	if err := os.WriteFile(agent, []byte("not an agent"), 0o755); err != nil {
		t.Fatal(err)
	}
	deb := func(o BuildOptions) BuildOptions {
		o.Name, o.AgentBinary = "bad", agent
		return o
	}
	cases := []struct {
		name string
		opts BuildOptions
		want string
	}{
		{"no source", deb(BuildOptions{}), "no source given"},
		{"both sources", deb(BuildOptions{FromDocker: "busybox", FromDebian: "bookworm"}), "exactly one source"},
		{"upper-case suite", deb(BuildOptions{FromDebian: "Bookworm"}), "invalid Debian suite"},
		{"suite with a path", deb(BuildOptions{FromDebian: "../etc"}), "invalid Debian suite"},
		{"suite with a space", deb(BuildOptions{FromDebian: "book worm"}), "invalid Debian suite"},
		{"suite with a slash", deb(BuildOptions{FromDebian: "bookworm/updates"}), "invalid Debian suite"},
		{"upper-case package", deb(BuildOptions{FromDebian: "bookworm", Packages: []string{"Git"}}), `invalid Debian package name "Git"`},
		{"one-letter package", deb(BuildOptions{FromDebian: "bookworm", Packages: []string{"a"}}), "invalid Debian package name"},
		{"package like an option", deb(BuildOptions{FromDebian: "bookworm", Packages: []string{"-x"}}), "invalid Debian package name"},
		{"comma in a package", deb(BuildOptions{FromDebian: "bookworm", Packages: []string{"git,curl"}}), "invalid Debian package name"},
		{"version pin", deb(BuildOptions{FromDebian: "bookworm", Packages: []string{"git=1:2.39.5-0+deb12u1"}}), "invalid Debian package name"},
		{"architecture", deb(BuildOptions{FromDebian: "bookworm", Packages: []string{"libc6:amd64"}}), "invalid Debian package name"},
		{"empty package", deb(BuildOptions{FromDebian: "bookworm", Packages: []string{"git", ""}}), `invalid Debian package name ""`},
		{"mirror without scheme", deb(BuildOptions{FromDebian: "bookworm", Mirror: "deb.debian.org/debian"}), "invalid Debian mirror"},
		{"ftp mirror", deb(BuildOptions{FromDebian: "bookworm", Mirror: "ftp://deb.debian.org/debian"}), "scheme must be http, https or file"},
		{"mirror without host", deb(BuildOptions{FromDebian: "bookworm", Mirror: "http:///debian"}), "no host"},
		{"mirror with a query", deb(BuildOptions{FromDebian: "bookworm", Mirror: "http://deb.debian.org/debian?x=1"}), "invalid Debian mirror"},
		{"mirror for Docker", deb(BuildOptions{FromDocker: "busybox", Mirror: DefaultDebianMirror}), "apply only to Debian builds"},
		{"packages for Docker", deb(BuildOptions{FromDocker: "busybox", Packages: []string{"git"}}), "apply only to Debian builds"},
		{"bad template name", BuildOptions{FromDebian: "bookworm", Name: "../x", AgentBinary: agent}, "invalid template name"},
		{"missing agent", BuildOptions{FromDebian: "bookworm", Name: "bad", AgentBinary: filepath.Join(t.TempDir(), "none")}, "read the agent binary"},
	}
	if _, err := os.Stat("/usr/share/debootstrap/scripts/" + DefaultDebianSuite); err == nil {
		// A well-formed name debootstrap has no script for: refused by the preflight, before any staging.
		cases = append(cases, struct {
			name string
			opts BuildOptions
			want string
		}{"unknown suite", deb(BuildOptions{FromDebian: "aetherium-nosuch"}), `debootstrap does not know the suite "aetherium-nosuch"`})
	} else {
		t.Log("debootstrap is not installed: the unknown-suite case is not checked")
	}
	b := NewBuilder(s, nil, nil)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var progress bytes.Buffer
			c.opts.Progress = &progress
			_, _, err := b.Build(context.Background(), c.opts)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error with %q", err, c.want)
			}
			if progress.Len() != 0 {
				t.Errorf("a refused build reported progress: %q", progress.String())
			}
			entries, _ := os.ReadDir(s.Dir())
			if len(entries) != 1 || entries[0].Name() != tmpDir {
				t.Errorf("store has %v after a refused build", entries)
			}
			if left, _ := os.ReadDir(filepath.Join(s.Dir(), tmpDir)); len(left) != 0 {
				t.Errorf("staging left behind: %v", left)
			}
		})
	}
}

// TestStaleStagingSwept plays a build killed with SIGKILL while something was bind-mounted in its tree and a
// symlink pointed out of it: the next build's sweep unmounts and removes it without touching what was mounted or
// linked, and leaves a build in progress alone.
func TestStaleStagingSwept(t *testing.T) {
	requireDebian(t, false) // root, for the bind mount
	s := newDebianStore(t)
	tmp, err := filepath.EvalSymlinks(filepath.Join(s.Dir(), tmpDir))
	if err != nil {
		t.Fatal(err)
	}
	outside := t.TempDir()
	for _, f := range []string{"mounted/keep", "linked/keep"} {
		if err := os.MkdirAll(filepath.Join(outside, filepath.Dir(f)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(outside, f), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// The killed build: an unlocked lock file, a tree with a bind mount and a symlink out.
	dead := filepath.Join(tmp, "build-dead")
	shm := filepath.Join(dead, "rootfs", "dev", "shm")
	if err := os.MkdirAll(shm, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dead+".lock", nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(outside, "linked"), filepath.Join(dead, "rootfs", "escape")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(filepath.Join(outside, "mounted"), shm, "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("bind mount: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(shm, unix.MNT_DETACH) })

	// removeTree alone refuses to go through the mount.
	if err := removeTree(dead); err == nil || !strings.Contains(err.Error(), "mount point") {
		t.Fatalf("removeTree through a mount: %v", err)
	}
	// A build in progress: its lock is held.
	live, err := s.newWork("build-")
	if err != nil {
		t.Fatal(err)
	}

	var progress bytes.Buffer
	NewBuilder(s, nil, nil).sweepStale(&progress)
	if _, err := os.Lstat(dead); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("killed build's directory still there: %v", err)
	}
	if _, err := os.Lstat(dead + ".lock"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("killed build's lock still there: %v", err)
	}
	if !strings.Contains(progress.String(), "left by a killed build") {
		t.Errorf("sweep progress: %q", progress.String())
	}
	for _, f := range []string{"mounted/keep", "linked/keep"} {
		if _, err := os.Stat(filepath.Join(outside, f)); err != nil {
			t.Errorf("sweep removed %s outside the store: %v", f, err)
		}
	}
	if _, err := os.Stat(live.dir); err != nil {
		t.Errorf("sweep removed a live build's directory: %v", err)
	}
	if err := live.remove(); err != nil {
		t.Fatal(err)
	}
}

func TestParseDpkgStatus(t *testing.T) {
	status := `Package: zlib1g
Status: install ok installed
Version: 1:1.2.13.dfsg-1
Description: compression library
 with a continuation line
 Version: 9 (not a field)

Package: gone
Status: deinstall ok config-files
Version: 1.0

Package: bash
Architecture: amd64
Status: install ok installed
Version: 5.2.15-2+b7
`
	got, err := parseDpkgStatus(strings.NewReader(status))
	want := []Package{{"bash", "5.2.15-2+b7"}, {"zlib1g", "1:1.2.13.dfsg-1"}}
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("got %v, %v; want %v", got, err, want)
	}
}

func TestUnescapeMountPath(t *testing.T) {
	for in, want := range map[string]string{
		`/a/b`:              "/a/b",
		`/with\040space`:    "/with space",
		`/tab\011and\134bs`: "/tab\tand\\bs",
		`/trailing\04`:      `/trailing\04`,
	} {
		if got := unescapeMountPath(in); got != want {
			t.Errorf("unescapeMountPath(%q) = %q, want %q", in, got, want)
		}
	}
}

// BenchmarkDebianBuild measures a cold Debian build (debootstrap from the mirror, clean-up, mkfs, fsck, hash).
// Each iteration takes a minute or more: run with -benchtime=1x.
func BenchmarkDebianBuild(b *testing.B) {
	requireDebian(b, true)
	agent := testAgent(b)
	s := newDebianStore(b)
	bl := NewBuilder(s, nil, nil)
	ctx := context.Background()
	var size int64
	for b.Loop() {
		m, _, err := bl.Build(ctx, BuildOptions{FromDebian: DefaultDebianSuite, Mirror: testMirror(), Name: "bench", AgentBinary: agent, Rebuild: true})
		if err != nil {
			b.Fatal(err)
		}
		size = m.Size
		if err := s.Remove(m.Ref()); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(size)/(1<<20), "MiB/template")
}

// BenchmarkDebianReuse measures a Debian build whose inputs match an existing template.
func BenchmarkDebianReuse(b *testing.B) {
	requireDebian(b, true)
	agent := testAgent(b)
	s := newDebianStore(b)
	bl := NewBuilder(s, nil, nil)
	ctx := context.Background()
	opts := BuildOptions{FromDebian: DefaultDebianSuite, Mirror: testMirror(), Name: "bench", AgentBinary: agent}
	if _, _, err := bl.Build(ctx, opts); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, reused, err := bl.Build(ctx, opts); err != nil || !reused {
			b.Fatalf("reused=%v err=%v", reused, err)
		}
	}
}
