package e2e

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aetherium/aetherium/pkg/client"
)

// TestPlacementAcrossThreeWorkers: a gateway on PostgreSQL and Redis and three worker processes (Docker backend)
// offering 8, 12 and 10 vCPUs (cpu_overcommit 4, 6 and 5 on this host's CPUs, scaled to the same total of 30 here):
// 30 creates at once all run, spread by free capacity with no worker over what it offers; the 31st is refused with
// no_capacity; a drained worker gets nothing; an owner's quota refuses what is over it.
func TestPlacementAcrossThreeWorkers(t *testing.T) {
	requireDocker(t)
	dbURL := newPostgresDB(t)
	redisURL := flushRedis(t)
	common := []string{
		"AETHERIUM_DATABASE_URL=" + dbURL, "AETHERIUM_REDIS_URL=" + redisURL,
		"AETHERIUM_AGENT_BINARY=" + filepath.Join(binDir, "aetherium-agent"), "AETHERIUM_LOG_LEVEL=info",
		"AETHERIUM_CLUSTER_TOKEN=" + e2eClusterToken, "AETHERIUM_BACKEND=docker", "AETHERIUM_NETWORK=off",
		"AETHERIUM_METRICS_LISTEN=off", "AETHERIUM_RATE_LIMIT_EXPENSIVE_RATE=100", "AETHERIUM_RATE_LIMIT_EXPENSIVE_BURST=500",
	}
	key, errOut, code := runCLI(t, append(common, "AETHERIUM_DATA_DIR="+t.TempDir()), "apikey", "create", "--name", "e2e", "--admin", "--owner", placementOwner)
	if code != 0 {
		t.Fatalf("apikey create: %s", errOut)
	}
	addr := freePort(t)
	gw := start(t, "gateway", append(common, "AETHERIUM_DATA_DIR="+t.TempDir(), "AETHERIUM_LISTEN="+addr), "gateway")
	cpus := runtime.NumCPU()
	// Each worker's vCPUs are its overcommit times the host's CPUs; the overcommits are chosen so the three offer
	// 8, 12 and 10 vCPUs whatever the host's CPU count (the setting is a ratio).
	offer := map[string]int{"e2e-place-a": 8, "e2e-place-b": 12, "e2e-place-c": 10}
	for id, vcpus := range offer {
		removeWorkerContainers(t, id)
		start(t, id, append(common, "AETHERIUM_DATA_DIR="+shortDir(t), "AETHERIUM_WORKER_ID="+id,
			fmt.Sprintf("AETHERIUM_CPU_OVERCOMMIT=%g", float64(vcpus)/float64(cpus))), "worker")
	}
	waitHTTP(t, addr, gw)
	c := newClient(t, addr, strings.TrimSpace(key))
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	deadline := time.Now().Add(60 * time.Second)
	for {
		wl, err := c.ListWorkers(ctx)
		live := 0
		if err == nil {
			for _, w := range wl.Workers {
				if w.State == "live" && w.Capacity != nil && w.Capacity.VCPUs == offer[w.ID] {
					live++
				}
			}
		}
		if live == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the three workers did not register their capacity: %+v %v", wl, err)
		}
		time.Sleep(200 * time.Millisecond)
	}

	// 30 creates at once, of 1 vCPU each: exactly what the three offer.
	var wg sync.WaitGroup
	errs := make(chan error, 30)
	for i := range 30 {
		wg.Go(func() {
			acc, done, err := c.CreateVMWait(ctx, client.CreateVMRequest{Name: fmt.Sprintf("p-%02d", i), VCPUs: 1, MemoryMB: 256}, 4*time.Minute)
			if err == nil && (!done || acc.VM.Status != "running") {
				err = fmt.Errorf("vm %d: done=%v status=%s %s", i, done, acc.VM.Status, acc.VM.Error)
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("one of 30 creates: %v", err)
		}
	}
	per := vmsPerWorker(t, c)
	for id, vcpus := range offer {
		if per[id] != vcpus {
			t.Errorf("worker %s holds %d VMs of 1 vCPU, want %d (what it offers): %v", id, per[id], vcpus, per)
		}
	}
	t.Logf("30 creates at once: %v", per)
	var ae *client.APIError
	if _, err := c.CreateVM(ctx, client.CreateVMRequest{Name: "p-31", VCPUs: 1, MemoryMB: 256}); !errors.As(err, &ae) || ae.Code != client.CodeNoCapacity {
		t.Fatalf("the 31st create in a full cluster: %v, want 503 no_capacity", err)
	}

	// Room on b, but b is drained: nothing goes there; undrained, it does.
	list, err := c.ListVMs(ctx, client.ListVMsOptions{Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	freed := 0
	for _, vm := range list.VMs {
		if vm.WorkerID == "e2e-place-b" && freed < 2 {
			if _, err := c.DeleteVMAndWait(ctx, vm.ID); err != nil {
				t.Fatal(err)
			}
			freed++
		}
	}
	if _, err := c.DrainWorker(ctx, "e2e-place-b", true); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateVM(ctx, client.CreateVMRequest{Name: "to-drained", VCPUs: 1, MemoryMB: 256}); !errors.As(err, &ae) || ae.Code != client.CodeNoCapacity {
		t.Fatalf("a create with room only on a drained worker: %v, want no_capacity", err)
	}
	if _, err := c.DrainWorker(ctx, "e2e-place-b", false); err != nil {
		t.Fatal(err)
	}
	acc, done, err := c.CreateVMWait(ctx, client.CreateVMRequest{Name: "after-undrain", VCPUs: 1, MemoryMB: 256}, 2*time.Minute)
	if err != nil || !done || acc.VM.WorkerID != "e2e-place-b" {
		t.Fatalf("after undrain: %+v %v, want it on e2e-place-b", acc, err)
	}

	// A quota of what the owner holds refuses one more, with nothing made.
	wl, err := c.ListVMs(ctx, client.ListVMsOptions{Limit: 100, Status: []string{"running"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.SetQuota(ctx, client.Quota{OwnerID: placementOwner, MaxVMs: len(wl.VMs)}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.DeleteVMAndWait(ctx, wl.VMs[0].ID); err != nil { // room on its worker, none in the quota after one
		t.Fatal(err)
	}
	if _, _, err := c.CreateVMWait(ctx, client.CreateVMRequest{Name: "within-quota", VCPUs: 1, MemoryMB: 256}, 2*time.Minute); err != nil {
		t.Fatalf("a create within the quota: %v", err)
	}
	if _, err := c.CreateVM(ctx, client.CreateVMRequest{Name: "over-quota", VCPUs: 1, MemoryMB: 256}); !errors.As(err, &ae) || ae.Code != client.CodeQuotaExceeded {
		t.Fatalf("a create over the quota: %v, want 403 quota_exceeded", err)
	}
}

// placementOwner owns the test's VMs (its admin key's owner).
const placementOwner = "e2e-placement-owner"

func vmsPerWorker(t *testing.T, c *client.Client) map[string]int {
	t.Helper()
	l, err := c.ListVMs(context.Background(), client.ListVMsOptions{Limit: 100, Status: []string{"running"}})
	if err != nil {
		t.Fatal(err)
	}
	per := map[string]int{}
	for _, vm := range l.VMs {
		per[vm.WorkerID]++
	}
	return per
}
