package e2e

import (
	"context"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/aetherium/aetherium/pkg/client"
)

// TestTwoInstallationsOnOneEngine is issue 10's reproduction: two `serve` installations (two data directories) on
// one host and Docker engine, with the same worker id (it defaults to the host name). Each worker removes at start
// the containers of its worker id that its store does not know; with installation ids neither ever sees the
// other's, so every VM of both survives restarts of both.
func TestTwoInstallationsOnOneEngine(t *testing.T) {
	requireDocker(t)
	const workerID = "e2e-dup-install"
	removeWorkerContainers(t, workerID)
	type inst struct {
		name, dataDir, addr string
		env                 []string
		p                   *proc
		c                   *client.Client
		vm                  *client.VM
	}
	insts := []*inst{{name: "one"}, {name: "two"}}
	for _, in := range insts {
		in.dataDir, in.addr = t.TempDir(), freePort(t)
		in.env = serveEnv(in.dataDir, in.addr, "AETHERIUM_WORKER_ID="+workerID)
		in.p = start(t, "serve "+in.name, in.env, "serve")
		waitHTTP(t, in.addr, in.p)
		in.c = newClient(t, in.addr, readLine(t, filepath.Join(in.dataDir, "admin-api-key")))
		waitReady(t, in.c)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	for _, in := range insts {
		vm, err := in.c.CreateVMAndWait(ctx, client.CreateVMRequest{Name: "vm-" + in.name})
		if err != nil || vm.Status != "running" {
			t.Fatalf("installation %s: create vm: %+v %v", in.name, vm, err)
		}
		in.vm = vm
	}
	if id1, id2 := readLine(t, filepath.Join(insts[0].dataDir, "installation-id")), readLine(t, filepath.Join(insts[1].dataDir, "installation-id")); id1 == id2 {
		t.Fatalf("both installations have the id %q", id1)
	}
	for round := range 2 {
		for _, in := range insts {
			in.p.stop(syscall.SIGTERM, 30*time.Second)
			in.p = start(t, "serve "+in.name, in.env, "serve")
			waitHTTP(t, in.addr, in.p)
			waitReady(t, in.c)
		}
		for _, in := range insts {
			if ids := containersOf(t, in.vm.ID); len(ids) != 1 {
				t.Fatalf("round %d: installation %s's vm has containers %v after the restarts", round, in.name, ids)
			}
			got, err := in.c.GetVM(ctx, in.vm.ID)
			if err != nil || got.Status != "running" {
				t.Fatalf("round %d: installation %s's vm: %+v %v", round, in.name, got, err)
			}
			e, err := in.c.ExecAndWait(ctx, in.vm.ID, client.ExecuteRequest{Command: "hostname"})
			if err != nil || e.Status != "completed" || e.Stdout != "vm-"+in.name+"\n" {
				t.Fatalf("round %d: exec in installation %s's vm: %+v %v", round, in.name, e, err)
			}
		}
	}
	for _, in := range insts {
		if _, err := in.c.DeleteVMAndWait(ctx, in.vm.ID); err != nil {
			t.Fatal(err)
		}
	}
}
