package api

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/auth"
	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/placement"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/pkg/client"
)

// adminKey stores an admin key and returns its plaintext.
func (e *testEnv) adminKey(t *testing.T) string {
	t.Helper()
	plain, k, err := auth.NewKey("", "admin", true)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.st.APIKeys().Create(context.Background(), k); err != nil {
		t.Fatal(err)
	}
	return plain
}

// registerCapacity stores a live worker offering c.
func (e *testEnv) registerCapacity(t *testing.T, id string, c placement.Resources) {
	t.Helper()
	now := time.Now().UTC()
	if err := e.st.Workers().Upsert(context.Background(), &model.Worker{ID: id, Hostname: id, Backend: "docker", Status: "active",
		Capacity: 10, Metadata: placement.Metadata(c), StartedAt: now, LastHeartbeat: now}); err != nil {
		t.Fatal(err)
	}
}

// createTargets creates n VMs of 1 vCPU and 512 MB at once and returns, per VM, the worker its create task is
// pinned to ("" when not pinned) and the answers' codes.
func (e *testEnv) createTargets(t *testing.T, key string, n int) (map[string]int, map[int]int) {
	t.Helper()
	var mu sync.Mutex
	per, codes := map[string]int{}, map[int]int{}
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			r := e.call("POST", "/api/v1/vms", key, fmt.Sprintf(`{"name":"vm-%d-%d","vcpus":1,"memory_mb":512}`, n, i))
			mu.Lock()
			defer mu.Unlock()
			codes[r.status]++
			if r.status != http.StatusAccepted && r.status != http.StatusCreated {
				return
			}
			acc := decodeAs[client.VMAccepted](t, r)
			tk, err := e.st.Tasks().Get(context.Background(), acc.TaskID)
			if err != nil {
				t.Error(err)
				return
			}
			per[tk.TargetWorker]++
		})
	}
	wg.Wait()
	return per, codes
}

