//go:build linux

package e2e

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/credproxy/anthropictest"
	"github.com/aetherium/aetherium/pkg/client"
)

// TestMicroVMModelProxy: serve in a network namespace with QEMU and the VM network on; a VM of the default
// template asks the credential proxy on its gateway for the model list and a streamed message with its proxy
// token, the proxy forwards them to a scripted model API on the host side of the veth with the owner's
// ANTHROPIC_API_KEY secret (the guest never holds it), and the guest gets the answers. Deleting the VM leaves no
// QEMU process, disk or TAP.
func TestMicroVMModelProxy(t *testing.T) {
	requireGuestPhase(t)
	tmpl := os.Getenv("AETHERIUM_TEST_TOOLS_TEMPLATE")
	requireService(t, "the default template with tools (AETHERIUM_TEST_TOOLS_TEMPLATE, made by scripts/test.sh)", tmpl != "", "unset")
	ns := newNetNS(t)
	const ownerKey = "sk-ant-owner-e2e-0123456789"
	model := anthropictest.New(anthropictest.Script{APIKey: ownerKey, Model: "claude-e2e-1",
		Usage: anthropictest.Usage{InputTokens: 42, OutputTokens: 7}})
	upstream := ns.serveHost(t, model)

	dataDir := shortDir(t)
	addr, _ := serveInNetNS(t, ns, dataDir, "e2e-modelproxy",
		"AETHERIUM_ROOTFS_PATH="+tmpl, "AETHERIUM_MODEL_UPSTREAM_URL="+upstream)
	c := newClient(t, addr, readLine(t, filepath.Join(dataDir, "admin-api-key")))
	waitReady(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if _, _, err := c.PutSecret(ctx, "ANTHROPIC_API_KEY", ownerKey); err != nil {
		t.Fatalf("put the owner's ANTHROPIC_API_KEY: %v", err)
	}

	vm, err := c.CreateVMAndWait(ctx, client.CreateVMRequest{Name: "proxied", MemoryMB: 1024})
	if err != nil || vm.Status != "running" {
		t.Fatalf("create: %+v %v", vm, err)
	}
	if taps := ns.tapsIn(t); len(taps) != 1 {
		t.Errorf("TAPs in the namespace with one VM: %v", taps)
	}
	proxied := map[string]string{"AETHERIUM_MODEL_PROXY": "1"}
	e, err := c.ExecAndWait(ctx, vm.ID, client.ExecuteRequest{Command: "sh", Env: proxied, Args: []string{"-c",
		`echo "base=$ANTHROPIC_BASE_URL"; env | grep -c '^ANTHROPIC_API_KEY=' ; ` +
			`curl -sS --fail-with-body "$ANTHROPIC_BASE_URL/v1/models" -H "authorization: Bearer $ANTHROPIC_AUTH_TOKEN"`}})
	if err != nil || e.ExitCode == nil || *e.ExitCode != 0 {
		t.Fatalf("curl the models through the proxy: %+v %v", e, err)
	}
	lines := strings.SplitN(e.Stdout, "\n", 3)
	if len(lines) != 3 || lines[0] != "base=http://172.16.0.1:8091/anthropic" || lines[1] != "0" {
		t.Fatalf("guest env and answer: %q (stderr %q)", e.Stdout, e.Stderr)
	}
	var models struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if err := json.Unmarshal([]byte(lines[2]), &models); err != nil || len(models.Data) != 1 || models.Data[0].ID != "claude-e2e-1" {
		t.Fatalf("models answer in the guest: %q %v (stderr %q)", lines[2], err, e.Stderr)
	}

	// A streamed message, the way claude-code asks (x-api-key carrying the proxy token this time).
	body := `{"model":"claude-e2e-1","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}`
	e, err = c.ExecAndWait(ctx, vm.ID, client.ExecuteRequest{Command: "sh", Env: proxied, Args: []string{"-c",
		`curl -sS -N --fail-with-body "$ANTHROPIC_BASE_URL/v1/messages" -H "x-api-key: $ANTHROPIC_AUTH_TOKEN" ` +
			`-H 'anthropic-version: 2023-06-01' -H 'content-type: application/json' -d '` + body + `'`}})
	if err != nil || e.ExitCode == nil || *e.ExitCode != 0 {
		t.Fatalf("stream a message through the proxy: %+v %v", e, err)
	}
	for _, want := range []string{"event: message_start", `"input_tokens":42`, `"text":"OK"`, `"output_tokens":7`, "event: message_stop"} {
		if !strings.Contains(e.Stdout, want) {
			t.Errorf("the guest's stream lacks %s:\n%s", want, e.Stdout)
		}
	}

	reqs := model.Requests()
	if len(reqs) != 2 {
		t.Fatalf("the upstream saw %d requests, want 2: %+v", len(reqs), reqs)
	}
	for _, r := range reqs {
		if r.Header.Get("x-api-key") != ownerKey || r.Header.Get("Authorization") != "" {
			t.Errorf("%s %s reached the upstream with x-api-key %q, authorization %q: want the owner's key only",
				r.Method, r.Path, r.Header.Get("x-api-key"), r.Header.Get("Authorization"))
		}
	}
	if reqs[0].Method != "GET" || reqs[0].Path != "/v1/models" || reqs[1].Path != "/v1/messages" || reqs[1].Turn != anthropictest.SideRequest {
		t.Errorf("upstream requests: %s %s, %s %s", reqs[0].Method, reqs[0].Path, reqs[1].Method, reqs[1].Path)
	}

	if _, err := c.DeleteVMAndWait(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	assertNoGuests(t, dataDir)
	if taps := ns.tapsIn(t); len(taps) != 0 {
		t.Errorf("TAPs left in the namespace after delete: %v", taps)
	}
}
