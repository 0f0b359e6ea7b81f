//go:build linux

package server

import (
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// procState returns the state letter of pid ("Z" for a zombie), or "" when it no longer exists.
func procState(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if errors.Is(err, os.ErrNotExist) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	// The state follows the command name, which is in parentheses and may contain spaces.
	rest := string(b[strings.LastIndexByte(string(b), ')')+2:])
	return rest[:1]
}

func waitState(t *testing.T, pid int, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for procState(t, pid) != want {
		if time.Now().After(deadline) {
			t.Fatalf("pid %d in state %q, want %q", pid, procState(t, pid), want)
		}
		time.Sleep(5 * time.Millisecond) // polling the kernel's process table; there is no event for it
	}
}

// TestReaperLeavesOurChildren: a command started through the Reaper is never reaped by it, even as a zombie,
// so os/exec gets its real exit status; a child started behind its back is reaped.
func TestReaperLeavesOurChildren(t *testing.T) {
	r := NewReaper(nil)
	ours := exec.Command("sh", "-c", "exit 7")
	if err := r.start(ours); err != nil {
		t.Fatal(err)
	}
	orphan, err := os.StartProcess("/bin/sh", []string{"sh", "-c", "exit 0"}, &os.ProcAttr{})
	if err != nil {
		t.Fatal(err)
	}
	waitState(t, ours.Process.Pid, "Z")
	waitState(t, orphan.Pid, "Z")

	reaped := 0
	for range 5 {
		reaped += r.ReapOrphans()
		if got := procState(t, ours.Process.Pid); got != "Z" {
			t.Fatalf("the reaper took our command (state %q)", got)
		}
	}
	err = ours.Wait()
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) || exitErr.ExitCode() != 7 {
		t.Fatalf("os/exec saw %v, want exit status 7", err)
	}
	r.finished(ours.Process.Pid)
	reaped += r.ReapOrphans()
	if reaped != 1 {
		t.Fatalf("reaped %d processes, want 1 (the orphan)", reaped)
	}
	if got := procState(t, orphan.Pid); got != "" {
		t.Fatalf("orphan still in the process table, state %q", got)
	}
	// The orphan's Process can no longer wait: its status went to the reaper.
	if _, err := orphan.Wait(); err == nil {
		t.Fatal("orphan could still be waited for")
	}
	if n := r.ReapOrphans(); n != 0 {
		t.Fatalf("reaped %d with no zombies around", n)
	}
}
