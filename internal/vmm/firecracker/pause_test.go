//go:build linux

package firecracker

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/agent"
	"github.com/aetherium/aetherium/internal/vmm"
)

var _ vmm.Pauser = (*Backend)(nil)

// TestPauseResumeVM: PauseVM and ResumeVM send PATCH /vm with bodies the Firecracker API spec accepts (the fake
// validates every request against it), only when GET / says the VM is not already in that state, and Paused
// reads that state back.
func TestPauseResumeVM(t *testing.T) {
	e := newEnv(t, "")
	b := e.backend(t, nil)
	ctx := ctxT(t, 60*time.Second)
	const id = "vm-pause"
	if _, err := b.CreateVM(ctx, vmm.VMConfig{ID: id, VCPUs: 1, MemoryMB: 128}); err != nil {
		t.Fatal(err)
	}
	if err := b.PauseVM(ctx, id); !errors.Is(err, vmm.ErrNotRunning) {
		t.Fatalf("PauseVM of a vm never started: %v; want ErrNotRunning", err)
	}
	if err := b.StartVM(ctx, id); err != nil {
		t.Fatal(err)
	}
	booted := len(e.requests(t, id))

	for _, step := range []struct {
		name   string
		do     func() error
		paused bool
	}{
		{"pause", func() error { return b.PauseVM(ctx, id) }, true},
		{"pause again", func() error { return b.PauseVM(ctx, id) }, true},
		{"resume", func() error { return b.ResumeVM(ctx, id) }, false},
		{"resume again", func() error { return b.ResumeVM(ctx, id) }, false},
	} {
		if err := step.do(); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		if p, err := b.Paused(ctx, id); err != nil || p != step.paused {
			t.Fatalf("after %s: Paused = %v, %v; want %v", step.name, p, err, step.paused)
		}
	}
	var patches []string
	for _, r := range e.requests(t, id)[booted:] { // every request conforms to the spec, or requests fails the test
		if r.Status >= 300 {
			t.Errorf("%s %s answered %d", r.Method, r.Path, r.Status)
		}
		if r.Method == "PATCH" {
			if r.Path != "/vm" {
				t.Errorf("PATCH %s; want /vm", r.Path)
			}
			var body map[string]any
			if err := json.Unmarshal(r.Body, &body); err != nil || len(body) != 1 {
				t.Errorf("PATCH /vm body %s", r.Body)
			}
			patches = append(patches, body["state"].(string))
		}
	}
	// The second pause and the second resume found the VM in that state already and sent nothing.
	if len(patches) != 2 || patches[0] != "Paused" || patches[1] != "Resumed" {
		t.Fatalf("PATCH /vm states %v; want [Paused Resumed]", patches)
	}
	// The agent answers again after the resume.
	if _, err := b.ExecuteCommand(ctx, id, agent.ExecRequest{Argv: []string{"true"}}); err != nil {
		t.Fatalf("exec after resume: %v", err)
	}
	if err := b.DeleteVM(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := b.ResumeVM(ctx, id); !errors.Is(err, vmm.ErrNotFound) {
		t.Fatalf("ResumeVM of a deleted vm: %v; want ErrNotFound", err)
	}
}
