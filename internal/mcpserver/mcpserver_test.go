package mcpserver

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/aetherium/aetherium/pkg/client"
)

// session connects the SDK's client to a server over in-memory transports. api points at a closed port: the
// tests here are about what is refused before any API call (a call that got through would fail with a
// connection error, which the tests would see instead of the message they expect).
func session(t *testing.T) *mcp.ClientSession {
	t.Helper()
	api, err := client.New("http://127.0.0.1:1", "ae_test")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	st, ct := mcp.NewInMemoryTransports()
	ss, err := New(api, Options{Version: "test"}).Connect(ctx, st, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ss.Close() })
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "test", Version: "1"}, nil).Connect(ctx, ct, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cs.Close() })
	return cs
}

type schema struct {
	Type                 string            `json:"type"`
	Required             []string          `json:"required"`
	Properties           map[string]schema `json:"properties"`
	AdditionalProperties *json.RawMessage  `json:"additionalProperties"`
	Description          string            `json:"description"`
	Minimum              *float64          `json:"minimum"`
	Maximum              *float64          `json:"maximum"`
	Pattern              string            `json:"pattern"`
	Enum                 []any             `json:"enum"`
	Items                *schema           `json:"items"`
}

// TestToolSchemasAreStrict checks what a model is shown: every tool, with an object schema that refuses unknown
// fields, names its required fields, describes every property, and bounds the numbers.
func TestToolSchemasAreStrict(t *testing.T) {
	cs := session(t)
	res, err := cs.ListTools(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{
		"create_vm": {"name"}, "list_vms": nil, "exec": {"vm"}, "read_file": {"vm", "path"},
		"write_file": {"vm", "path", "content"}, "list_dir": {"vm", "path"}, "delete_vm": {"vm"},
		"start_run": {"repo_url", "prompt"}, "get_run": {"run_id"},
	}
	var names []string
	for _, tool := range res.Tools {
		names = append(names, tool.Name)
		b, _ := json.Marshal(tool.InputSchema)
		var s schema
		if err := json.Unmarshal(b, &s); err != nil {
			t.Fatalf("%s: %v", tool.Name, err)
		}
		if s.Type != "object" || s.AdditionalProperties == nil || string(*s.AdditionalProperties) != "false" {
			t.Errorf("%s: schema is not a closed object: %s", tool.Name, b)
		}
		req := slices.Clone(s.Required)
		slices.Sort(req)
		w := slices.Clone(want[tool.Name])
		slices.Sort(w)
		if !slices.Equal(req, w) {
			t.Errorf("%s: required %v, want %v", tool.Name, s.Required, want[tool.Name])
		}
		if tool.Description == "" || tool.OutputSchema == nil {
			t.Errorf("%s: no description or output schema", tool.Name)
		}
		for name, p := range s.Properties {
			if p.Description == "" {
				t.Errorf("%s.%s has no description", tool.Name, name)
			}
			if p.Type == "integer" && (p.Minimum == nil || p.Maximum == nil) {
				t.Errorf("%s.%s is an unbounded integer", tool.Name, name)
			}
		}
	}
	slices.Sort(names)
	if len(names) != len(want) {
		t.Fatalf("tools %v, want %d", names, len(want))
	}
	if p := mustProp(t, res, "exec", "timeout_seconds"); *p.Minimum != 1 || *p.Maximum != MaxExecTimeout {
		t.Errorf("exec.timeout_seconds bounds %v..%v", *p.Minimum, *p.Maximum)
	}
	if p := mustProp(t, res, "write_file", "encoding"); len(p.Enum) != 2 {
		t.Errorf("write_file.encoding enum %v", p.Enum)
	}

	tr, err := cs.ListResourceTemplates(context.Background(), nil)
	if err != nil || len(tr.ResourceTemplates) != 1 || tr.ResourceTemplates[0].URITemplate != "aetherium://vms/{id}/logs" {
		t.Fatalf("resource templates: %+v %v", tr, err)
	}
}

func mustProp(t *testing.T, res *mcp.ListToolsResult, tool, prop string) schema {
	t.Helper()
	for _, tl := range res.Tools {
		if tl.Name == tool {
			b, _ := json.Marshal(tl.InputSchema)
			var s schema
			_ = json.Unmarshal(b, &s)
			return s.Properties[prop]
		}
	}
	t.Fatalf("no tool %s", tool)
	return schema{}
}

// TestBadArgumentsAreToolErrors: whatever a model sends, the answer is a tool result with isError and a message
// that says what is wrong, never a protocol error, and nothing reaches the API.
func TestBadArgumentsAreToolErrors(t *testing.T) {
	cs := session(t)
	cases := []struct {
		tool string
		args any
		want string
	}{
		{"exec", map[string]any{}, `missing properties: ["vm"]`},
		{"exec", map[string]any{"vm": "x", "command": "ls", "shell": "ls"}, "not both"},
		{"exec", map[string]any{"vm": "x"}, "give command"},
		{"exec", map[string]any{"vm": "x", "shell": "ls", "args": []string{"-l"}}, "args go with command"},
		{"exec", map[string]any{"vm": "x", "command": "ls", "timeout_seconds": 0}, "minimum"},
		{"exec", map[string]any{"vm": "x", "command": "ls", "timeout_seconds": 99999}, "maximum"},
		{"exec", map[string]any{"vm": "x", "command": 7}, "type"},
		{"exec", map[string]any{"vm": "x", "command": "ls", "sudo": true}, "sudo"},
		{"read_file", map[string]any{"vm": "x", "path": "relative/file"}, "pattern"},
		{"write_file", map[string]any{"vm": "x", "path": "/f", "content": "%%%", "encoding": "base64"}, "not valid base64"},
		{"write_file", map[string]any{"vm": "x", "path": "/f", "content": "", "encoding": "rot13"}, "enum"},
		{"write_file", map[string]any{"vm": "x", "path": "/f", "content": "", "mode": "rwx"}, "pattern"},
		{"create_vm", map[string]any{"name": "has space"}, "pattern"},
		{"create_vm", map[string]any{"name": "ok", "vcpus": 1000}, "maximum"},
		{"delete_vm", map[string]any{"vm": ""}, "minLength"},
		{"get_run", map[string]any{"run_id": 5}, "type"},
	}
	for _, c := range cases {
		res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: c.tool, Arguments: c.args})
		if err != nil {
			t.Errorf("%s %v: protocol error %v", c.tool, c.args, err)
			continue
		}
		text := ""
		for _, ct := range res.Content {
			if tc, ok := ct.(*mcp.TextContent); ok {
				text += tc.Text
			}
		}
		if !res.IsError || !strings.Contains(text, c.want) {
			t.Errorf("%s %v: isError=%v %q, want an error with %q", c.tool, c.args, res.IsError, text, c.want)
		}
	}
	// An unknown tool is the protocol's error (the client asked for something that does not exist).
	if _, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "rm_rf"}); err == nil {
		t.Error("unknown tool: no error")
	}
}

