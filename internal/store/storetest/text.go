package storetest

import (
	"encoding/json"
	"testing"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store"
)

// runText pins down text that PostgreSQL cannot hold (NUL, invalid UTF-8) and SQLite could: identifiers are
// refused, free-form text (errors, metadata, json documents) has the bad bytes replaced by U+FFFD, command output is
// kept byte for byte, and lookups by such text find nothing.
func runText(t *testing.T, open Opener) {
	st := open(t)
	ctx := t.Context()
	const bad = "a\x00b\xffc"
	const cleaned = "a\uFFFDb\uFFFDc"

	wantErr(t, "vm name with NUL", st.VMs().Create(ctx, &model.VM{OwnerID: "o", Name: "x\x00"}), model.ErrInvalidInput)
	wantErr(t, "vm owner not UTF-8", st.VMs().Create(ctx, &model.VM{OwnerID: "\xff", Name: "x"}), model.ErrInvalidInput)
	wantErr(t, "execution arg with NUL", st.Executions().Create(ctx,
		&model.Execution{VMID: newID(), Command: "echo", Args: []string{"a\x00"}}), model.ErrInvalidInput)
	wantErr(t, "job command with NUL", st.Jobs().Create(ctx,
		&model.Job{Commands: []model.JobCommand{{Command: "echo\x00"}}}), model.ErrInvalidInput)
	wantErr(t, "worker id with NUL", st.Workers().Upsert(ctx, &model.Worker{ID: "w\x00"}), model.ErrInvalidInput)

	vm := &model.VM{OwnerID: "o", Name: "ok", Error: bad, Metadata: map[string]string{"k": bad}}
	must(t, "vm with bad error text", st.VMs().Create(ctx, vm))
	if vm.Error != cleaned || vm.Metadata["k"] != cleaned {
		t.Fatalf("free-form text not cleaned: error %q, metadata %q", vm.Error, vm.Metadata["k"])
	}
	got, err := st.VMs().Get(ctx, vm.ID)
	must(t, "Get", err)
	same(t, "vm with cleaned text", *vm, *got)
	_, err = st.VMs().Update(ctx, vm.ID, func(v *model.VM) error { v.Error = "\x00"; return nil })
	must(t, "Update with bad error text", err)
	got, err = st.VMs().Get(ctx, vm.ID)
	must(t, "Get", err)
	if got.Error != "\uFFFD" {
		t.Fatalf("updated error %q", got.Error)
	}

	task := &model.Task{Type: model.TaskVMExecute, Error: bad,
		Payload: json.RawMessage("{\"s\":\"x\xffy\", \"lit\": \"\\\\u0000\"}"),
		Result:  json.RawMessage(`{"stdout":"a\u0000b"}`)}
	must(t, "task with NUL in its result", st.Tasks().Create(ctx, task))
	gotTask, err := st.Tasks().Get(ctx, task.ID)
	must(t, "Get", err)
	jsonEq(t, "payload", json.RawMessage(`{"s":"x\ufffdy","lit":"\\u0000"}`), gotTask.Payload)
	jsonEq(t, "result", json.RawMessage(`{"stdout":"a\ufffdb"}`), gotTask.Result)
	if gotTask.Error != cleaned {
		t.Fatalf("task error %q", gotTask.Error)
	}

	e := &model.Execution{VMID: newID(), Command: "cat", Stdout: bad, Stderr: "\x00", Error: bad}
	must(t, "execution with binary output", st.Executions().Create(ctx, e))
	gotExec, err := st.Executions().Get(ctx, e.ID)
	must(t, "Get", err)
	if gotExec.Stdout != bad || gotExec.Stderr != "\x00" || gotExec.Error != cleaned {
		t.Fatalf("execution text: stdout %q stderr %q error %q", gotExec.Stdout, gotExec.Stderr, gotExec.Error)
	}

	_, err = st.Workers().Get(ctx, "w\x00")
	wantErr(t, "Get worker by an id with NUL", err, model.ErrNotFound)
	wantErr(t, "Heartbeat of a worker id with NUL", st.Workers().Heartbeat(ctx, "w\x00", at(0)), model.ErrNotFound)
	_, err = st.APIKeys().GetByHash(ctx, "\xff")
	wantErr(t, "GetByHash with a hash that is no text", err, model.ErrNotFound)
	vms, err := st.VMs().List(ctx, store.VMFilter{OwnerID: "o\x00"})
	must(t, "List by an owner with NUL", err)
	sameIDs(t, "List by an owner with NUL", nil, idsOf(vms, func(v *model.VM) string { return v.ID }))
	tasks, err := st.Tasks().List(ctx, store.TaskFilter{TargetWorker: "\xff"})
	must(t, "List by a worker that is no text", err)
	sameIDs(t, "List by a worker that is no text", nil, taskIDs(tasks))
}