// TestPlacementByFreeCapacity: creates are pinned to workers by their free capacity and never beyond it; a full
// cluster refuses with 503 no_capacity and makes nothing; a drained worker gets none; workers that advertise no
// capacity (placement off) leave creates unpinned.
func TestPlacementByFreeCapacity(t *testing.T) {
	e := newEnv(t, nil)
	admin := e.adminKey(t)
	e.registerCapacity(t, "w-big", placement.Resources{VCPUs: 16, MemoryMB: 8192})
	e.registerCapacity(t, "w-small", placement.Resources{VCPUs: 4, MemoryMB: 2048})
	e.registerCapacity(t, "w-slots", placement.Resources{VCPUs: 64, MemoryMB: 65536, VMs: 2})

	per, codes := e.createTargets(t, e.keyA, 20)
	if codes[http.StatusAccepted] != 20 || per[""] != 0 || per["w-big"]+per["w-small"]+per["w-slots"] != 20 {
		t.Fatalf("20 creates: codes %v, per worker %v", codes, per)
	}
	if per["w-small"] > 4 || per["w-slots"] > 2 || per["w-big"] > 16 {
		t.Fatalf("a worker was overbooked: %v", per)
	}
	t.Logf("20 creates over three workers: %v", per)
	// What is left: w-big 16 - x, w-small 4 - y, w-slots 0. 10 more must not all fit.
	left := (16 - per["w-big"]) + (4 - per["w-small"]) + (2 - per["w-slots"])
	per2, codes2 := e.createTargets(t, e.keyA, left+3)
	if codes2[http.StatusAccepted] != left || codes2[http.StatusServiceUnavailable] != 3 {
		t.Fatalf("%d creates with room for %d: codes %v (per worker %v)", left+3, left, codes2, per2)
	}
	r := e.call("POST", "/api/v1/vms", e.keyA, `{"name":"one-too-many","vcpus":1,"memory_mb":512}`)
	if r.status != http.StatusServiceUnavailable || r.errCode() != client.CodeNoCapacity || r.header.Get("Retry-After") == "" {
		t.Fatalf("create in a full cluster: %d %s", r.status, r.body)
	}
	if vms, _ := e.st.VMs().List(context.Background(), store.VMFilter{OwnerID: e.ownerA, Page: store.Page{Limit: 500}}); len(vms) != 20+left {
		t.Fatalf("%d VMs stored, want %d: a refused create left one behind", len(vms), 20+left)
	}

	// Workers list (admin only), drain.
	if r := e.call("GET", "/api/v1/workers", e.keyA, ""); r.status != http.StatusForbidden || r.errCode() != client.CodeForbidden {
		t.Fatalf("workers with a user key: %d %s", r.status, r.body)
	}
	e.registerCapacity(t, "w-new", placement.Resources{VCPUs: 8, MemoryMB: 8192})
	if r := e.call("POST", "/api/v1/workers/w-new/drain", admin, ""); r.status != http.StatusOK ||
		decodeAs[client.WorkerInfo](t, r).State != "drained" {
		t.Fatalf("drain: %d %s", r.status, r.body)
	}
	if r := e.call("POST", "/api/v1/vms", e.keyA, `{"name":"to-drained","vcpus":1,"memory_mb":512}`); r.status != http.StatusServiceUnavailable {
		t.Fatalf("the only free worker is drained, yet the create got %d %s", r.status, r.body)
	}
	if r := e.call("POST", "/api/v1/workers/w-new/undrain", admin, ""); r.status != http.StatusOK {
		t.Fatalf("undrain: %d %s", r.status, r.body)
	}
	per3, _ := e.createTargets(t, e.keyB, 2)
	if per3["w-new"] != 2 {
		t.Fatalf("after undrain: %v, want both on w-new", per3)
	}
	wl := decodeAs[client.WorkerList](t, e.okCall("GET", "/api/v1/workers", admin, ""))
	for _, w := range wl.Workers {
		if w.ID == "w-slots" && (w.Capacity == nil || w.Capacity.VMs != 2 || w.State != "live") {
			t.Fatalf("w-slots: %+v", w)
		}
	}
	if r := e.call("POST", "/api/v1/workers/nope/drain", admin, ""); r.status != http.StatusNotFound {
		t.Fatalf("drain of an unknown worker: %d", r.status)
	}
}

// TestQuotaRefusesTheEleventhVM: an owner limited to 10 VMs gets 403 quota_exceeded for the 11th, also when the
// creates come at once, and nothing is made for it; other owners are not limited; only admins manage quotas.
func TestQuotaRefusesTheEleventhVM(t *testing.T) {
	e := newEnv(t, nil)
	admin := e.adminKey(t)
	if r := e.call("PUT", "/api/v1/quotas/"+e.ownerA, e.keyA, `{"max_vms":100}`); r.status != http.StatusForbidden {
		t.Fatalf("a user setting its own quota: %d", r.status)
	}
	if r := e.call("PUT", "/api/v1/quotas/"+e.ownerA, admin, `{"max_vms":-1}`); r.status != http.StatusUnprocessableEntity {
		t.Fatalf("negative quota: %d %s", r.status, r.body)
	}
	if r := e.call("PUT", "/api/v1/quotas/"+e.ownerA, admin, `{"max_vms":10,"max_memory_mb":100000}`); r.status != http.StatusOK {
		t.Fatalf("set quota: %d %s", r.status, r.body)
	}
	_, codes := e.createTargets(t, e.keyA, 12)
	if codes[http.StatusAccepted] != 10 || codes[http.StatusForbidden] != 2 {
		t.Fatalf("12 creates under a quota of 10: %v", codes)
	}
	r := e.call("POST", "/api/v1/vms", e.keyA, `{"name":"eleventh"}`)
	if r.status != http.StatusForbidden || r.errCode() != client.CodeQuotaExceeded {
		t.Fatalf("the 11th: %d %s", r.status, r.body)
	}
	if vms, _ := e.st.VMs().List(context.Background(), store.VMFilter{OwnerID: e.ownerA, Page: store.Page{Limit: 500}}); len(vms) != 10 {
		t.Fatalf("%d VMs stored for the limited owner, want 10", len(vms))
	}
	if _, codes := e.createTargets(t, e.keyB, 11); codes[http.StatusAccepted] != 11 {
		t.Fatalf("another owner: %v", codes)
	}
	if r := e.call("DELETE", "/api/v1/quotas/"+e.ownerA, admin, ""); r.status != http.StatusNoContent {
		t.Fatalf("delete quota: %d", r.status)
	}
	if r := e.call("POST", "/api/v1/vms", e.keyA, `{"name":"eleventh"}`); r.status != http.StatusAccepted {
		t.Fatalf("after the quota is gone: %d %s", r.status, r.body)
	}
}

