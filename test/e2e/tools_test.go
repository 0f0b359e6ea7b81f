package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aetherium/aetherium/pkg/client"
)

// TestMicroVMTools: a VM from the default template (git, node, npm, bun, claude-code and curl baked in; built by
// scripts/test.sh, path in AETHERIUM_TEST_TOOLS_TEMPLATE) runs all of them through the REST API; a VM that asks
// for a tool the template lacks gets it installed at create, without network; an unknown tool is refused and
// leaves nothing.
func TestMicroVMTools(t *testing.T) {
	env := requireGuests(t)
	requireGuestPhase(t)
	tmpl := os.Getenv("AETHERIUM_TEST_TOOLS_TEMPLATE")
	requireService(t, "the default template with tools (AETHERIUM_TEST_TOOLS_TEMPLATE, made by scripts/test.sh)", tmpl != "", "unset")
	env = append(env, "AETHERIUM_ROOTFS_PATH="+tmpl)
	dataDir := shortDir(t)
	addr := freePort(t)
	p := start(t, "serve", append(serveEnv(dataDir, addr, "AETHERIUM_WORKER_ID=e2e-tools"), env...), "serve")
	waitHTTP(t, addr, p)
	c := newClient(t, addr, readLine(t, filepath.Join(dataDir, "admin-api-key")))
	waitReady(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	start := time.Now()
	vm, err := c.CreateVMAndWait(ctx, client.CreateVMRequest{Name: "baked", MemoryMB: 1024, Tools: []string{"git", "node", "bun", "claude-code", "curl"}})
	if err != nil || vm.Status != "running" {
		t.Fatalf("create from the default template: %+v %v", vm, err)
	}
	baked := time.Since(start)
	for _, tool := range []string{"git", "node", "npm", "bun", "claude-code", "curl"} {
		if vm.InstalledTools[tool] == "" {
			t.Errorf("installed_tools lacks %s: %v", tool, vm.InstalledTools)
		}
	}
	for _, cmd := range [][]string{{"git", "--version"}, {"node", "--version"}, {"npm", "--version"}, {"bun", "--version"}, {"claude", "--version"}, {"curl", "--version"}} {
		e, err := c.ExecAndWait(ctx, vm.ID, client.ExecuteRequest{Command: cmd[0], Args: cmd[1:]})
		if err != nil || e.ExitCode == nil || *e.ExitCode != 0 {
			t.Fatalf("%v: %+v %v", cmd, e, err)
		}
		t.Logf("%s: %s", strings.Join(cmd, " "), strings.TrimSpace(e.Stdout))
	}
	if _, err := c.DeleteVMAndWait(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}

	// jq is not in the template: installed at create (the host downloads the Debian package; the VM has no network).
	start = time.Now()
	vm, err = c.CreateVMAndWait(ctx, client.CreateVMRequest{Name: "extra", MemoryMB: 1024, Tools: []string{"jq"}})
	if err != nil || vm.Status != "running" {
		t.Fatalf("create with jq: %+v %v", vm, err)
	}
	installed := time.Since(start)
	if vm.InstalledTools["jq"] == "" {
		t.Fatalf("installed_tools lacks jq: %v", vm.InstalledTools)
	}
	e, err := c.ExecAndWait(ctx, vm.ID, client.ExecuteRequest{Command: "sh", Args: []string{"-c", `echo '{"a":[1,2]}' | jq -c .a`}})
	if err != nil || e.ExitCode == nil || *e.ExitCode != 0 || strings.TrimSpace(e.Stdout) != "[1,2]" {
		t.Fatalf("jq in the vm: %+v %v", e, err)
	}
	// Tools can be added to a running VM.
	acc, done, err := c.AddTools(ctx, vm.ID, client.AddToolsRequest{Tools: []string{"ripgrep"}}, 5*time.Minute)
	if err != nil || !done || acc.Task == nil || acc.Task.Status != "completed" {
		t.Fatalf("add ripgrep: %+v done=%v %v", acc, done, err)
	}
	if e, err := c.ExecAndWait(ctx, vm.ID, client.ExecuteRequest{Command: "rg", Args: []string{"--version"}}); err != nil || e.ExitCode == nil || *e.ExitCode != 0 {
		t.Fatalf("rg in the vm after adding it: %+v %v", e, err)
	}
	if got, err := c.GetVM(ctx, vm.ID); err != nil || got.InstalledTools["ripgrep"] == "" || got.InstalledTools["jq"] == "" {
		t.Fatalf("installed_tools after adding ripgrep: %+v %v", got, err)
	}
	if _, _, err := c.AddTools(ctx, vm.ID, client.AddToolsRequest{Tools: []string{"nosuchtool"}}, 0); !client.IsCode(err, client.CodeValidation) {
		t.Fatalf("adding an unknown tool: %v, want a validation error", err)
	}
	if _, err := c.DeleteVMAndWait(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	t.Logf("create to ready: tools baked %s, jq installed at create %s (ratio %.1f)", baked.Round(time.Millisecond),
		installed.Round(time.Millisecond), float64(installed)/float64(baked))

	// An unknown tool: refused before anything is made.
	_, err = c.CreateVM(ctx, client.CreateVMRequest{Name: "unknown", Tools: []string{"nosuchtool"}})
	if !client.IsCode(err, client.CodeValidation) || !strings.Contains(err.Error(), "nosuchtool") {
		t.Fatalf("unknown tool: %v, want a validation error naming it", err)
	}
	list, err := c.ListVMs(ctx, client.ListVMsOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range list.VMs {
		if v.Name == "unknown" {
			t.Fatalf("a vm was made for an unknown tool: %+v", v)
		}
	}
	assertNoGuests(t, dataDir)
}
