package api

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/queue"
	"github.com/aetherium/aetherium/internal/task"
	"github.com/aetherium/aetherium/pkg/client"
)

// startFakeWorker consumes the embedded queue as worker testWorkerID with handlers that do to the store what a
// real worker does, without a VM backend: creating marks the VM running (or failed, for names starting "fail-"),
// executing records an exit code and output, deleting marks the VM deleted. The real worker is covered by the
// end-to-end tests; this exercises the API's ?wait answers against the real queue, store and event bus.
func (e *testEnv) startFakeWorker() {
	e.t.Helper()
	st := e.st
	e.registerWorker(testWorkerID)
	e.q.RegisterHandler(model.TaskVMCreate, func(ctx context.Context, t *model.Task) (json.RawMessage, error) {
		var p task.VMPayload
		if err := json.Unmarshal(t.Payload, &p); err != nil {
			return nil, queue.Permanent(err)
		}
		vm, err := st.VMs().Get(ctx, p.VMID)
		if err != nil {
			return nil, err
		}
		if strings.HasPrefix(vm.Name, "fail-") {
			if _, err := st.VMs().Update(ctx, p.VMID, func(v *model.VM) error {
				v.Status, v.Error = model.VMFailed, "image not found"
				return nil
			}); err != nil {
				return nil, err
			}
			return nil, queue.Permanent(errors.New("create vm: image not found"))
		}
		for _, next := range []model.VMStatus{model.VMCreating, model.VMRunning} {
			if _, err := st.VMs().Update(ctx, p.VMID, func(v *model.VM) error {
				v.Status, v.WorkerID = next, testWorkerID
				if next == model.VMRunning {
					now := time.Now().UTC()
					v.StartedAt = &now
				}
				return nil
			}); err != nil {
				return nil, err
			}
		}
		return json.Marshal(task.VMResult{VMID: p.VMID, Status: model.VMRunning})
	})
	e.q.RegisterHandler(model.TaskVMExecute, func(ctx context.Context, t *model.Task) (json.RawMessage, error) {
		var p task.ExecutePayload
		if err := json.Unmarshal(t.Payload, &p); err != nil {
			return nil, queue.Permanent(err)
		}
		code, dur := 3, int64(7)
		_, err := st.Executions().Update(ctx, p.ExecutionID, func(x *model.Execution) error {
			now := time.Now().UTC()
			x.Status, x.ExitCode, x.DurationMS, x.WorkerID = model.ExecutionCompleted, &code, &dur, testWorkerID
			x.Stdout, x.Stderr = x.Command+" "+strings.Join(x.Args, " ")+"\n", "warning\n"
			x.StartedAt, x.CompletedAt = &now, &now
			return nil
		})
		if err != nil {
			return nil, err
		}
		return json.Marshal(task.ExecuteResult{ExecutionID: p.ExecutionID, ExitCode: code})
	})
	e.q.RegisterHandler(model.TaskJobRun, func(ctx context.Context, t *model.Task) (json.RawMessage, error) {
		var p task.JobPayload
		if err := json.Unmarshal(t.Payload, &p); err != nil {
			return nil, queue.Permanent(err)
		}
		j, err := st.Jobs().Get(ctx, p.JobID)
		if err != nil {
			return nil, err
		}
		for i := range j.Commands {
			x := task.NewJobExecution(j, j.VMID, i)
			code := i
			now := time.Now().UTC()
			x.Status, x.ExitCode, x.Stdout, x.StartedAt, x.CompletedAt = model.ExecutionCompleted, &code, x.Command+"\n", &now, &now
			if err := st.Executions().Create(ctx, x); err != nil {
				return nil, err
			}
		}
		if _, err := st.Jobs().Update(ctx, p.JobID, func(j *model.Job) error {
			now := time.Now().UTC()
			j.Status, j.StartedAt, j.CompletedAt = model.JobCompleted, &now, &now
			return nil
		}); err != nil {
			return nil, err
		}
		return json.Marshal(task.JobResult{JobID: p.JobID, Status: model.JobCompleted})
	})
	e.q.RegisterHandler(model.TaskVMDelete, func(ctx context.Context, t *model.Task) (json.RawMessage, error) {
		var p task.VMPayload
		if err := json.Unmarshal(t.Payload, &p); err != nil {
			return nil, queue.Permanent(err)
		}
		for _, next := range []model.VMStatus{model.VMStopping, model.VMDeleted} {
			if _, err := st.VMs().Update(ctx, p.VMID, func(v *model.VM) error { v.Status = next; return nil }); err != nil {
				return nil, err
			}
		}
		return json.Marshal(task.VMResult{VMID: p.VMID, Status: model.VMDeleted})
	})
	if err := e.q.Start(context.Background()); err != nil {
		e.t.Fatal(err)
	}
}

