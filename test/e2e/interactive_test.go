package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aetherium/aetherium/pkg/client"
)

// e2eClusterToken is the cluster token of the multi-process tests.
const e2eClusterToken = "e2e-cluster-token-0123456789abcdef0123456789abcdef"

func sha(t testing.TB, path string) [32]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return [32]byte(h.Sum(nil))
}

// randomFile writes size random bytes to a new file and returns its path.
func randomFile(t testing.TB, dir string, size int64, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(dir, "random.bin")
	f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(f, rand.Reader, size); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil { // past the umask
		t.Fatal(err)
	}
	return p
}

// TestServeFilesShellsProcesses: on `aetherium serve`, files of any size go both ways through the public API and
// the CLI byte for byte, shells run on a terminal of the asked size and pass exit codes through, and other owners
// and stopped VMs are refused.
func TestServeFilesShellsProcesses(t *testing.T) {
	requireDocker(t)
	dataDir := t.TempDir()
	addr := freePort(t)
	workerID := "e2e-files"
	removeWorkerContainers(t, workerID)
	p := start(t, "serve", serveEnv(dataDir, addr, "AETHERIUM_WORKER_ID="+workerID), "serve")
	waitHTTP(t, addr, p)
	key := readLine(t, filepath.Join(dataDir, "admin-api-key"))
	c := newClient(t, addr, key)
	waitReady(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	vm, err := c.CreateVMAndWait(ctx, client.CreateVMRequest{Name: "files"})
	if err != nil {
		t.Fatalf("create vm: %v", err)
	}
	env := []string{"AETHERIUM_SERVER=http://" + addr, "AETHERIUM_API_KEY=" + key}
	local := t.TempDir()

	// 64 MiB of random bytes: the CLI uploads them (mode kept), the SDK reads them back.
	src := randomFile(t, local, 64<<20, 0o750)
	want := sha(t, src)
	if _, errOut, code := runCLI(t, env, "vm", "cp", src, "files:/tmp/in/"); code != 1 || !strings.Contains(errOut, client.CodePathNotFound) {
		t.Fatalf("cp into a missing directory: exit %d %s", code, errOut)
	}
	if _, errOut, code := runCLI(t, env, "vm", "cp", "--parents", src, "files:/tmp/in/big.bin"); code != 0 {
		t.Fatalf("vm cp up: exit %d: %s", code, errOut)
	}
	d, err := c.Download(ctx, vm.ID, "/tmp/in/big.bin")
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	n, err := io.Copy(h, d)
	d.Close()
	if err != nil || n != 64<<20 || [32]byte(h.Sum(nil)) != want {
		t.Fatalf("download of the uploaded file: %d bytes, err %v, sha256 match %v", n, err, [32]byte(h.Sum(nil)) == want)
	}
	if d.Mode.Perm() != 0o750 || d.Size != 64<<20 {
		t.Fatalf("download metadata: mode %v size %d", d.Mode, d.Size)
	}

	// The SDK uploads (streamed from a reader of unknown length), the CLI downloads into a directory.
	f, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Upload(ctx, vm.ID, "/tmp/in/sdk.bin", io.MultiReader(f), client.UploadOptions{Mode: 0o600})
	f.Close()
	if err != nil || info.Size != 64<<20 || info.Mode != "0600" {
		t.Fatalf("sdk upload: %+v %v", info, err)
	}
	out := t.TempDir()
	if _, errOut, code := runCLI(t, env, "vm", "cp", "files:/tmp/in/sdk.bin", out); code != 0 {
		t.Fatalf("vm cp down: exit %d: %s", code, errOut)
	}
	got := filepath.Join(out, "sdk.bin")
	if sha(t, got) != want {
		t.Fatal("the file copied down differs from the one copied up")
	}
	if st, err := os.Stat(got); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("copied down: %v %v, want mode 0600", st.Mode(), err)
	}
	if entries, _ := os.ReadDir(out); len(entries) != 1 {
		t.Fatalf("vm cp left extra files: %v", entries)
	}
	// Through stdin and stdout.
	if stdout, errOut, code := runCLI(t, env, "vm", "cp", "files:/etc/hostname", "-"); code != 0 || strings.TrimSpace(stdout) == "" {
		t.Fatalf("vm cp to stdout: exit %d %q %s", code, stdout, errOut)
	}

	// stat, list, mkdir, remove.
	if _, err := c.Mkdir(ctx, vm.ID, client.MkdirRequest{Path: "/tmp/in/sub/deeper", Parents: true}); err != nil {
		t.Fatal(err)
	}
	l, err := c.ListDir(ctx, vm.ID, "/tmp/in")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range l.Entries {
		names = append(names, e.Name)
	}
	if strings.Join(names, ",") != "big.bin,sdk.bin,sub" {
		t.Fatalf("list: %v", names)
	}
	if st, err := c.Stat(ctx, vm.ID, "/tmp/in/big.bin"); err != nil || st.Size != 64<<20 || st.Mode != "0750" {
		t.Fatalf("stat: %+v %v", st, err)
	}
	if err := c.Remove(ctx, vm.ID, "/tmp/in", false); !client.IsCode(err, client.CodeDirectoryNotEmpty) {
		t.Fatalf("non-recursive remove of a full directory: %v", err)
	}
	if err := c.Remove(ctx, vm.ID, "/tmp/in", true); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Stat(ctx, vm.ID, "/tmp/in"); !client.IsCode(err, client.CodePathNotFound) {
		t.Fatalf("stat after remove: %v", err)
	}
	// Path validation.
	for _, bad := range []string{"tmp", "", "/a\x00b"} {
		var ae *client.APIError
		if _, err := c.Stat(ctx, vm.ID, bad); !errors.As(err, &ae) || ae.Status != http.StatusUnprocessableEntity {
			t.Fatalf("stat %q: %v, want 422", bad, err)
		}
	}

	// A shell on a terminal of the asked size; its exit code comes back.
	sh, err := c.OpenShell(ctx, vm.ID, client.ShellOptions{TTY: true, Rows: 33, Cols: 101})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sh.Write([]byte("stty size; exit 7\n")); err != nil {
		t.Fatal(err)
	}
	var term bytes.Buffer
	exit, err := sh.Wait(&term, nil)
	if err != nil || exit.ExitCode != 7 || !strings.Contains(term.String(), "33 101") {
		t.Fatalf("shell: exit %+v err %v output %q", exit, err, term.String())
	}
	// The CLI passes the remote exit code through; stdin is not a terminal here, so no pty.
	if _, errOut, code := runCLI(t, env, "vm", "shell", "files", "--", "sh", "-c", "exit 5"); code != 5 {
		t.Fatalf("vm shell exit 5: exit %d %s", code, errOut)
	}

	// Background processes through the CLI.
	pid, errOut, code := runCLI(t, env, "vm", "spawn", "files", "--", "sh", "-c", "echo started; exec sleep 300")
	pid = strings.TrimSpace(pid)
	if code != 0 || pid == "" {
		t.Fatalf("vm spawn: exit %d %s", code, errOut)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		logs, _, _ := runCLI(t, env, "vm", "logs", "files", pid)
		if logs == "started\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("vm logs: %q", logs)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if ps, _, code := runCLI(t, env, "vm", "ps", "files"); code != 0 || !strings.Contains(ps, pid) || !strings.Contains(ps, "running") {
		t.Fatalf("vm ps: %d %s", code, ps)
	}
	if _, errOut, code := runCLI(t, env, "vm", "kill", "--signal", "KILL", "files", pid); code != 0 {
		t.Fatalf("vm kill: %d %s", code, errOut)
	}
	if p, err := c.WaitProcess(ctx, vm.ID, pid, 30*time.Second); err != nil || p.State != "exited" || p.Signal != "SIGKILL" {
		t.Fatalf("after kill: %+v %v", p, err)
	}

	// Another owner sees nothing; a VM that is not running takes nothing.
	otherKey, errOut, code := runCLI(t, []string{"AETHERIUM_DATA_DIR=" + dataDir}, "apikey", "create", "--name", "other")
	if code != 0 {
		t.Fatalf("apikey create: %s", errOut)
	}
	other := newClient(t, addr, strings.TrimSpace(otherKey))
	if _, err := other.Stat(ctx, vm.ID, "/"); !client.IsNotFound(err) {
		t.Fatalf("another owner's stat: %v", err)
	}
	if _, err := other.Upload(ctx, vm.ID, "/tmp/x", strings.NewReader("x"), client.UploadOptions{}); !client.IsNotFound(err) {
		t.Fatalf("another owner's upload: %v", err)
	}
	if _, err := other.OpenShell(ctx, vm.ID, client.ShellOptions{}); !client.IsNotFound(err) {
		t.Fatalf("another owner's shell: %v", err)
	}
	if _, err := c.DeleteVMAndWait(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Stat(ctx, vm.ID, "/"); !client.IsCode(err, client.CodeVMNotRunning) {
		t.Fatalf("stat on a deleted vm: %v", err)
	}
	if _, err := c.OpenShell(ctx, vm.ID, client.ShellOptions{}); !client.IsCode(err, client.CodeVMNotRunning) {
		t.Fatalf("shell on a deleted vm: %v", err)
	}
}

// BenchmarkFileTransfer measures uploads and downloads of 100 MB through the public API of `aetherium serve`
// (client -> API -> worker API -> agent -> guest file, and back), reported in MB/s.
func BenchmarkFileTransfer(b *testing.B) {
	requireDocker(b)
	dataDir := b.TempDir()
	addr := freePort(b)
	removeWorkerContainers(b, "e2e-bench-files")
	p := start(b, "serve", serveEnv(dataDir, addr, "AETHERIUM_WORKER_ID=e2e-bench-files", "AETHERIUM_LOG_LEVEL=warn"), "serve")
	waitHTTP(b, addr, p)
	c := newClient(b, addr, readLine(b, filepath.Join(dataDir, "admin-api-key")))
	waitReady(b, c)
	ctx := context.Background()
	vm, err := c.CreateVMAndWait(ctx, client.CreateVMRequest{Name: "bench-files", MemoryMB: 1024})
	if err != nil {
		b.Fatal(err)
	}
	const size = 100_000_000
	data := make([]byte, size)
	if _, err := rand.Read(data); err != nil {
		b.Fatal(err)
	}
	b.Run("upload", func(b *testing.B) {
		b.SetBytes(size)
		for i := 0; i < b.N; i++ {
			if _, err := c.Upload(ctx, vm.ID, "/tmp/bench.bin", bytes.NewReader(data), client.UploadOptions{Size: size}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("download", func(b *testing.B) {
		b.SetBytes(size)
		for i := 0; i < b.N; i++ {
			d, err := c.Download(ctx, vm.ID, "/tmp/bench.bin")
			if err != nil {
				b.Fatal(err)
			}
			n, err := io.Copy(io.Discard, d)
			d.Close()
			if err != nil || n != size {
				b.Fatalf("downloaded %d bytes: %v", n, err)
			}
		}
	})
	if _, err := c.DeleteVMAndWait(ctx, vm.ID); err != nil {
		b.Fatal(err)
	}
}
