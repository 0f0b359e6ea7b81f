package worker

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/placement"
	"github.com/aetherium/aetherium/internal/queue"
	"github.com/aetherium/aetherium/internal/store/sqlite"
)

// TestAdmission: a create that arrives at a worker it no longer fits on (another gateway placed there too) is
// re-placed on a worker it fits on; with none, it waits; after admitWait it fails with the reason; one that fits
// is admitted, and counted by the next admission once it is creating.
func TestAdmission(t *testing.T) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "a.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	if err := st.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	w := &Worker{cfg: Config{ID: "w-me", Store: st, Resources: placement.Resources{VCPUs: 4, MemoryMB: 4096},
		HeartbeatInterval: 5 * time.Second}, log: slog.Default()}
	mkVM := func(status model.VMStatus, worker string, vcpus int, created time.Time) *model.VM {
		vm := &model.VM{ID: uuid.NewString(), OwnerID: "o", Name: uuid.NewString()[:8], Status: status, WorkerID: worker,
			VCPUCount: vcpus, MemoryMB: 1024, CreatedAt: created}
		if err := st.VMs().Create(ctx, vm); err != nil {
			t.Fatal(err)
		}
		return vm
	}
	mkVM(model.VMRunning, "w-me", 3, time.Now())
	fits := mkVM(model.VMPending, "", 1, time.Now())
	unlock, err := w.admit(ctx, fits.ID)
	if err != nil {
		t.Fatalf("a VM that fits: %v", err)
	}
	if _, err := st.VMs().Update(ctx, fits.ID, func(v *model.VM) error { v.Status, v.WorkerID = model.VMCreating, "w-me"; return nil }); err != nil {
		t.Fatal(err)
	}
	unlock()

	// Full now (4 of 4 vCPUs). No other worker: it waits.
	big := mkVM(model.VMPending, "", 2, time.Now())
	_, err = w.admit(ctx, big.ID)
	if d, ok := queue.AsDefer(err); !ok || !errors.Is(err, errNoRoom) || d.After != admitRetry {
		t.Fatalf("a VM with no room anywhere: %v, want a deferral", err)
	}
	// Another worker with room: it is re-placed there.
	now := time.Now().UTC()
	if err := st.Workers().Upsert(ctx, &model.Worker{ID: "w-other", Status: "active", StartedAt: now, LastHeartbeat: now,
		Metadata: placement.Metadata(placement.Resources{VCPUs: 8, MemoryMB: 8192})}); err != nil {
		t.Fatal(err)
	}
	_, err = w.admit(ctx, big.ID)
	if r, ok := queue.AsReroute(err); !ok || r.Worker != "w-other" {
		t.Fatalf("a VM that fits elsewhere: %v, want a reroute to w-other", err)
	}
	// A drained worker is no way out; and after admitWait the create fails with the reason.
	if err := st.Workers().SetDrained(ctx, "w-other", true); err != nil {
		t.Fatal(err)
	}
	old := mkVM(model.VMPending, "", 2, time.Now().Add(-admitWait-time.Minute))
	_, err = w.admit(ctx, old.ID)
	if !queue.IsPermanent(err) {
		t.Fatalf("a VM that waited too long: %v, want a permanent failure", err)
	}
	if got, _ := st.VMs().Get(ctx, old.ID); got.Status != model.VMFailed || got.Error == "" {
		t.Fatalf("the VM that waited too long: %s %q, want failed with the reason", got.Status, got.Error)
	}
	// A worker that advertises nothing admits everything.
	open := &Worker{cfg: Config{ID: "w-open", Store: st}, log: slog.Default()}
	if unlock, err := open.admit(ctx, big.ID); err != nil {
		t.Fatalf("placement off: %v", err)
	} else {
		unlock()
	}
}