// TestListTasksAndJobs: GET /tasks and GET /jobs list the caller's own, newest first, paged, filtered by status;
// an unknown status is 422, and another owner sees none of them.
func TestListTasksAndJobs(t *testing.T) {
	e := newEnv(t, nil)
	var taskIDs []string
	for i := range 3 {
		acc := decodeAs[client.VMAccepted](t, e.call("POST", "/api/v1/vms", e.keyA, fmt.Sprintf(`{"name":"l-%d"}`, i)))
		taskIDs = append(taskIDs, acc.TaskID)
	}
	job := decodeAs[client.JobAccepted](t, e.call("POST", "/api/v1/jobs", e.keyA, `{"vm":{"name":"job-vm"},"commands":[{"command":"true"}]}`))
	l := decodeAs[client.TaskList](t, e.okCall("GET", "/api/v1/tasks?limit=2", e.keyA, ""))
	if len(l.Tasks) != 2 || l.NextCursor == "" || l.Tasks[0].ID != job.TaskID || l.Tasks[1].ID != taskIDs[2] {
		t.Fatalf("first page: %d tasks, cursor %q", len(l.Tasks), l.NextCursor)
	}
	l2 := decodeAs[client.TaskList](t, e.okCall("GET", "/api/v1/tasks?limit=2&cursor="+l.NextCursor, e.keyA, ""))
	if len(l2.Tasks) != 2 || l2.Tasks[0].ID != taskIDs[1] || l2.Tasks[1].ID != taskIDs[0] {
		t.Fatalf("second page: %+v", l2)
	}
	if got := decodeAs[client.TaskList](t, e.okCall("GET", "/api/v1/tasks?status=completed,failed", e.keyA, "")); len(got.Tasks) != 0 {
		t.Fatalf("finished tasks: %d, want none (nothing ran)", len(got.Tasks))
	}
	if got := decodeAs[client.TaskList](t, e.okCall("GET", "/api/v1/tasks?status=pending", e.keyA, "")); len(got.Tasks) != 4 {
		t.Fatalf("pending tasks: %d, want 4", len(got.Tasks))
	}
	if r := e.call("GET", "/api/v1/tasks?status=bogus", e.keyA, ""); r.status != http.StatusUnprocessableEntity {
		t.Fatalf("unknown status: %d", r.status)
	}
	jl := decodeAs[client.JobList](t, e.okCall("GET", "/api/v1/jobs", e.keyA, ""))
	if len(jl.Jobs) != 1 || jl.Jobs[0].ID != job.JobID || jl.Jobs[0].Executions == nil {
		t.Fatalf("jobs: %+v", jl)
	}
	if got := decodeAs[client.TaskList](t, e.okCall("GET", "/api/v1/tasks", e.keyB, "")); len(got.Tasks) != 0 {
		t.Fatalf("another owner sees %d tasks", len(got.Tasks))
	}
	if got := decodeAs[client.JobList](t, e.okCall("GET", "/api/v1/jobs", e.keyB, "")); len(got.Jobs) != 0 {
		t.Fatalf("another owner sees %d jobs", len(got.Jobs))
	}
}