// TestInProcessTransportStreams checks the transport the gateway's MCP tools reach the API with: the answer
// streams (the round trip returns at the header, before the handler is done), closing the body ends the
// handler's request, and the handler sees none of the caller's context values.
func TestInProcessTransportStreams(t *testing.T) {
	type key struct{}
	release := make(chan struct{})
	handlerDone := make(chan error, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Context().Value(key{}) != nil {
			http.Error(w, "caller's context leaked", http.StatusInternalServerError)
			return
		}
		if r.Header.Get("Authorization") != "Bearer k" || r.URL.Path != "/api/v1/x" || r.URL.Query().Get("q") != "1" {
			http.Error(w, "request not passed on: "+r.URL.String(), http.StatusBadRequest)
			return
		}
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Echo", string(body))
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write([]byte("first"))
		<-release
		for r.Context().Err() == nil {
			if _, err := w.Write([]byte("more")); err != nil {
				break
			}
		}
		<-r.Context().Done()
		handlerDone <- r.Context().Err()
	})
	hc := &http.Client{Transport: InProcessTransport(h)}
	ctx := context.WithValue(context.Background(), key{}, "secret")
	req, _ := http.NewRequestWithContext(ctx, "POST", "http://x/api/v1/x?q=1", strings.NewReader("ping"))
	req.Header.Set("Authorization", "Bearer k")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusCreated || resp.Header.Get("X-Echo") != "ping" {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("answer %d %v %s", resp.StatusCode, resp.Header, b)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(resp.Body, buf); err != nil || string(buf) != "first" {
		t.Fatalf("first bytes %q %v", buf, err)
	}
	close(release)
	_ = resp.Body.Close()
	select {
	case err := <-handlerDone:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("handler's context: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("closing the body did not end the handler's request")
	}

	// A handler that panics ends its answer cut short; the process goes on.
	hc = &http.Client{Transport: InProcessTransport(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("partial"))
		panic(http.ErrAbortHandler)
	}))}
	resp, err = hc.Get("http://x/")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(resp.Body); err == nil {
		t.Fatal("an aborted answer read as complete")
	}
	resp.Body.Close()
}

func TestTruncateUTF8(t *testing.T) {
	s := "aé€𝄞" // 1 + 2 + 3 + 4 bytes
	for n := 0; n <= len(s)+1; n++ {
		got, cut := truncateUTF8(s, n)
		if len(got) > n || !utf8.ValidString(got) || cut != (n < len(s)) || !strings.HasPrefix(s, got) {
			t.Errorf("truncateUTF8(%d) = %q %v", n, got, cut)
		}
	}
	if got, _ := truncateUTF8(s, 5); got != "aé" {
		t.Errorf("cut inside € = %q, want aé", got)
	}
}
