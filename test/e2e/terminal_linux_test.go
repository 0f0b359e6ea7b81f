//go:build linux

package e2e

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"github.com/aetherium/aetherium/pkg/client"
)

// TestCLIShellOnTerminal runs `aetherium vm shell` on a real pseudo-terminal, as a person would: the remote
// terminal gets the local size, follows a local resize (SIGWINCH), the local terminal is raw during the session and
// restored after it, and the remote exit code is the CLI's.
func TestCLIShellOnTerminal(t *testing.T) {
	requireDocker(t)
	dataDir := t.TempDir()
	addr := freePort(t)
	removeWorkerContainers(t, "e2e-tty")
	p := start(t, "serve", serveEnv(dataDir, addr, "AETHERIUM_WORKER_ID=e2e-tty", "AETHERIUM_LOG_LEVEL=warn"), "serve")
	waitHTTP(t, addr, p)
	key := readLine(t, filepath.Join(dataDir, "admin-api-key"))
	c := newClient(t, addr, key)
	waitReady(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	vm, err := c.CreateVMAndWait(ctx, client.CreateVMRequest{Name: "tty"})
	if err != nil {
		t.Fatal(err)
	}

	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer ptmx.Close()
	defer tty.Close()
	if err := pty.Setsize(ptmx, &pty.Winsize{Rows: 33, Cols: 101}); err != nil {
		t.Fatal(err)
	}
	before, err := unix.IoctlGetTermios(int(tty.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(binDir, "aetherium"), "vm", "shell", "tty")
	cmd.Env = append(os.Environ(), "AETHERIUM_SERVER=http://"+addr, "AETHERIUM_API_KEY="+key, "TERM=xterm")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
	// The CLI leads a session whose controlling terminal is the pty, so a resize signals it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() { _ = cmd.Process.Kill() }()
	var out syncBuffer
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := ptmx.Read(buf)
			out.Write(buf[:n])
			if err != nil {
				return
			}
		}
	}()
	// waitOut sends line (again, every second, in case it was typed before the shell read the terminal) until the
	// output holds want.
	waitOut := func(line, want string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for next := time.Now(); !strings.Contains(out.String(), want); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("no %q after %q; terminal shows %q", want, line, out.String())
			}
			if time.Now().After(next) {
				if _, err := ptmx.Write([]byte(line)); err != nil {
					t.Fatal(err)
				}
				next = time.Now().Add(time.Second)
			}
		}
	}
	// Raw mode: the local terminal neither echoes nor edits lines while the session runs.
	waitOut("echo \"S\"\"IZE=$(stty size)\"\r", "SIZE=33 101")
	raw, err := unix.IoctlGetTermios(int(tty.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	if raw.Lflag&(unix.ECHO|unix.ICANON|unix.ISIG) != 0 {
		t.Errorf("the local terminal is not raw during the session: lflag %#x", raw.Lflag)
	}
	if err := pty.Setsize(ptmx, &pty.Winsize{Rows: 40, Cols: 120}); err != nil {
		t.Fatal(err)
	}
	waitOut("echo \"S\"\"IZE=$(stty size)\"\r", "SIZE=40 120")
	if _, err := ptmx.Write([]byte("exit 7\r")); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 7 {
			t.Fatalf("vm shell ended with %v, want exit 7; terminal shows %q", err, out.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("vm shell did not end after exit 7; terminal shows %q", out.String())
	}
	after, err := unix.IoctlGetTermios(int(tty.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	if after.Lflag != before.Lflag || after.Iflag != before.Iflag || after.Oflag != before.Oflag {
		t.Errorf("terminal not restored: lflag %#x -> %#x, iflag %#x -> %#x", before.Lflag, after.Lflag, before.Iflag, after.Iflag)
	}
	if _, err := c.DeleteVMAndWait(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
}
