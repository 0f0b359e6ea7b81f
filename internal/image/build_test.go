//go:build linux

package image

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
)

func newBuilder(t *testing.T) (*Builder, *Store) {
	t.Helper()
	requireDocker(t)
	s, err := NewStore(filepath.Join(t.TempDir(), "images"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { assertNoLeftovers(t, s) })
	return NewBuilder(s, engine, nil), s
}

// assertNoLeftovers checks that no export container and no staging directory of this store outlived a build.
// Only this store's: other packages' tests (imagecmd) build at the same time.
func assertNoLeftovers(t *testing.T, s *Store) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cs, err := engine.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", LabelBuild+"="+s.Dir()))})
	if err != nil {
		t.Errorf("list containers: %v", err)
	}
	for _, c := range cs {
		t.Errorf("export container left behind: %s %v", c.ID[:12], c.Names)
		_ = engine.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true})
	}
	if left, _ := os.ReadDir(filepath.Join(s.Dir(), tmpDir)); len(left) != 0 {
		t.Errorf("staging left behind in %s: %v", filepath.Join(s.Dir(), tmpDir), left)
	}
}

func debugfs(t *testing.T, img, request string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", request, img).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs -R %q: %v\n%s", request, err, out)
	}
	return string(out)
}

func TestBuildListGetRemove(t *testing.T) {
	b, s := newBuilder(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var progress bytes.Buffer
	m, reused, err := b.Build(ctx, BuildOptions{FromDocker: testImage, Name: "busybox", AgentBinary: agentBinary, Progress: &progress})
	if err != nil {
		t.Fatalf("Build: %v\nprogress:\n%s", err, progress.String())
	}
	if reused {
		t.Fatal("first build reported reuse")
	}
	for _, step := range []string{"exporting", "unpacking", "making ext4", "verifying", m.Path} {
		if !strings.Contains(progress.String(), step) {
			t.Errorf("progress lacks %q:\n%s", step, progress.String())
		}
	}

	// The image itself, read without mounting it.
	if out := debugfs(t, m.Path, "stat /sbin/aetherium-agent"); !strings.Contains(out, "Mode:  0755") || !strings.Contains(out, "Type: regular") {
		t.Errorf("agent in image:\n%s", out)
	}
	if out := debugfs(t, m.Path, "cat /etc/hostname"); !strings.Contains(out, "aetherium\n") {
		t.Errorf("/etc/hostname: %q", out)
	}
	if out := debugfs(t, m.Path, "stat /bin/busybox"); !strings.Contains(out, "Mode:  04755") {
		t.Errorf("setuid busybox lost its mode:\n%s", out)
	}
	if out := debugfs(t, m.Path, "stat /etc/alice.conf"); !strings.Contains(out, "User:  1000") || !strings.Contains(out, "Group:  1000") {
		t.Errorf("owner of /etc/alice.conf lost:\n%s", out)
	}
	if out := debugfs(t, m.Path, "stat /bin/sh"); !strings.Contains(out, "Type: symlink") || !strings.Contains(out, `Fast link dest: "busybox"`) {
		t.Errorf("/bin/sh symlink:\n%s", out)
	}
	for _, d := range []string{"/proc", "/sys", "/dev", "/tmp", "/run", "/root"} {
		if out := debugfs(t, m.Path, "stat "+d); !strings.Contains(out, "Type: directory") {
			t.Errorf("%s in image:\n%s", d, out)
		}
	}
	if out := debugfs(t, m.Path, "stats"); !strings.Contains(out, "Filesystem volume name:   "+fsLabel) {
		t.Errorf("label missing:\n%s", out)
	}

	// The manifest.
	data, err := os.ReadFile(m.Path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	agent, _ := os.ReadFile(agentBinary)
	agentSum := sha256.Sum256(agent)
	if m.SHA256 != hex.EncodeToString(sum[:]) || m.Size != int64(len(data)) || m.AgentSHA256 != hex.EncodeToString(agentSum[:]) ||
		m.Source != "docker:"+testImage || m.Files < 8 || m.Boot.Init != GuestInit || m.InputsHash == "" || m.AgentVersion == "unknown" {
		t.Errorf("manifest %+v", m)
	}
	if fi, _ := os.Stat(m.Path); fi.Mode().Perm() != 0o444 {
		t.Errorf("template mode %v, want read-only", fi.Mode())
	}

	// Identical inputs: reused, same version.
	again, reused, err := b.Build(ctx, BuildOptions{FromDocker: testImage, Name: "busybox", AgentBinary: agentBinary})
	if err != nil || !reused || again.Version != m.Version || again.SHA256 != m.SHA256 {
		t.Fatalf("second build: reused=%v version %s (first %s), err %v", reused, again.Version, m.Version, err)
	}
	// A different size is a different input: a new version.
	bigger, reused, err := b.Build(ctx, BuildOptions{FromDocker: testImage, Name: "busybox", Version: "v2", SizeMB: 80, AgentBinary: agentBinary})
	if err != nil || reused || bigger.Version != "v2" || bigger.Size != 80<<20 {
		t.Fatalf("sized build: %+v reused=%v err %v", bigger, reused, err)
	}

	list, err := s.List()
	if err != nil || len(list) != 2 || list[0].Version != "v2" || list[1].Version != m.Version {
		t.Fatalf("List: %+v, %v", list, err)
	}
	if got, err := s.Get("busybox"); err != nil || got.Version != "v2" {
		t.Fatalf("Get latest: %+v, %v", got, err)
	}
	if got, err := s.Get("busybox@" + m.Version); err != nil || got.SHA256 != m.SHA256 || got.Path != m.Path {
		t.Fatalf("Get exact: %+v, %v", got, err)
	}
	if err := s.Remove("busybox"); err == nil {
		t.Fatal("Remove without a version succeeded")
	}
	if err := s.Remove("busybox@v2"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get("busybox@v2"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get after Remove: %v", err)
	}
	if got, err := s.Get("busybox"); err != nil || got.Version != m.Version {
		t.Fatalf("latest after Remove: %+v, %v", got, err)
	}
	if err := s.Remove("busybox@" + m.Version); err != nil {
		t.Fatal(err)
	}
	if list, err := s.List(); err != nil || len(list) != 0 {
		t.Fatalf("List after removing all: %+v, %v", list, err)
	}
}

func TestBuildConcurrentSameInputs(t *testing.T) {
	b, s := newBuilder(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	res := make([]Manifest, 2)
	errs := make([]error, 2)
	for i := range res {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res[i], _, errs[i] = b.Build(ctx, BuildOptions{FromDocker: testImage, Name: "twin", AgentBinary: agentBinary})
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("build %d: %v", i, err)
		}
	}
	if res[0].Version != res[1].Version || res[0].SHA256 != res[1].SHA256 {
		t.Fatalf("concurrent builds disagree: %s/%s vs %s/%s", res[0].Version, res[0].SHA256, res[1].Version, res[1].SHA256)
	}
	if list, err := s.List(); err != nil || len(list) != 1 {
		t.Fatalf("List: %+v, %v", list, err)
	}
}

func TestBuildFailures(t *testing.T) {
	b, s := newBuilder(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// Too small for its content: mkfs.ext4 fails, and its stderr is in the error.
	_, _, err := b.Build(ctx, BuildOptions{FromDocker: testImage, Name: "tiny", SizeMB: 1, AgentBinary: agentBinary})
	if err == nil || !strings.Contains(err.Error(), "mkfs.ext4") {
		t.Fatalf("undersized build: %v", err)
	}
	t.Logf("undersized build: %v", err)
	assertNoLeftovers(t, s)

	_, _, err = b.Build(ctx, BuildOptions{FromDocker: "aetherium-imgtest:no-such-" + randHex(4), Name: "missing", AgentBinary: agentBinary})
	if err == nil || !strings.Contains(err.Error(), "not present") {
		t.Fatalf("missing image: %v", err)
	}
	// Bigger than the disk: refused before mkfs, with a clear message.
	_, _, err = b.Build(ctx, BuildOptions{FromDocker: testImage, Name: "huge", SizeMB: 1 << 40, AgentBinary: agentBinary})
	if err == nil || !strings.Contains(err.Error(), "no space") {
		t.Fatalf("oversized build: %v", err)
	}
	// Cancelled mid-way: still cleaned up (checked by the clean-up).
	cctx, ccancel := context.WithCancel(ctx)
	ccancel()
	if _, _, err := b.Build(cctx, BuildOptions{FromDocker: testImage, Name: "cancelled", AgentBinary: agentBinary}); err == nil {
		t.Fatal("cancelled build succeeded")
	}
	if list, err := s.List(); err != nil || len(list) != 0 {
		t.Fatalf("failed builds left templates: %+v, %v", list, err)
	}
	if _, _, err := b.Build(ctx, BuildOptions{FromDocker: testImage, Name: "../x", AgentBinary: agentBinary}); err == nil {
		t.Fatal("accepted a name with a path in it")
	}
}
