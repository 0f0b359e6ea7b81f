package api

import (
	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/secrets"
	"github.com/aetherium/aetherium/pkg/client"
)

// Converters from domain types to wire types. They decide what the API shows: owner ids, host paths and payloads
// stay inside; slices that the wire types do not mark omitempty are never null.

// ToVM converts a VM.
func ToVM(v *model.VM) client.VM {
	out := client.VM{
		ID:       v.ID,
		Name:     v.Name,
		Status:   string(v.Status),
		VCPUs:    v.VCPUCount,
		MemoryMB: v.MemoryMB,
		Image:    v.Image,
		WorkerID: v.WorkerID,
		Error:    v.Error,
		Metadata: v.Metadata,
		Network:  toVMNetwork(v.Network),
		Tools:    v.Tools,
		// Installed tools are shown as they are recorded.
		InstalledTools: v.InstalledTools,
		CreatedAt:      v.CreatedAt,
		UpdatedAt:      v.UpdatedAt,
		StartedAt:      v.StartedAt,
		StoppedAt:      v.StoppedAt,
	}
	if l := v.Lifetime; l != nil {
		out.TimeoutSeconds, out.ExpiresAt = l.TimeoutSeconds, l.ExpiresAt
		out.IdleTimeoutSeconds, out.OnIdle, out.LastActivityAt = l.IdleTimeoutSeconds, string(l.OnIdle), l.LastActivityAt
	}
	return out
}

func toVMNetwork(n *model.VMNetwork) *client.VMNetwork {
	if n == nil {
		return nil
	}
	return &client.VMNetwork{Egress: client.EgressPolicy(n.Egress), IP: n.IP, MAC: n.MAC, Gateway: n.Gateway}
}

// ToTask converts a task. Attempts counts runs so far: 0 before a worker first picks the task up, then
// retry_count+1.
func ToTask(t *model.Task) client.Task {
	attempts := 0
	if t.StartedAt != nil || t.Status == model.TaskProcessing {
		attempts = t.RetryCount + 1
	}
	return client.Task{
		ID:          t.ID,
		Type:        string(t.Type),
		Status:      string(t.Status),
		Priority:    string(t.Priority),
		VMID:        t.VMID,
		JobID:       t.JobID,
		WorkerID:    t.WorkerID,
		Result:      t.Result,
		Error:       t.Error,
		Attempts:    attempts,
		MaxRetries:  t.MaxRetries,
		CreatedAt:   t.CreatedAt,
		UpdatedAt:   t.UpdatedAt,
		ScheduledAt: t.ScheduledAt,
		StartedAt:   t.StartedAt,
		CompletedAt: t.CompletedAt,
	}
}

// ToExecution converts an execution.
func ToExecution(e *model.Execution) client.Execution {
	args := e.Args
	if args == nil {
		args = []string{}
	}
	return client.Execution{
		ID:              e.ID,
		VMID:            e.VMID,
		JobID:           e.JobID,
		TaskID:          e.TaskID,
		Status:          string(e.Status),
		Command:         e.Command,
		Args:            args,
		Env:             secrets.MaskEnv(e.Env),
		SecretEnv:       e.SecretEnv,
		WorkingDir:      e.WorkingDir,
		User:            e.User,
		ExitCode:        e.ExitCode,
		PeakMemoryKB:    e.PeakMemoryKB,
		Stdout:          e.Stdout,
		Stderr:          e.Stderr,
		StdoutTruncated: e.StdoutTruncated,
		StderrTruncated: e.StderrTruncated,
		TimedOut:        e.TimedOut,
		Error:           e.Error,
		WorkerID:        e.WorkerID,
		CreatedAt:       e.CreatedAt,
		StartedAt:       e.StartedAt,
		CompletedAt:     e.CompletedAt,
		DurationMS:      e.DurationMS,
	}
}

// ToJob converts a job and the executions it has run so far (in order).
func ToJob(j *model.Job, execs []*model.Execution) client.Job {
	cmds := make([]client.JobCommand, len(j.Commands))
	for i, c := range j.Commands {
		cmds[i] = client.JobCommand(c)
		cmds[i].Env = secrets.MaskEnv(c.Env)
	}
	out := client.Job{
		ID:            j.ID,
		VMID:          j.VMID,
		Status:        string(j.Status),
		TaskID:        j.TaskID,
		Commands:      cmds,
		StopOnError:   j.StopOnError,
		DeleteVMAfter: j.DeleteVMAfter,
		Error:         j.Error,
		Executions:    make([]client.Execution, 0, len(execs)),
		CreatedAt:     j.CreatedAt,
		UpdatedAt:     j.UpdatedAt,
		StartedAt:     j.StartedAt,
		CompletedAt:   j.CompletedAt,
	}
	for _, e := range execs {
		out.Executions = append(out.Executions, ToExecution(e))
	}
	return out
}
