//go:build linux

package imagecmd

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/aetherium/aetherium/internal/image"
)

func runKernel(t *testing.T, dataDir string, args ...string) (string, string, error) {
	t.Helper()
	cmd := newKernelCommand(func() (string, string, error) { return dataDir, "", nil })
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), errOut.String(), err
}

// kernelELF compiles a tiny static x86-64 executable holding text: with a "Linux version" banner it passes for a
// vmlinux.
func kernelELF(t *testing.T, dir, text string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(dir, "main.go")
	prog := fmt.Sprintf("package main\n\nimport \"os\"\n\nconst text = %q\n\nfunc main() { os.Stdout.WriteString(text) }\n", text)
	if err := os.WriteFile(src, []byte(prog), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "vmlinux")
	cmd := exec.Command("go", "build", "-buildmode=exe", "-o", out, src)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOFLAGS=", "GO111MODULE=off")
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build a fake kernel: %v\n%s", err, msg)
	}
	return out
}

// TestKernelCommands drives build (on a fake kernel source: real tar and make), import, list and rm as a user
// would.
func TestKernelCommands(t *testing.T) {
	if runtime.GOARCH != "amd64" {
		t.Skipf("SKIPPED: kernel builds need an x86-64 host, this is %s", runtime.GOARCH)
	}
	dir, err := os.MkdirTemp("", "aekcmd-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	data, cache := filepath.Join(dir, "data"), filepath.Join(dir, "cache")

	// A kernel source whose make copies a prebuilt fake vmlinux.
	tree := filepath.Join(dir, "tree", "linux-fake")
	if err := os.MkdirAll(tree, 0o755); err != nil {
		t.Fatal(err)
	}
	prebuilt := kernelELF(t, filepath.Join(dir, "elf"), "Linux version 6.1.0-cmd (aetherium@aetherium) #1\x00")
	if msg, err := exec.Command("cp", prebuilt, filepath.Join(tree, "prebuilt")).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, msg)
	}
	mk := "olddefconfig:\n\t@test -f .config\nvmlinux:\n\t@echo '  CC      fake/x.o'\n\tcp prebuilt vmlinux\n"
	if err := os.WriteFile(filepath.Join(tree, "Makefile"), []byte(mk), 0o644); err != nil {
		t.Fatal(err)
	}
	tarball := filepath.Join(dir, "linux-fake.tar.xz")
	if msg, err := exec.Command("tar", "-cJf", tarball, "-C", filepath.Join(dir, "tree"), "linux-fake").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v\n%s", err, msg)
	}
	config := filepath.Join(dir, "test.config")
	if err := os.WriteFile(config, []byte("CONFIG_64BIT=y\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tarSum, _ := os.ReadFile(tarball)
	key := image.KernelCacheKey(hexSHA256(tarSum), hexSHA256([]byte("CONFIG_64BIT=y\n")))

	build := []string{"build", "--source", tarball, "--config", config, "--cache-dir", cache, "--jobs", "1"}
	out, progress, err := runKernel(t, data, build...)
	if err != nil {
		t.Fatalf("build: %v\n%s", err, progress)
	}
	t.Logf("kernel build said:\n%s%s", progress, out)
	want := filepath.Join(data, "kernels", image.DefaultKernelName, key, image.KernelFile)
	if strings.TrimSpace(out) != want {
		t.Fatalf("build printed %q, want %q\n%s", out, want, progress)
	}
	for _, step := range []string{"extracting", "make -j1 vmlinux", "built in", "installed as default@" + key} {
		if !strings.Contains(progress, step) {
			t.Errorf("progress lacks %q:\n%s", step, progress)
		}
	}
	if _, progress, err = runKernel(t, data, build...); err != nil || !strings.Contains(progress, "taken from the cache") || !strings.Contains(progress, "already installed") {
		t.Fatalf("second build: %v\n%s", err, progress)
	}

	text := filepath.Join(dir, "README")
	if err := os.WriteFile(text, []byte("this is not a kernel, it is a text file\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := runKernel(t, data, "import", "--name", "mine", text); err == nil || !strings.Contains(err.Error(), "uncompressed x86-64 vmlinux") {
		t.Fatalf("import of a text file: %v", err)
	}
	out, progress, err = runKernel(t, data, "import", "--name", "mine", prebuilt)
	if err != nil || !strings.Contains(progress, "imported Linux 6.1.0-cmd as mine@") {
		t.Fatalf("import: %q %q %v", out, progress, err)
	}

	out, _, err = runKernel(t, data, "list")
	t.Logf("kernel list:\n%s", out)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if err != nil || len(lines) != 3 || strings.Join(strings.Fields(lines[0]), " ") != "NAME VERSION RELEASE SIZE SOURCE CREATED" {
		t.Fatalf("list: %q, %v", out, err)
	}
	if f := strings.Fields(lines[1]); f[0] != "default" || f[1] != key || f[2] != "6.1.0-cmd" || f[5] != "build:"+tarball {
		t.Fatalf("list row of the built kernel: %q", lines[1])
	}
	if f := strings.Fields(lines[2]); f[0] != "mine" || f[2] != "6.1.0-cmd" || f[5] != "import:"+prebuilt {
		t.Fatalf("list row of the imported kernel: %q", lines[2])
	}

	if out, _, err = runKernel(t, data, "rm", "default@"+key); err != nil || !strings.Contains(out, "removed default@"+key) {
		t.Fatalf("rm: %q, %v", out, err)
	}
	if _, _, err = runKernel(t, data, "rm", "default@"+key); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("rm twice: %v", err)
	}
	if _, err := os.Stat(want); !os.IsNotExist(err) {
		t.Fatalf("kernel still there after rm: %v", err)
	}
	if _, err := os.Stat(filepath.Join(cache, "kernels", key, image.KernelFile)); err != nil {
		t.Fatalf("rm should leave the build cache: %v", err)
	}
	out, _, _ = runKernel(t, data, "list")
	if strings.Count(out, "\n") != 2 || !strings.Contains(out, "mine") {
		t.Fatalf("list after rm: %q", out)
	}
}

func hexSHA256(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
