//go:build linux

package vmproc

import (
	"context"
	"os/exec"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestStartDetached: a VMM runs in a session of its own (no signal to the worker's group or terminal reaches it),
// and KillGroup ends it and everything it started.
func TestStartDetached(t *testing.T) {
	for _, opts := range []StartOptions{{}, {DieWithParent: true}} {
		p, err := Start(exec.Command("sh", "-c", "sleep 600 & wait"), opts)
		if err != nil {
			t.Fatal(err)
		}
		if sid, err := unix.Getsid(p.PID); err != nil || sid != p.PID {
			t.Fatalf("%+v: session of %d is %d (%v), want its own", opts, p.PID, sid, err)
		}
		if pgid, err := unix.Getpgid(p.PID); err != nil || pgid != p.PID {
			t.Fatalf("%+v: process group of %d is %d (%v), want its own", opts, p.PID, pgid, err)
		}
		start, _, err := StartTime(p.PID)
		if err != nil {
			t.Fatal(err)
		}
		// The kernel lets a parent see the end of exec (the close-on-exec pipe os/exec waits on) a moment before
		// the new program's arguments are readable in /proc/<pid>/cmdline: look again for a little while.
		isSh := func(args []string) bool { return len(args) == 3 && args[0] == "sh" }
		recognised := false
		for deadline := time.Now().Add(5 * time.Second); !recognised && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			recognised = Owned(p.PID, start, isSh)
		}
		if !recognised {
			args, _ := Cmdline(p.PID)
			t.Fatalf("%+v: the started process is not recognised (cmdline %q)", opts, args)
		}
		if err := KillGroup(p.PID); err != nil {
			t.Fatal(err)
		}
		select {
		case <-p.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("still running after KillGroup")
		}
		// The sleep was in the group too.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err = WaitGone(ctx, func() bool {
			found, _ := Scan(func(args []string) bool { return len(args) == 2 && args[0] == "sleep" && args[1] == "600" })
			for _, f := range found {
				if pg, _ := unix.Getpgid(f.PID); pg == p.PID {
					return true
				}
			}
			return false
		})
		cancel()
		if err != nil {
			t.Fatal("the group's other process outlived KillGroup")
		}
		if p.Exited() && p.ExitDetail("sh") == "" {
			t.Fatal("no exit detail")
		}
	}
}
