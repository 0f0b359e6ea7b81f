package e2e

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aetherium/aetherium/pkg/client"
)

// lifecycleServe starts serve on the Docker backend with the lifetime maxima these tests check.
func lifecycleServe(t *testing.T, name string) (env []string, dataDir, addr string, c *client.Client, p *proc) {
	t.Helper()
	requireDocker(t)
	dataDir = t.TempDir()
	addr = freePort(t)
	workerID := "e2e-" + name
	removeWorkerContainers(t, workerID)
	env = serveEnv(dataDir, addr, "AETHERIUM_WORKER_ID="+workerID, "AETHERIUM_VM_MAX_TIMEOUT=1h",
		"AETHERIUM_VM_MAX_IDLE_TIMEOUT=30m")
	p = start(t, "serve", env, "serve")
	waitHTTP(t, addr, p)
	c = newClient(t, addr, readLine(t, filepath.Join(dataDir, "admin-api-key")))
	waitReady(t, c)
	return env, dataDir, addr, c, p
}

// waitStatus polls the VM until it has status want, failing after within.
func waitStatus(t *testing.T, ctx context.Context, c *client.Client, id, want string, within time.Duration) *client.VM {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		vm, err := c.GetVM(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if vm.Status == want {
			return vm
		}
		if time.Now().After(deadline) {
			t.Fatalf("vm %s is %s after %s; want %s (%s)", vm.Name, vm.Status, within, want, vm.Error)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func readCounter(t *testing.T, ctx context.Context, c *client.Client, vmID string) int {
	t.Helper()
	e, err := c.ExecAndWait(ctx, vmID, client.ExecuteRequest{Command: "cat", Args: []string{"/tmp/counter"}})
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(e.Stdout))
	if err != nil {
		t.Fatalf("counter %q %q: %v", e.Stdout, e.Stderr, err)
	}
	return n
}

// TestServePauseResume: a paused VM refuses commands and processes with 409 vm_paused, pausing it again and
// resuming a running VM succeed, a serve restart adopts it still paused, and after resume its background
// processes go on where they were.
func TestServePauseResume(t *testing.T) {
	env, dataDir, addr, c, p := lifecycleServe(t, "pause")
	cliEnv := []string{"AETHERIUM_SERVER=http://" + addr, "AETHERIUM_API_KEY=" + readLine(t, filepath.Join(dataDir, "admin-api-key"))}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	vm, err := c.CreateVMAndWait(ctx, client.CreateVMRequest{Name: "pausable"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.StartProcess(ctx, vm.ID, client.StartProcessRequest{
		Shell: "i=0; while :; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.1; done"}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	before := readCounter(t, ctx, c, vm.ID)

	acc, done, err := c.PauseVM(ctx, vm.ID, 30*time.Second)
	if err != nil || !done || acc.Task.Status != "completed" {
		t.Fatalf("pause: %v done=%v %+v", err, done, acc)
	}
	if got := waitStatus(t, ctx, c, vm.ID, "paused", 0); got.Network != nil && got.Network.IP != vm.Network.IP {
		t.Fatalf("paused vm lost its address: %+v", got.Network)
	}
	if out, errOut, code := runCLI(t, cliEnv, "vm", "pause", "pausable"); code != 0 || !strings.Contains(out, "paused") {
		t.Fatalf("cli: pausing a paused vm: exit %d, %q %q; want success", code, out, errOut)
	}
	for _, secs := range []int{-1, 7200} {
		if _, err := c.Keepalive(ctx, vm.ID, secs); !client.IsCode(err, client.CodeValidation) {
			t.Fatalf("keepalive %d s: %v; want %s", secs, err, client.CodeValidation)
		}
	}
	if out, errOut, code := runCLI(t, cliEnv, "vm", "keepalive", "pausable", "--for", "50m"); code != 0 || !strings.Contains(out, "expires") {
		t.Fatalf("cli keepalive: exit %d, %q %q", code, out, errOut)
	}
	if got, err := c.GetVM(ctx, vm.ID); err != nil || got.Status != "paused" || got.ExpiresAt == nil ||
		time.Until(*got.ExpiresAt) < 49*time.Minute {
		t.Fatalf("after a keepalive for 50m: %+v %v; want paused, expiring in 50 min", got, err)
	}
	_, err = c.Execute(ctx, vm.ID, client.ExecuteRequest{Command: "true"})
	if !client.IsCode(err, client.CodeVMPaused) || !strings.Contains(err.Error(), "resume it") {
		t.Fatalf("exec in a paused vm: %v; want 409 %s saying to resume it", err, client.CodeVMPaused)
	}
	var apiErr *client.APIError
	if !errors.As(err, &apiErr) || apiErr.Status != 409 {
		t.Fatalf("exec in a paused vm: %#v; want status 409", err)
	}
	if _, err := c.StartProcess(ctx, vm.ID, client.StartProcessRequest{Command: "true"}); !client.IsCode(err, client.CodeVMPaused) {
		t.Fatalf("process in a paused vm: %v; want %s", err, client.CodeVMPaused)
	}

	// A restarted serve adopts the paused container as it is: not failed, not resumed.
	p.stop(syscall.SIGTERM, 30*time.Second)
	p2 := start(t, "serve#2", env, "serve")
	waitHTTP(t, addr, p2)
	time.Sleep(4 * time.Second) // more than a resync pass
	if got := waitStatus(t, ctx, c, vm.ID, "paused", 0); got.Error != "" {
		t.Fatalf("paused vm after a restart: %+v", got)
	}

	acc, done, err = c.ResumeVM(ctx, vm.ID, 30*time.Second)
	if err != nil || !done || acc.Task.Status != "completed" {
		t.Fatalf("resume: %v done=%v %+v", err, done, acc)
	}
	waitStatus(t, ctx, c, vm.ID, "running", 0)
	if out, errOut, code := runCLI(t, cliEnv, "vm", "resume", "pausable"); code != 0 || !strings.Contains(out, "resumed") {
		t.Fatalf("cli: resuming a running vm: exit %d, %q %q; want success", code, out, errOut)
	}
	after := readCounter(t, ctx, c, vm.ID)
	// About 6 s passed paused (10 ticks a second when running): the counter hardly moved.
	if after-before > 20 {
		t.Fatalf("counter went from %d to %d across the pause: the vm was not paused", before, after)
	}
	time.Sleep(time.Second)
	if later := readCounter(t, ctx, c, vm.ID); later <= after {
		t.Fatalf("counter stuck at %d after resume: the background process did not survive", later)
	}
	if !strings.Contains(p2.out.String(), "vm resumed") {
		t.Error("serve did not log the resume")
	}
	if _, err := c.DeleteVMAndWait(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}

	if _, err := c.Keepalive(ctx, vm.ID, 0); !client.IsCode(err, client.CodeVMNotRunning) {
		t.Fatalf("keepalive of a deleted vm: %v; want %s", err, client.CodeVMNotRunning)
	}
	if _, _, err := c.PauseVM(ctx, vm.ID, 0); !client.IsCode(err, client.CodeVMNotRunning) {
		t.Fatalf("pause of a deleted vm: %v; want %s", err, client.CodeVMNotRunning)
	}

	// The CLI's create flags, and its refusal of values the API cannot take.
	if out, errOut, code := runCLI(t, cliEnv, "vm", "create", "cli-life", "--lifetime", "20m", "--idle-timeout", "10m",
		"--on-idle", "delete"); code != 0 {
		t.Fatalf("cli create with lifetime flags: exit %d, %q %q", code, out, errOut)
	}
	list, err := c.ListVMs(ctx, client.ListVMsOptions{Status: []string{"running"}})
	if err != nil || len(list.VMs) != 1 {
		t.Fatalf("vms: %+v %v", list, err)
	}
	if got := list.VMs[0]; got.TimeoutSeconds != 1200 || got.IdleTimeoutSeconds != 600 || got.OnIdle != "delete" {
		t.Fatalf("cli-made vm's lifetime: %+v", got)
	}
	if out, errOut, code := runCLI(t, cliEnv, "vm", "get", "cli-life"); code != 0 || !strings.Contains(out, "10m0s (then delete)") {
		t.Fatalf("cli vm get: exit %d, %q %q", code, out, errOut)
	}
	if _, errOut, code := runCLI(t, cliEnv, "vm", "create", "cli-bad", "--lifetime", "1500ms"); code == 0 || !strings.Contains(errOut, "whole number of seconds") {
		t.Fatalf("cli create --lifetime 1500ms: exit %d, %q", code, errOut)
	}
	if _, errOut, code := runCLI(t, cliEnv, "vm", "create", "cli-bad", "--lifetime", "2h"); code == 0 || !strings.Contains(errOut, "at most 3600") {
		t.Fatalf("cli create above the maximum: exit %d, %q", code, errOut)
	}
}

// TestServeLifetimes: with idle_timeout_seconds 5, a VM with nothing going on is paused (on_idle pause) or deleted
// (on_idle delete), one whose background process prints is not, nor one running a silent command; a hard timeout
// deletes a VM however busy, leaving no container and no data directory; keepalives keep a VM past both timeouts;
// bad values are refused with 422 and make nothing.
func TestServeLifetimes(t *testing.T) {
	_, dataDir, _, c, p := lifecycleServe(t, "lifetimes")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	for _, bad := range []client.CreateVMRequest{
		{Name: "bad", TimeoutSeconds: 7200},
		{Name: "bad", IdleTimeoutSeconds: 3600},
		{Name: "bad", TimeoutSeconds: -1},
		{Name: "bad", IdleTimeoutSeconds: 5, OnIdle: "stop"},
	} {
		_, err := c.CreateVM(ctx, bad)
		var apiErr *client.APIError
		if !client.IsCode(err, client.CodeValidation) || !errors.As(err, &apiErr) || apiErr.Status != 422 {
			t.Fatalf("create %+v: %v; want 422 %s", bad, err, client.CodeValidation)
		}
	}
	if list, err := c.ListVMs(ctx, client.ListVMsOptions{}); err != nil || len(list.VMs) != 0 {
		t.Fatalf("refused creates made vms: %v %+v", err, list)
	}

	mk := func(req client.CreateVMRequest) *client.VM {
		t.Helper()
		vm, err := c.CreateVMAndWait(ctx, req)
		if err != nil || vm.Status != "running" {
			t.Fatalf("create %s: %v %+v", req.Name, err, vm)
		}
		return vm
	}
	// Each VM's activity starts right after its creation (creations take a second or so each).
	idlePause := mk(client.CreateVMRequest{Name: "idle-pause", IdleTimeoutSeconds: 5})
	idleDelete := mk(client.CreateVMRequest{Name: "idle-delete", IdleTimeoutSeconds: 5, OnIdle: "delete"})
	if idlePause.IdleTimeoutSeconds != 5 || idlePause.OnIdle != "pause" || idlePause.LastActivityAt == nil {
		t.Fatalf("idle vm's lifetime: %+v", idlePause)
	}
	// No timeout asked and no default: the server's maximum (1 h) bounds it.
	if idlePause.TimeoutSeconds != 3600 || idlePause.ExpiresAt == nil || idlePause.ExpiresAt.Sub(idlePause.CreatedAt) != time.Hour {
		t.Fatalf("a vm that asks for no timeout gets vm_max_timeout: %+v", idlePause)
	}
	// A hard timeout deletes a VM however busy.
	short := mk(client.CreateVMRequest{Name: "short", TimeoutSeconds: 8})
	if short.ExpiresAt == nil || short.ExpiresAt.Sub(short.CreatedAt) != 8*time.Second {
		t.Fatalf("short vm's expiry: %+v", short)
	}
	if _, err := c.Execute(ctx, short.ID, client.ExecuteRequest{Command: "sleep", Args: []string{"60"}}); err != nil {
		t.Fatal(err)
	}
	// Keepalives every 2 s keep "kept" past its 5 s idle timeout and, with seconds, past its 8 s hard timeout.
	kept := mk(client.CreateVMRequest{Name: "kept", TimeoutSeconds: 8, IdleTimeoutSeconds: 5, OnIdle: "delete"})
	stopKeep := make(chan struct{})
	keepDone := make(chan error, 1)
	go func() {
		defer close(keepDone)
		for {
			vm, err := c.Keepalive(ctx, kept.ID, 30)
			if err != nil {
				keepDone <- err
				return
			}
			if vm.ExpiresAt == nil || time.Until(*vm.ExpiresAt) < 29*time.Second {
				keepDone <- errors.New("keepalive did not push expires_at to 30 s from now")
				return
			}
			select {
			case <-stopKeep:
				return
			case <-time.After(2 * time.Second):
			}
		}
	}()
	// A background process that sleeps silently is no activity; one that prints every second is.
	silent := mk(client.CreateVMRequest{Name: "silent", IdleTimeoutSeconds: 5})
	if _, err := c.StartProcess(ctx, silent.ID, client.StartProcessRequest{Command: "sleep", Args: []string{"60"}}); err != nil {
		t.Fatal(err)
	}
	printer := mk(client.CreateVMRequest{Name: "printer", IdleTimeoutSeconds: 5})
	if _, err := c.StartProcess(ctx, printer.ID, client.StartProcessRequest{
		Shell: "for i in $(seq 20); do echo tick $i; sleep 1; done"}); err != nil {
		t.Fatal(err)
	}
	printerStart := time.Now()
	// A running command keeps a VM busy even when it prints nothing.
	busy := mk(client.CreateVMRequest{Name: "busy", IdleTimeoutSeconds: 5})
	busyExec, err := c.Execute(ctx, busy.ID, client.ExecuteRequest{Command: "sleep", Args: []string{"20"}})
	if err != nil {
		t.Fatal(err)
	}

	waitStatus(t, ctx, c, idlePause.ID, "paused", 15*time.Second)
	waitStatus(t, ctx, c, idleDelete.ID, "deleted", 15*time.Second)
	waitStatus(t, ctx, c, silent.ID, "paused", 15*time.Second)
	waitStatus(t, ctx, c, short.ID, "deleted", 15*time.Second)
	// Not before their time: the idle ones paused 5 s after their last activity, the short one at its expiry.
	for _, vm := range []*client.VM{idlePause, silent} {
		got, err := c.GetVM(ctx, vm.ID)
		if err != nil {
			t.Fatal(err)
		}
		if idle := got.UpdatedAt.Sub(*got.LastActivityAt); idle < 5*time.Second {
			t.Fatalf("vm %s paused %s after its last activity, before its 5 s", vm.Name, idle)
		}
	}
	if got, err := c.GetVM(ctx, short.ID); err != nil || got.StoppedAt == nil || got.StoppedAt.Before(*short.ExpiresAt) {
		t.Fatalf("short vm deleted before its expiry: %+v %v", got, err)
	}
	for _, id := range []string{idleDelete.ID, short.ID} {
		if ids := containersOf(t, id); len(ids) != 0 {
			t.Fatalf("containers left after a timeout deleted vm %s: %v", id, ids)
		}
		if _, err := os.Stat(filepath.Join(dataDir, "vms", id)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("data directory of vm %s left after its timeout (stat: %v)", id, err)
		}
	}
	// 12 s into the printer's output: the printing, the busy and the kept-alive VMs still run.
	time.Sleep(time.Until(printerStart.Add(12 * time.Second)))
	for _, vm := range []*client.VM{printer, busy, kept} {
		if got, err := c.GetVM(ctx, vm.ID); err != nil || got.Status != "running" {
			t.Fatalf("vm %s: %+v %v; want running (it was active)", vm.Name, got, err)
		}
	}
	if time.Since(kept.CreatedAt) < 12*time.Second {
		t.Fatal("the kept vm was not checked past its timeouts")
	}
	close(stopKeep)
	if err := <-keepDone; err != nil {
		t.Fatal(err)
	}
	if e, err := c.WaitExecution(ctx, busyExec); err != nil || e.Status != "completed" {
		t.Fatalf("the busy vm's command: %+v %v; want completed (never cut short)", e, err)
	}
	// Once their activity ends, they go idle like the others.
	waitStatus(t, ctx, c, printer.ID, "paused", 20*time.Second)
	waitStatus(t, ctx, c, busy.ID, "paused", 20*time.Second)
	waitStatus(t, ctx, c, kept.ID, "deleted", 15*time.Second)

	out := p.out.String()
	for _, want := range []string{"vm idle for 5s: paused", "vm idle for 5s: deleted", "vm expired (timeout 8s): deleted"} {
		if !strings.Contains(out, want) {
			t.Errorf("serve's log lacks %q", want)
		}
	}
	// A paused VM's last activity was saved: the API shows it, before its pause.
	got, err := c.GetVM(ctx, idlePause.ID)
	if err != nil || got.LastActivityAt == nil || got.LastActivityAt.After(time.Now().Add(-4*time.Second)) {
		t.Fatalf("idle vm's last activity: %+v %v", got, err)
	}
	for _, vm := range []*client.VM{idlePause, silent, printer, busy} {
		if _, err := c.DeleteVMAndWait(ctx, vm.ID); err != nil {
			t.Fatal(err)
		}
	}
}
