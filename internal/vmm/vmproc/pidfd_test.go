//go:build linux

package vmproc

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/vmm"
)

// startNonChild starts `sleep 600` as a grandchild whose parent exits at once, so it is not this process's child
// (like a VMM a previous worker process started), and returns its pid and start time. It is killed at cleanup.
func startNonChild(t *testing.T) (int, uint64) {
	t.Helper()
	out, err := exec.Command("sh", "-c", "setsid sleep 600 </dev/null >/dev/null 2>&1 & echo $!").Output()
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	start, gone, err := StartTime(pid)
	if err != nil || gone {
		t.Fatalf("sleep %d: gone=%v %v", pid, gone, err)
	}
	if ppid := parentOf(t, pid); ppid == os.Getpid() {
		t.Fatalf("sleep %d is this process's child; the test needs a stranger", pid)
	}
	return pid, start
}

func parentOf(t *testing.T, pid int) int {
	t.Helper()
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+1:]))
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}

func waitFires(t *testing.T, pfd *Pidfd) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- pfd.Wait(context.Background()) }()
	select {
	case err := <-done:
		t.Fatalf("Wait returned (%v) while the process runs", err)
	case <-time.After(200 * time.Millisecond):
	}
	if pfd.Exited() {
		t.Fatal("Exited while the process runs")
	}
	if err := syscall.Kill(pfd.PID(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Wait: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Wait did not return within 5 s of SIGKILL")
	}
	if !pfd.Exited() {
		t.Fatal("not Exited after Wait")
	}
}

// TestPidfdChild: a pidfd fires when a child is killed, and does not reap it: the child's own Wait still gets its
// status.
func TestPidfdChild(t *testing.T) {
	cmd := exec.Command("sleep", "600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill() }()
	start, _, err := StartTime(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	pfd, err := OpenPidfd(cmd.Process.Pid, start)
	if err != nil {
		t.Fatal(err)
	}
	defer pfd.Close()
	waitFires(t, pfd)
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.String() != "signal: killed" {
		t.Fatalf("the child's own Wait: %v, want signal: killed", err)
	}
}

// TestPidfdNonChild: a pidfd fires when a process that is not our child (no waitpid possible) is killed.
func TestPidfdNonChild(t *testing.T) {
	pid, start := startNonChild(t)
	pfd, err := OpenPidfd(pid, start)
	if err != nil {
		t.Fatal(err)
	}
	defer pfd.Close()
	// The runtime's poller takes pidfds (Linux 5.3+): Wait parks a goroutine, not a thread in poll(2).
	if err := pfd.f.SetReadDeadline(time.Time{}); err != nil {
		t.Errorf("pidfd not in the runtime's poller: %v", err)
	}
	waitFires(t, pfd)
}

// TestPidfdRefusesAnotherProcess: a pid whose start time is not the recorded one (what a reused pid looks like),
// a process that is gone and an unreaped zombie are never watched.
func TestPidfdRefusesAnotherProcess(t *testing.T) {
	pid, start := startNonChild(t)
	if _, err := OpenPidfd(pid, start+1); !errors.Is(err, ErrGone) {
		t.Fatalf("pid %d with another start time: %v, want ErrGone", pid, err)
	}
	if _, err := OpenPidfd(pid, start-1); !errors.Is(err, ErrGone) {
		t.Fatalf("pid %d with another start time: %v, want ErrGone", pid, err)
	}
	// A zombie: exited, not yet reaped.
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	zpid := cmd.Process.Pid
	zstart, _, err := StartTime(zpid)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := WaitGone(ctx, func() bool { _, gone, _ := StartTime(zpid); return !gone }); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenPidfd(zpid, zstart); !errors.Is(err, ErrGone) {
		t.Fatalf("zombie %d: %v, want ErrGone", zpid, err)
	}
	_ = cmd.Wait()
	if _, err := OpenPidfd(zpid, zstart); !errors.Is(err, ErrGone) {
		t.Fatalf("reaped %d: %v, want ErrGone", zpid, err)
	}
}

// TestPidfdWaitEndsWithContext: a Wait on a process that runs on returns when its context ends.
func TestPidfdWaitEndsWithContext(t *testing.T) {
	pid, start := startNonChild(t)
	pfd, err := OpenPidfd(pid, start)
	if err != nil {
		t.Fatal(err)
	}
	defer pfd.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- pfd.Wait(ctx) }()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Wait: %v, want the context's error", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Wait outlived its context")
	}
	// A later Wait still works.
	waitFires(t, pfd)
}

func nextEvent(t *testing.T, c <-chan vmm.Event, within time.Duration) (vmm.Event, bool) {
	t.Helper()
	select {
	case ev, ok := <-c:
		if !ok {
			t.Fatal("events channel closed")
		}
		return ev, true
	case <-time.After(within):
		return vmm.Event{}, false
	}
}

