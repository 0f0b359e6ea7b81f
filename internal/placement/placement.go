// Package placement chooses the worker a new VM goes to, from the free capacity workers advertise in their
// heartbeats (vCPUs, memory and VM slots after overcommit) less what their VMs hold, and lets a worker check
// that a VM still fits when its create arrives (the gateway's view may be a moment old, or another gateway's
// placements may not be in it).
package placement

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store"
)

// Keys of a worker's heartbeat metadata that advertise its capacity (after overcommit).
const (
	KeyVCPUs    = "capacity_vcpus"
	KeyMemoryMB = "capacity_memory_mb"
	KeyVMs      = "capacity_vms" // 0 or absent: no limit on the number of VMs
)

// Resources is an amount of a worker's capacity.
type Resources struct {
	VCPUs, MemoryMB, VMs int
}

// Add returns r plus o.
func (r Resources) Add(o Resources) Resources {
	return Resources{VCPUs: r.VCPUs + o.VCPUs, MemoryMB: r.MemoryMB + o.MemoryMB, VMs: r.VMs + o.VMs}
}

func (r Resources) String() string {
	return fmt.Sprintf("%d vCPU, %d MB, %d VMs", r.VCPUs, r.MemoryMB, r.VMs)
}

// Of is what a VM holds.
func Of(vcpus, memoryMB int) Resources { return Resources{VCPUs: vcpus, MemoryMB: memoryMB, VMs: 1} }

// Capacity reads what a worker advertises; ok is false for a worker that advertises none (an older version),
// which placement leaves out rather than guess about.
func Capacity(w *model.Worker) (Resources, bool) {
	cpus, err1 := strconv.Atoi(w.Metadata[KeyVCPUs])
	mem, err2 := strconv.Atoi(w.Metadata[KeyMemoryMB])
	if err1 != nil || err2 != nil || cpus <= 0 || mem <= 0 {
		return Resources{}, false
	}
	vms, _ := strconv.Atoi(w.Metadata[KeyVMs])
	return Resources{VCPUs: cpus, MemoryMB: mem, VMs: vms}, true
}

// Metadata is what a worker with capacity c puts in its heartbeat.
func Metadata(c Resources) map[string]string {
	return map[string]string{KeyVCPUs: strconv.Itoa(c.VCPUs), KeyMemoryMB: strconv.Itoa(c.MemoryMB), KeyVMs: strconv.Itoa(c.VMs)}
}

// Fits reports whether need fits beside used within capacity (a capacity of 0 VMs is no limit on their number).
func Fits(capacity, used, need Resources) bool {
	return used.VCPUs+need.VCPUs <= capacity.VCPUs && used.MemoryMB+need.MemoryMB <= capacity.MemoryMB &&
		(capacity.VMs == 0 || used.VMs+need.VMs <= capacity.VMs)
}

// Holding are the VM states that hold a worker's capacity.
var Holding = []model.VMStatus{model.VMPending, model.VMCreating, model.VMRunning, model.VMPaused, model.VMStopping}

// Used is what the VMs the store assigns to worker hold, except the VM except (the one being admitted).
func Used(ctx context.Context, st store.Store, workerID, except string) (Resources, error) {
	var used Resources
	page := store.Page{Limit: 500}
	for {
		vms, err := st.VMs().List(ctx, store.VMFilter{WorkerID: workerID, Statuses: Holding, Page: page})
		if err != nil {
			return used, fmt.Errorf("list the vms of worker %s: %w", workerID, err)
		}
		for _, vm := range vms {
			if vm.ID != except {
				used = used.Add(Of(vm.VCPUCount, vm.MemoryMB))
			}
		}
		if len(vms) < page.Limit {
			return used, nil
		}
		page.After = vms[len(vms)-1].ID
	}
}

// Load is a worker a VM may go to: what it has and what is taken.
type Load struct {
	WorkerID string
	Backend  string
	Capacity Resources
	Used     Resources
}

// Free is the share of the scarcer of vCPUs and memory that is still free after need.
func (l Load) free(need Resources) float64 {
	c := float64(l.Capacity.VCPUs-l.Used.VCPUs-need.VCPUs) / float64(l.Capacity.VCPUs)
	m := float64(l.Capacity.MemoryMB-l.Used.MemoryMB-need.MemoryMB) / float64(l.Capacity.MemoryMB)
	return min(c, m)
}

// Loads returns the workers that may take new VMs: active, heard from within staleAfter, not drained, backend
// healthy and advertising their capacity, with what their VMs hold plus reserved(worker) (placements of this
// process whose VMs do not show on the worker yet).
func Loads(ctx context.Context, st store.Store, staleAfter time.Duration, reserved func(string) Resources) ([]Load, error) {
	ws, err := st.Workers().List(ctx)
	if err != nil {
		return nil, fmt.Errorf("list workers: %w", err)
	}
	var out []Load
	for _, w := range ws {
		c, ok := Capacity(w)
		if !ok || w.Status != "active" || w.Drained || time.Since(w.LastHeartbeat) > staleAfter ||
			(w.Metadata["backend_health"] != "" && w.Metadata["backend_health"] != "ok") {
			continue
		}
		used, err := Used(ctx, st, w.ID, "")
		if err != nil {
			return nil, err
		}
		if reserved != nil {
			used = used.Add(reserved(w.ID))
		}
		out = append(out, Load{WorkerID: w.ID, Backend: w.Backend, Capacity: c, Used: used})
	}
	return out, nil
}

// Choose picks the worker for need: of k candidates drawn at random among those it fits, the one left with the
// most free capacity (the "power of k choices": near the best spread, without every gateway piling onto the
// same emptiest worker). Workers other than exclude only; ok is false when it fits nowhere.
func Choose(loads []Load, need Resources, k int, exclude string, rnd *rand.Rand) (string, bool) {
	var fit []Load
	for _, l := range loads {
		if l.WorkerID != exclude && Fits(l.Capacity, l.Used, need) {
			fit = append(fit, l)
		}
	}
	if len(fit) == 0 {
		return "", false
	}
	if k < 1 {
		k = 2
	}
	best := -1
	for i := 0; i < k && i < len(fit); i++ {
		j := i + rnd.IntN(len(fit)-i)
		fit[i], fit[j] = fit[j], fit[i]
		if best < 0 || fit[i].free(need) > fit[best].free(need) {
			best = i
		}
	}
	return fit[best].WorkerID, true
}
