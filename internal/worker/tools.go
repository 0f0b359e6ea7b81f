package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"sync"
	"time"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/queue"
	"github.com/aetherium/aetherium/internal/task"
	"github.com/aetherium/aetherium/internal/tools"
)

// maxToolLog bounds the install lines kept in a create task's result.
const maxToolLog = 200

// toolLog collects a create task's install lines and shows them in the task's result while it runs, so that
// `GET /tasks/{id}` tells where a long install is.
type toolLog struct {
	w      *Worker
	taskID string
	vmID   string
	mu     sync.Mutex
	lines  []string
	saved  time.Time
}

func (l *toolLog) add(line string) {
	l.w.log.Info("tools", "vm_id", l.vmID, "step", line)
	l.mu.Lock()
	if len(l.lines) < maxToolLog {
		l.lines = append(l.lines, line)
	}
	lines := append([]string(nil), l.lines...)
	due := time.Since(l.saved) > 500*time.Millisecond
	if due {
		l.saved = time.Now()
	}
	l.mu.Unlock()
	if !due || l.taskID == "" {
		return
	}
	data, err := json.Marshal(createProgress{VMID: l.vmID, Status: model.VMCreating, ToolLog: lines})
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := l.w.cfg.Store.Tasks().Update(ctx, l.taskID, func(t *model.Task) error {
		if t.Status != model.TaskProcessing {
			return errSkip
		}
		t.Result = data
		return nil
	}); err != nil && !errors.Is(err, errSkip) {
		l.w.log.Debug("save install progress", "task_id", l.taskID, "err", err)
	}
}

func (l *toolLog) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}

// createProgress is a create task's result while it runs.
type createProgress struct {
	VMID    string         `json:"vm_id"`
	Status  model.VMStatus `json:"status"`
	ToolLog []string       `json:"tool_log,omitempty"`
}

// handleTools installs tools into a running VM of this worker (POST /vms/{id}/tools) and records what it has.
func (w *Worker) handleTools(ctx context.Context, t *model.Task) (json.RawMessage, error) {
	var p task.ToolsPayload
	if err := decode(t, &p); err != nil {
		return nil, err
	}
	vm, err := w.cfg.Store.VMs().Get(ctx, p.VMID)
	if err != nil {
		if errors.Is(err, model.ErrNotFound) {
			return nil, queue.Permanent(err)
		}
		return nil, err
	}
	if vm.Status != model.VMRunning || vm.WorkerID != w.cfg.ID {
		return nil, queue.Permanent(fmt.Errorf("vm %s is %s on worker %q: tools need a running vm of this worker", vm.ID, vm.Status, vm.WorkerID))
	}
	// Two installs into one VM at once would each rewrite its tool record from what they read first.
	unlock := w.lockTools(vm.ID)
	defer unlock()
	tl := &toolLog{w: w, taskID: t.ID, vmID: vm.ID}
	want := *vm
	want.Tools = p.Tools
	have, err := w.provisionTools(ctx, &want, tl)
	if err != nil {
		return nil, err
	}
	_, err = w.cfg.Store.VMs().Update(ctx, vm.ID, func(v *model.VM) error {
		v.InstalledTools = have
		for _, name := range p.Tools {
			if !slices.Contains(v.Tools, name) {
				v.Tools = append(v.Tools, name)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("record the tools of vm %s: %w", vm.ID, err)
	}
	return encode(task.ToolsResult{VMID: vm.ID, InstalledTools: have, ToolLog: tl.all()})
}

// provisionTools installs the tools vm asks for that it does not have yet and returns every catalog tool it has
// (name -> version). Without tools asked for, it only takes the inventory, and a failure there is not the VM's.
func (w *Worker) provisionTools(ctx context.Context, vm *model.VM, log *toolLog) (map[string]string, error) {
	inst := w.cfg.Tools
	if inst == nil {
		if len(vm.Tools) > 0 {
			return nil, queue.Permanent(fmt.Errorf("tools %v were asked for, but worker %s has no tool installer", vm.Tools, w.cfg.ID))
		}
		return nil, nil
	}
	c, err := w.cfg.Backend.Agent(ctx, vm.ID)
	if err != nil {
		return nil, fmt.Errorf("reach the agent to install tools: %w", err)
	}
	target := tools.NewAgentTarget(c, vm.ID)
	have, err := inst.Inventory(ctx, target)
	if err != nil {
		if len(vm.Tools) == 0 {
			w.log.Warn("read the tools of a vm", "vm_id", vm.ID, "err", err)
			return nil, nil
		}
		return nil, fmt.Errorf("read the tools of vm %s: %w", vm.ID, err)
	}
	// The record comes from inside the VM: keep only catalog tools with sane versions.
	have = catalogOnly(inst.Catalog(), have)
	if len(vm.Tools) == 0 {
		return have, nil
	}
	reqs, err := inst.Catalog().Parse(vm.Tools, nil)
	if err != nil {
		return nil, queue.Permanent(fmt.Errorf("tools: %w", err))
	}
	missing := inst.Catalog().Missing(have, reqs)
	if len(missing) == 0 {
		log.add("the template has every tool asked for")
		return have, nil
	}
	start := time.Now()
	done, err := inst.Install(ctx, target, missing, log.add)
	for _, d := range done {
		have[d.Name] = d.Version
	}
	if err != nil {
		err = fmt.Errorf("install tools: %w", err)
		if errors.Is(err, tools.ErrUnknownVersion) || errors.Is(err, tools.ErrUnknownTool) || errors.Is(err, tools.ErrChecksum) {
			return nil, queue.Permanent(err)
		}
		return nil, err
	}
	log.add(fmt.Sprintf("installed %d tools in %s", len(done), time.Since(start).Round(time.Millisecond)))
	return maps.Clone(have), nil
}

// versionRE is what a recorded tool version may look like (Debian's "1:2.39.5-0+deb12u3" included).
var versionRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9.+:~_-]{0,127}$`)

// catalogOnly returns the entries of a VM's tool record that name catalog tools with a plausible version.
func catalogOnly(cat *tools.Catalog, have map[string]string) map[string]string {
	out := make(map[string]string, len(have))
	for name, version := range have {
		if _, err := cat.Tool(name); err == nil && versionRE.MatchString(version) {
			out[name] = version
		}
	}
	return out
}

// lockTools serialises the tool installs of one VM.
func (w *Worker) lockTools(vmID string) func() { return w.toolLocks.Lock(vmID) }