// TestExitWatcher: a child and an adopted process that are killed are each reported once with the VM's id and how
// they ended; a forgotten one (a deliberate stop) is not; a process already gone when watched is reported at once;
// the channel closes with its context.
func TestExitWatcher(t *testing.T) {
	dir := t.TempDir()
	console := filepath.Join(dir, "console.log")
	if err := os.WriteFile(console, []byte("old boot\n--- start ---\nKernel panic - not syncing: \x1b[31mOops\n\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	w := NewExitWatcher("test", nil, func(id string) string { return LastConsoleLine(console, "--- ") })
	defer w.Close()
	ctx, cancel := context.WithCancel(context.Background())
	evs := w.Events(ctx)

	p, err := Start(exec.Command("sleep", "600"), StartOptions{DieWithParent: true})
	if err != nil {
		t.Fatal(err)
	}
	pstart, _, _ := StartTime(p.PID)
	w.Watch("child", p.PID, pstart, p)
	w.Watch("child", p.PID, pstart, p) // again: still one watch
	pid, start := startNonChild(t)
	w.Watch("adopted", pid, start, nil)
	fpid, fstart := startNonChild(t)
	w.Watch("forgotten", fpid, fstart, nil)

	if ev, ok := nextEvent(t, evs, 300*time.Millisecond); ok {
		t.Fatalf("event while everything runs: %+v", ev)
	}
	w.Forget("forgotten")
	for _, k := range []int{p.PID, pid, fpid} {
		_ = syscall.Kill(k, syscall.SIGKILL)
	}
	got := map[string]vmm.Event{}
	for len(got) < 2 {
		ev, ok := nextEvent(t, evs, 5*time.Second)
		if !ok {
			t.Fatalf("events after SIGKILL: %+v, want child and adopted", got)
		}
		if _, dup := got[ev.VMID]; dup {
			t.Fatalf("second event for %s: %+v", ev.VMID, ev)
		}
		got[ev.VMID] = ev
	}
	want := map[string]string{
		"child":   "test process " + strconv.Itoa(p.PID) + " exited (signal: killed); guest kernel panic: \"Kernel panic - not syncing: \\x1b[31mOops\"",
		"adopted": "test process " + strconv.Itoa(pid) + " exited; guest kernel panic: \"Kernel panic - not syncing: \\x1b[31mOops\"",
	}
	for id, d := range want {
		if ev := got[id]; ev.State != vmm.StateStopped || ev.Detail != d {
			t.Errorf("event of %s: %+v, want detail %q", id, ev, d)
		}
	}
	if d, ok := w.Detail("adopted", pid, start); !ok || d != want["adopted"] {
		t.Errorf("Detail(adopted) = %q, %v", d, ok)
	}
	if _, ok := w.Detail("adopted", pid, start+1); ok {
		t.Error("Detail of another process")
	}
	if ev, ok := nextEvent(t, evs, 300*time.Millisecond); ok {
		t.Fatalf("event for a forgotten or already reported process: %+v", ev)
	}

	// Gone before the watch began (its pid and start time are the killed one's).
	w.Watch("late", pid, start, nil)
	if ev, ok := nextEvent(t, evs, 5*time.Second); !ok || ev.VMID != "late" {
		t.Fatalf("a process gone when watched: %+v %v", ev, ok)
	}

	cancel()
	select {
	case _, ok := <-evs:
		if ok {
			t.Fatal("an event after the context ended")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("channel not closed when its context ended")
	}
	w.Close()
	if _, ok := <-w.Events(context.Background()); ok {
		t.Fatal("events from a closed watcher")
	}
}

func TestLastConsoleLine(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "console.log")
	for _, c := range []struct{ log, want string }{
		{"", ""},
		{"--- aetherium: start ---\n", ""},
		{"boot 1\n--- aetherium: start ---\n  \n", ""},
		{"--- aetherium: start ---\nhello\nworld\r\n\n", `last console line: "world"`},
		{"x\n" + strings.Repeat("é", 300) + "\n", `last console line: "` + strings.Repeat("é", maxConsoleLine) + `…"`},
		{"--- aetherium: start ---\n[    4.8] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000200\n" +
			"[    4.9] CPU: 0 PID: 1\n[    4.9] Kernel Offset: disabled\n",
			`guest kernel panic: "Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000200"`},
		{"[ 1.0] Kernel panic - not syncing: old boot\n--- aetherium: start ---\nfine\n", `last console line: "fine"`},
	} {
		if err := os.WriteFile(p, []byte(c.log), 0o600); err != nil {
			t.Fatal(err)
		}
		if got := LastConsoleLine(p, "--- aetherium:"); got != c.want {
			t.Errorf("LastConsoleLine(%q) = %q, want %q", c.log, got, c.want)
		}
	}
	if got := LastConsoleLine(filepath.Join(dir, "missing"), "---"); got != "" {
		t.Errorf("missing log: %q", got)
	}
}