func TestWaitOutcomes(t *testing.T) {
	e := newEnv(t, nil)
	e.startFakeWorker()

	// Created in time: 201 with the running VM and the completed task.
	r := e.call("POST", "/api/v1/vms?wait=30s", e.keyA, `{"name":"box"}`)
	if r.status != http.StatusCreated {
		t.Fatalf("create and wait: %d %s", r.status, r.body)
	}
	vm := decodeAs[client.VMAccepted](t, r)
	if vm.VM.Status != "running" || vm.VM.WorkerID != testWorkerID || vm.VM.StartedAt == nil || vm.Task == nil ||
		vm.Task.Status != "completed" || vm.Task.Attempts != 1 || vm.Task.ID != vm.TaskID || vm.Task.CompletedAt == nil ||
		!strings.Contains(string(vm.Task.Result), `"running"`) {
		t.Fatalf("created vm: %s", r.body)
	}

	// Creation failed: the call succeeded (200), and both the task and the VM say failed and why.
	r = e.call("POST", "/api/v1/vms?wait=30s", e.keyA, `{"name":"fail-1"}`)
	if r.status != http.StatusOK {
		t.Fatalf("failing create and wait: %d %s", r.status, r.body)
	}
	failed := decodeAs[client.VMAccepted](t, r)
	if failed.Task == nil || failed.Task.Status != "failed" || !strings.Contains(failed.Task.Error, "image not found") ||
		failed.VM.Status != "failed" || failed.VM.Error != "image not found" {
		t.Fatalf("failed vm: %s", r.body)
	}

	// Execute and wait: 200 with the finished execution; a non-zero exit is a result, not an error.
	path := "/api/v1/vms/" + vm.VM.ID
	r = e.call("POST", path+"/execute?wait=30s", e.keyA, `{"command":"echo","args":["hi","there"],"env":{"A":"1"}}`)
	if r.status != http.StatusOK {
		t.Fatalf("execute and wait: %d %s", r.status, r.body)
	}
	ex := decodeAs[client.ExecuteAccepted](t, r)
	if ex.Execution == nil || ex.Execution.ID != ex.ExecutionID || ex.Execution.TaskID != ex.TaskID ||
		ex.Execution.Status != "completed" || ex.Execution.ExitCode == nil || *ex.Execution.ExitCode != 3 ||
		ex.Execution.Stdout != "echo hi there\n" || ex.Execution.Stderr != "warning\n" || ex.Execution.Env["A"] != "1" {
		t.Fatalf("execution: %s", r.body)
	}
	got := decodeAs[client.Execution](t, e.call("GET", "/api/v1/executions/"+ex.ExecutionID, e.keyA, ""))
	if got.ID != ex.ExecutionID || *got.ExitCode != 3 || got.VMID != vm.VM.ID {
		t.Fatalf("get execution: %+v", got)
	}

	// Without wait: 202 with ids only.
	r = e.call("POST", path+"/execute", e.keyA, `{"command":"true"}`)
	if r.status != http.StatusAccepted {
		t.Fatalf("execute: %d %s", r.status, r.body)
	}
	if a := decodeAs[client.ExecuteAccepted](t, r); !uuidRE.MatchString(a.TaskID) || !uuidRE.MatchString(a.ExecutionID) ||
		a.Execution != nil {
		t.Fatalf("execute accepted: %s", r.body)
	}
	// Wait for it through the task (bounded), so the list below is stable.
	secondTask := decodeAs[client.ExecuteAccepted](t, r).TaskID
	if _, err := e.svc.WaitTask(context.Background(), e.ownerA, secondTask, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	list := decodeAs[client.ExecutionList](t, e.call("GET", path+"/executions", e.keyA, ""))
	if len(list.Executions) != 2 || list.Executions[1].ID != ex.ExecutionID || list.Executions[0].Command != "true" {
		t.Fatalf("executions: %+v", list)
	}

	// A job on the running VM, waited for: 200 with the job and its executions in command order.
	r = e.call("POST", "/api/v1/jobs?wait=30s", e.keyA,
		`{"vm_id":"`+vm.VM.ID+`","commands":[{"command":"first"},{"command":"second","args":["x"]}],"stop_on_error":true}`)
	if r.status != http.StatusOK {
		t.Fatalf("job and wait: %d %s", r.status, r.body)
	}
	ja := decodeAs[client.JobAccepted](t, r)
	if ja.Job == nil || ja.Job.ID != ja.JobID || ja.Job.TaskID != ja.TaskID || ja.Job.Status != "completed" ||
		!ja.Job.StopOnError || len(ja.Job.Executions) != 2 || ja.Job.Executions[0].Command != "first" ||
		*ja.Job.Executions[1].ExitCode != 1 || ja.Job.Commands[1].Args[0] != "x" {
		t.Fatalf("job: %s", r.body)
	}
	job := decodeAs[client.Job](t, e.call("GET", "/api/v1/jobs/"+ja.JobID, e.keyA, ""))
	if job.Status != "completed" || len(job.Executions) != 2 || job.Executions[1].Stdout != "second\n" {
		t.Fatalf("get job: %+v", job)
	}
	// Bob sees none of it.
	if r := e.call("GET", "/api/v1/jobs/"+ja.JobID, e.keyB, ""); r.status != http.StatusNotFound {
		t.Fatalf("bob reads alice's job: %d", r.status)
	}
	if r := e.call("GET", "/api/v1/executions/"+ex.ExecutionID, e.keyB, ""); r.status != http.StatusNotFound {
		t.Fatalf("bob reads alice's execution: %d", r.status)
	}

	// Delete and wait: 200 with the finished task; the VM is gone.
	r = e.call("DELETE", path+"?wait=30s", e.keyA, "")
	if r.status != http.StatusOK {
		t.Fatalf("delete and wait: %d %s", r.status, r.body)
	}
	if d := decodeAs[client.TaskAccepted](t, r); d.Task == nil || d.Task.Status != "completed" || d.Task.Type != "vm:delete" {
		t.Fatalf("delete: %s", r.body)
	}
	if v := decodeAs[client.VM](t, e.call("GET", path, e.keyA, "")); v.Status != "deleted" {
		t.Fatalf("vm after delete: %+v", v)
	}
	if r := e.call("POST", path+"/execute", e.keyA, `{"command":"true"}`); r.status != http.StatusConflict ||
		r.errCode() != client.CodeVMNotRunning {
		t.Fatalf("execute on a deleted vm: %d %s", r.status, r.body)
	}
}
