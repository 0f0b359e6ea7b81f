package api

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/aetherium/aetherium/pkg/client"
)

// bearerTransport adds an API key to every request, as an MCP client configured with a header does.
type bearerTransport struct{ key string }

func (b bearerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.key)
	return http.DefaultTransport.RoundTrip(r)
}

func mcpSession(t *testing.T, e *testEnv, key string) *mcp.ClientSession {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := mcp.NewClient(&mcp.Implementation{Name: "test", Version: "1"}, nil)
	s, err := c.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: e.srv.URL + "/api/v1/mcp",
		HTTPClient: &http.Client{Transport: bearerTransport{key}}, MaxRetries: -1}, nil)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func callTool(t *testing.T, s *mcp.ClientSession, name string, args map[string]any) *mcp.CallToolResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := s.CallTool(ctx, &mcp.CallToolParams{Name: name, Arguments: args})
	if err != nil {
		t.Fatalf("%s: protocol error %v (a tool failure must be a tool error)", name, err)
	}
	return res
}

func resultText(res *mcp.CallToolResult) string {
	var b strings.Builder
	for _, c := range res.Content {
		if tc, ok := c.(*mcp.TextContent); ok {
			b.WriteString(tc.Text)
		}
	}
	return b.String()
}

// TestMCPIsTheAPIAsTheCaller drives POST /api/v1/mcp with the SDK's own client over real HTTP: the endpoint needs
// a key like every route, and its tools see exactly what the key's owner sees through the REST API, because they
// call it, in process, with that key.
func TestMCPIsTheAPIAsTheCaller(t *testing.T) {
	e := newEnv(t, nil)

	// No key, a wrong key: the API's own 401 envelope, before any MCP.
	init := `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"x","version":"1"}}}`
	for _, key := range []string{"", "ae_not-a-key"} {
		r := e.call("POST", "/api/v1/mcp", key, init)
		if r.status != http.StatusUnauthorized || r.errCode() != client.CodeUnauthorized {
			t.Fatalf("initialize with key %q: %d %s", key, r.status, r.body)
		}
	}
	// The endpoint is stateless: GET (a standalone stream) is not served.
	if r := e.call("GET", "/api/v1/mcp", e.keyA, ""); r.status != http.StatusMethodNotAllowed {
		t.Fatalf("GET /mcp: %d %s", r.status, r.body)
	}

	// Alice has a VM (pending: no worker runs here); Bob has none.
	r := e.call("POST", "/api/v1/vms", e.keyA, `{"name":"alices"}`)
	if r.status != http.StatusAccepted {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	vm := decodeAs[client.VMAccepted](t, r).VM

	alice, bob := mcpSession(t, e, e.keyA), mcpSession(t, e, e.keyB)
	if got := alice.InitializeResult().ServerInfo.Name; got != "aetherium" {
		t.Fatalf("server name %q", got)
	}

	res := callTool(t, alice, "list_vms", nil)
	if res.IsError || !strings.Contains(resultText(res), vm.ID) {
		t.Fatalf("alice's list_vms does not show her VM: %s", resultText(res))
	}
	var list struct {
		VMs []struct{ ID, Name, Status string } `json:"vms"`
	}
	b, _ := json.Marshal(res.StructuredContent)
	if err := json.Unmarshal(b, &list); err != nil || len(list.VMs) != 1 || list.VMs[0].Name != "alices" {
		t.Fatalf("structured list_vms: %s (%v)", b, err)
	}
	res = callTool(t, bob, "list_vms", nil)
	if res.IsError || strings.Contains(resultText(res), vm.ID) {
		t.Fatalf("bob's list_vms: %s", resultText(res))
	}
	// Bob cannot reach Alice's VM by id or name: not found, as in the REST API.
	for _, ref := range []string{vm.ID, "alices"} {
		res = callTool(t, bob, "delete_vm", map[string]any{"vm": ref})
		if !res.IsError || resultText(res) != `delete vm: vm "`+ref+`" not found` && resultText(res) != `vm "`+ref+`" not found` {
			t.Fatalf("bob deleting alice's VM %s: isError=%v %q", ref, res.IsError, resultText(res))
		}
	}
	if got, _ := e.svc.GetVM(context.Background(), e.ownerA, vm.ID); got == nil || got.Status == "deleted" {
		t.Fatalf("alice's VM after bob's attempts: %+v", got)
	}
	// What the API refuses reaches the model as a readable tool error, and changes nothing.
	res = callTool(t, alice, "create_vm", map[string]any{"name": "8ac808b7-43b8-4c48-a0dc-e1a7c81960ba"})
	if !res.IsError || !strings.Contains(resultText(res), "must not look like a VM id") ||
		!strings.Contains(resultText(res), client.CodeValidation) {
		t.Fatalf("create_vm with a name like an id: %v %q", res.IsError, resultText(res))
	}
	res = callTool(t, alice, "get_run", map[string]any{"run_id": "00000000-0000-0000-0000-000000000000"})
	if !res.IsError || !strings.Contains(resultText(res), "not found") {
		t.Fatalf("get_run of a missing run: %v %q", res.IsError, resultText(res))
	}
	// An agent run: started (pending, as no worker runs here), then read back, by its owner only.
	var run struct {
		ID, Status string
		Done       bool
	}
	runArgs := map[string]any{"repo_url": "https://github.com/org/repo", "prompt": "fix the test"}
	if res = callTool(t, alice, "start_run", runArgs); !res.IsError || !strings.Contains(resultText(res), "secret ANTHROPIC_API_KEY does not exist") {
		t.Fatalf("start_run without the model key: %v %s", res.IsError, resultText(res))
	}
	if r := e.call("PUT", "/api/v1/secrets/ANTHROPIC_API_KEY", e.keyA, `{"value":"sk-ant-test"}`); r.status != http.StatusCreated {
		t.Fatalf("put secret: %d %s", r.status, r.body)
	}
	res = callTool(t, alice, "start_run", runArgs)
	b, _ = json.Marshal(res.StructuredContent)
	if res.IsError || json.Unmarshal(b, &run) != nil || run.ID == "" {
		t.Fatalf("start_run: %v %s", res.IsError, resultText(res))
	}
	res = callTool(t, alice, "get_run", map[string]any{"run_id": run.ID})
	b, _ = json.Marshal(res.StructuredContent)
	if res.IsError || json.Unmarshal(b, &run) != nil || run.Status != "pending" || run.Done {
		t.Fatalf("get_run: %v %s", res.IsError, resultText(res))
	}
	if res = callTool(t, bob, "get_run", map[string]any{"run_id": run.ID}); !res.IsError || resultText(res) != `run "`+run.ID+`" not found` {
		t.Fatalf("bob's get_run of alice's run: %v %s", res.IsError, resultText(res))
	}

	// The VM's console log is a resource; this server keeps no logs (no Loki), and says so.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := alice.ReadResource(ctx, &mcp.ReadResourceParams{URI: "aetherium://vms/" + vm.ID + "/logs"})
	if err == nil || !strings.Contains(err.Error(), "Loki") {
		t.Fatalf("logs without a log store: %v", err)
	}
	_, err = bob.ReadResource(ctx, &mcp.ReadResourceParams{URI: "aetherium://vms/" + vm.ID + "/logs"})
	if err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("bob reading alice's VM logs: %v", err)
	}

	// Every tool call was API requests of Alice's and Bob's, logged as theirs.
	logs := e.logs.String()
	if !strings.Contains(logs, `"method":"DELETE","path":"/api/v1/vms/`+vm.ID+`","status":404`) ||
		!strings.Contains(logs, `"owner_id":"`+e.ownerB+`"`) {
		t.Fatalf("the tools' API requests are not in the access log:\n%s", logs)
	}
}
