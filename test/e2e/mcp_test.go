package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

type bearer struct{ key string }

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.key)
	return http.DefaultTransport.RoundTrip(r)
}

// mcpCall calls a tool and decodes its structured result into out (nil: not decoded). It fails the test on a
// protocol error; a tool error is returned for the caller to check.
func mcpCall(t *testing.T, ctx context.Context, s *mcp.ClientSession, name string, args map[string]any, out any) *mcp.CallToolResult {
	t.Helper()
	res, err := s.CallTool(ctx, &mcp.CallToolParams{Name: name, Arguments: args})
	if err != nil {
		t.Fatalf("%s: protocol error: %v", name, err)
	}
	if out != nil && !res.IsError {
		b, _ := json.Marshal(res.StructuredContent)
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s: structured result %s: %v", name, b, err)
		}
	}
	return res
}

func mcpText(res *mcp.CallToolResult) string {
	var b strings.Builder
	for _, c := range res.Content {
		if tc, ok := c.(*mcp.TextContent); ok {
			b.WriteString(tc.Text)
		}
	}
	return b.String()
}

// TestMCP drives Aetherium's MCP server with the Go SDK's own client against a real `aetherium serve` on the
// Docker backend, over both transports: the gateway's streamable HTTP endpoint (/api/v1/mcp) for a VM's whole
// life, and `aetherium mcp` on stdio (the built binary, as claude-code starts it) on the same VM.
func TestMCP(t *testing.T) {
	requireDocker(t)
	dataDir := t.TempDir()
	addr := freePort(t)
	workerID := "e2e-mcp"
	removeWorkerContainers(t, workerID)
	p := start(t, "serve", serveEnv(dataDir, addr, "AETHERIUM_WORKER_ID="+workerID), "serve")
	waitHTTP(t, addr, p)
	key := readLine(t, filepath.Join(dataDir, "admin-api-key"))
	waitReady(t, newClient(t, addr, key))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// Streamable HTTP, the key in a header as an MCP client's config puts it.
	hs, err := mcp.NewClient(&mcp.Implementation{Name: "e2e", Version: "1"}, nil).Connect(ctx,
		&mcp.StreamableClientTransport{Endpoint: "http://" + addr + "/api/v1/mcp",
			HTTPClient: &http.Client{Transport: bearer{key}}, MaxRetries: -1}, nil)
	if err != nil {
		t.Fatalf("initialize over HTTP: %v", err)
	}
	defer hs.Close()
	if ir := hs.InitializeResult(); ir.ServerInfo.Name != "aetherium" || ir.Capabilities.Tools == nil || ir.Instructions == "" {
		t.Fatalf("initialize: %+v", ir)
	}
	tl, err := hs.ListTools(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	schemas := map[string]string{}
	for _, tool := range tl.Tools {
		b, _ := json.Marshal(tool.InputSchema)
		schemas[tool.Name] = string(b)
	}
	for _, name := range []string{"create_vm", "list_vms", "exec", "read_file", "write_file", "list_dir", "delete_vm", "start_run", "get_run"} {
		if !strings.Contains(schemas[name], `"additionalProperties":false`) {
			t.Errorf("tool %s missing or its schema is not closed: %s", name, schemas[name])
		}
	}
	if !strings.Contains(schemas["exec"], `"required":["vm"]`) || !strings.Contains(schemas["exec"], `"maximum":3600`) {
		t.Errorf("exec schema: %s", schemas["exec"])
	}

	start := time.Now()
	var vm struct{ ID, Name, Status string }
	if res := mcpCall(t, ctx, hs, "create_vm", map[string]any{"name": "mcp-box"}, &vm); res.IsError || vm.Status != "running" {
		t.Fatalf("create_vm: %s", mcpText(res))
	}
	t.Logf("create_vm over MCP: %s", time.Since(start))
	defer func() { // a failed test must not leave the VM
		_, _ = hs.CallTool(context.Background(), &mcp.CallToolParams{Name: "delete_vm", Arguments: map[string]any{"vm": vm.ID}})
	}()

	type execOut struct {
		ExitCode        *int   `json:"exit_code"`
		Stdout          string `json:"stdout"`
		Stderr          string `json:"stderr"`
		StdoutTruncated bool   `json:"stdout_truncated"`
		TimedOut        bool   `json:"timed_out"`
	}
	var ex execOut
	start = time.Now()
	res := mcpCall(t, ctx, hs, "exec", map[string]any{"vm": "mcp-box", "command": "echo", "args": []string{"hello", "mcp"}}, &ex)
	if res.IsError || ex.ExitCode == nil || *ex.ExitCode != 0 || ex.Stdout != "hello mcp\n" {
		t.Fatalf("exec echo: %s", mcpText(res))
	}
	t.Logf("exec over MCP: %s", time.Since(start))
	res = mcpCall(t, ctx, hs, "exec", map[string]any{"vm": vm.ID, "shell": "seq 1 100000; exit 3", "max_output_bytes": 100}, &ex)
	if res.IsError || ex.ExitCode == nil || *ex.ExitCode != 3 || len(ex.Stdout) != 100 || !ex.StdoutTruncated ||
		!strings.HasPrefix(ex.Stdout, "1\n2\n3\n") {
		t.Fatalf("exec with a bounded output and exit 3: %s", mcpText(res))
	}
	res = mcpCall(t, ctx, hs, "exec", map[string]any{"vm": vm.ID, "command": "sleep", "args": []string{"30"}, "timeout_seconds": 1}, &ex)
	if res.IsError || !ex.TimedOut {
		t.Fatalf("exec past its timeout: %s", mcpText(res))
	}

	content := "line one\nünïcödé ✓\n"
	var fi struct{ Path, Type, Mode string }
	if res := mcpCall(t, ctx, hs, "write_file", map[string]any{"vm": vm.ID, "path": "/tmp/mcp/dir/note.txt", "content": content,
		"mode": "0640", "create_parents": true}, &fi); res.IsError || fi.Mode != "0640" || fi.Type != "file" {
		t.Fatalf("write_file: %s", mcpText(res))
	}
	if res := mcpCall(t, ctx, hs, "write_file", map[string]any{"vm": vm.ID, "path": "/tmp/mcp/dir/bin",
		"content": "AAEC/w==", "encoding": "base64"}, nil); res.IsError {
		t.Fatalf("write_file base64: %s", mcpText(res))
	}
	var rf struct {
		Content       string `json:"content"`
		ContentBase64 string `json:"content_base64"`
		Size          int64  `json:"size"`
		Truncated     bool   `json:"truncated"`
	}
	rfIn := func(path string, max int) map[string]any {
		return map[string]any{"vm": vm.ID, "path": path, "max_bytes": max}
	}
	if res := mcpCall(t, ctx, hs, "read_file", rfIn("/tmp/mcp/dir/note.txt", 4096), &rf); res.IsError || rf.Content != content ||
		rf.Truncated || rf.Size != int64(len(content)) {
		t.Fatalf("read_file: %s", mcpText(res))
	}
	if res := mcpCall(t, ctx, hs, "read_file", rfIn("/tmp/mcp/dir/note.txt", 4), &rf); res.IsError || rf.Content != "line" || !rf.Truncated {
		t.Fatalf("read_file bounded: %s", mcpText(res))
	}
	rf.Content = ""
	if res := mcpCall(t, ctx, hs, "read_file", rfIn("/tmp/mcp/dir/bin", 100), &rf); res.IsError || rf.ContentBase64 != "AAEC/w==" || rf.Content != "" {
		t.Fatalf("read_file of binary: %s", mcpText(res))
	}
	var ld struct {
		Entries []struct{ Name, Type string } `json:"entries"`
	}
	if res := mcpCall(t, ctx, hs, "list_dir", map[string]any{"vm": vm.ID, "path": "/tmp/mcp/dir"}, &ld); res.IsError ||
		len(ld.Entries) != 2 || ld.Entries[0].Name != "bin" || ld.Entries[1].Name != "note.txt" {
		t.Fatalf("list_dir: %s", mcpText(res))
	}
	// Failures are tool errors a model can read.
	if res := mcpCall(t, ctx, hs, "read_file", rfIn("/tmp/mcp/nope", 10), nil); !res.IsError || !strings.Contains(mcpText(res), "path_not_found") {
		t.Fatalf("read_file of a missing file: %v %s", res.IsError, mcpText(res))
	}
	if res := mcpCall(t, ctx, hs, "exec", map[string]any{"vm": "no-such-vm", "command": "true"}, nil); !res.IsError ||
		mcpText(res) != `vm "no-such-vm" not found` {
		t.Fatalf("exec in a missing VM: %v %s", res.IsError, mcpText(res))
	}
	if res := mcpCall(t, ctx, hs, "exec", map[string]any{"vm": vm.ID, "command": "true", "timeout_seconds": "soon"}, nil); !res.IsError ||
		!strings.Contains(mcpText(res), "timeout_seconds") {
		t.Fatalf("exec with a bad argument: %v %s", res.IsError, mcpText(res))
	}

	// stdio: the built `aetherium mcp`, configured by the environment, on the same VM.
	cmd := exec.Command(filepath.Join(binDir, "aetherium"), "mcp")
	cmd.Env = []string{"AETHERIUM_SERVER=http://" + addr, "AETHERIUM_API_KEY=" + key, "HOME=" + t.TempDir()}
	ss, err := mcp.NewClient(&mcp.Implementation{Name: "e2e-stdio", Version: "1"}, nil).Connect(ctx,
		&mcp.CommandTransport{Command: cmd}, nil)
	if err != nil {
		t.Fatalf("initialize over stdio: %v", err)
	}
	var lv struct {
		VMs []struct{ ID, Name, Status string } `json:"vms"`
	}
	if res := mcpCall(t, ctx, ss, "list_vms", map[string]any{"status": []string{"running"}}, &lv); res.IsError ||
		len(lv.VMs) != 1 || lv.VMs[0].ID != vm.ID {
		t.Fatalf("list_vms over stdio: %s", mcpText(res))
	}
	if res := mcpCall(t, ctx, ss, "exec", map[string]any{"vm": "mcp-box", "shell": "cat /tmp/mcp/dir/note.txt | wc -l"}, &ex); res.IsError ||
		strings.TrimSpace(ex.Stdout) != "2" {
		t.Fatalf("exec over stdio: %s", mcpText(res))
	}
	if err := ss.Close(); err != nil {
		t.Errorf("closing the stdio server: %v", err)
	}
	if cmd.ProcessState == nil || !cmd.ProcessState.Success() {
		t.Errorf("aetherium mcp did not exit cleanly when its stdin closed: %v", cmd.ProcessState)
	}

	var del struct{ Deleted bool }
	if res := mcpCall(t, ctx, hs, "delete_vm", map[string]any{"vm": vm.ID}, &del); res.IsError || !del.Deleted {
		t.Fatalf("delete_vm: %s", mcpText(res))
	}
	if ids := containersOf(t, vm.ID); len(ids) != 0 {
		t.Fatalf("containers left after delete_vm: %v", ids)
	}
	if res := mcpCall(t, ctx, hs, "list_dir", map[string]any{"vm": vm.ID, "path": "/"}, nil); !res.IsError {
		t.Fatalf("list_dir of a deleted VM: %s", mcpText(res))
	}
}
