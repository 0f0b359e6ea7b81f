package api

import (
	"encoding/json"
	"net/http"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/go-chi/chi/v5"
	"gopkg.in/yaml.v3"

	"github.com/aetherium/aetherium/pkg/client"
)

// oaDoc is the part of an OpenAPI document these tests read.
type oaDoc struct {
	Servers    []struct{ URL string } `yaml:"servers"`
	Security   []map[string][]string  `yaml:"security"`
	Paths      map[string]map[string]yaml.Node
	Components struct {
		Schemas map[string]oaSchema `yaml:"schemas"`
	} `yaml:"components"`
}

type oaOperation struct {
	OperationID string                 `yaml:"operationId"`
	Scope       string                 `yaml:"x-aetherium-scope"`
	Security    *[]map[string][]string `yaml:"security"`
	Parameters  []map[string]any       `yaml:"parameters"`
	RequestBody *struct {
		Content map[string]any `yaml:"content"`
	} `yaml:"requestBody"`
	Responses map[string]any `yaml:"responses"`
}

type oaSchema struct {
	Ref        string              `yaml:"$ref"`
	Type       string              `yaml:"type"`
	Required   []string            `yaml:"required"`
	Nullable   bool                `yaml:"nullable"`
	Properties map[string]oaSchema `yaml:"properties"`
}

var httpMethods = []string{"get", "put", "post", "delete", "options", "head", "patch", "trace"}

func loadDoc(t *testing.T) oaDoc {
	t.Helper()
	var d oaDoc
	if err := yaml.Unmarshal(openAPISpec, &d); err != nil {
		t.Fatalf("openapi.yaml does not parse: %v", err)
	}
	if len(d.Servers) != 1 || d.Servers[0].URL != "/api/v1" {
		t.Fatalf("servers = %+v, want one server /api/v1", d.Servers)
	}
	return d
}

// operations returns "METHOD /api/v1/path" -> operation for every documented operation.
func operations(t *testing.T, d oaDoc) map[string]oaOperation {
	t.Helper()
	ops := map[string]oaOperation{}
	for path, item := range d.Paths {
		for key, node := range item {
			if !slices.Contains(httpMethods, key) {
				continue // path-level parameters, summary, ...
			}
			var op oaOperation
			if err := node.Decode(&op); err != nil {
				t.Fatalf("%s %s: %v", key, path, err)
			}
			ops[strings.ToUpper(key)+" "+d.Servers[0].URL+path] = op
		}
	}
	return ops
}

func routerRoutes(t *testing.T, s *server) []string {
	t.Helper()
	var routes []string
	err := chi.Walk(s.router, func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		if !strings.HasPrefix(route, "/api/v1/") {
			return nil // /.well-known/jwks.json, the same as /api/v1/auth/jwks.json (TestJWKS)
		}
		routes = append(routes, method+" "+route)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(routes)
	return routes
}

// TestOpenAPIMatchesRouter fails when a route is added without documenting it, or documented without existing.
func TestOpenAPIMatchesRouter(t *testing.T) {
	s := newServer(Config{})
	routes := routerRoutes(t, s)
	ops := operations(t, loadDoc(t))
	if len(routes) < 14 {
		t.Fatalf("router walk found only %d routes: %v", len(routes), routes)
	}
	for _, r := range routes {
		if _, ok := ops[r]; !ok {
			t.Errorf("route %s is not documented in openapi.yaml", r)
		}
	}
	for op := range ops {
		if !slices.Contains(routes, op) {
			t.Errorf("openapi.yaml documents %s, which the router does not serve", op)
		}
	}
}

// streamedBodies are the operations whose request body is streamed bytes rather than JSON.
var streamedBodies = []string{"PUT /api/v1/vms/{id}/files"}

// webSocketRoutes answer 101 Switching Protocols on success.
var webSocketRoutes = []string{"GET /api/v1/vms/{id}/shell"}

// unkeyedRoutes are mutating routes that ignore Idempotency-Key: idempotent by themselves, and keeping a
// fingerprint of their body would keep a hash of a secret.
// Links are unique per source: a repeated create is a 409, a repeated delete a 404. Webhooks are deduplicated by
// the integration's own delivery id.
var unkeyedRoutes = []string{"PUT /api/v1/secrets/{name}", "DELETE /api/v1/secrets/{name}",
	"POST /api/v1/integrations/links", "DELETE /api/v1/integrations/links/{id}", "POST /api/v1/webhooks/{integration}",
	"POST /api/v1/mcp", "POST /api/v1/apikeys", "DELETE /api/v1/apikeys/{id}", "POST /api/v1/auth/token",
	"POST /api/v1/vms/{id}/shell/ticket"}

// jsonRPCRoutes carry JSON-RPC (MCP): a request the API's checks let through is answered by the protocol, whose
// own failures are results (tool errors) or its transport's 400/406, never 422.
var jsonRPCRoutes = []string{"POST /api/v1/mcp"}

// webhookRoutes take the raw body an outside service sends, signed, under the integration's own limit: no JSON
// checks (415, 422) and no body deadline answer (408).
var webhookRoutes = []string{"POST /api/v1/webhooks/{integration}"}

// publicRoutes are the routes that need no API key.
var publicRoutes = []string{
	"GET /api/v1/health", "GET /api/v1/ready", "GET /api/v1/openapi.yaml", "GET /api/v1/openapi.json",
	"POST /api/v1/webhooks/{integration}", // signed by the integration, never an API key
	"GET /api/v1/auth/jwks.json",
}

// TestOpenAPIOperations checks what each operation must say: its security, the errors every client must expect,
// and a unique operationId for client generators.
func TestOpenAPIOperations(t *testing.T) {
	d := loadDoc(t)
	if len(d.Security) != 2 || d.Security[0]["bearerAuth"] == nil || d.Security[1]["bearerJWT"] == nil {
		t.Fatalf("global security = %v, want bearerAuth or bearerJWT", d.Security)
	}
	ids := map[string]string{}
	for name, op := range operations(t, d) {
		if op.OperationID == "" {
			t.Errorf("%s has no operationId", name)
		} else if other, dup := ids[op.OperationID]; dup {
			t.Errorf("%s and %s share operationId %s", name, other, op.OperationID)
		}
		ids[op.OperationID] = name
		public := op.Security != nil && len(*op.Security) == 0
		if public != slices.Contains(publicRoutes, name) {
			t.Errorf("%s: documented public=%v, want %v", name, public, !public)
		}
		var want []string
		if name != "GET /api/v1/health" && name != "GET /api/v1/ready" {
			// The probes answer for the process itself; their failures are part of the 200/503 body.
			want = append(want, "500")
		}
		if !public {
			want = append(want, "401")
		}
		if strings.Contains(name, "{id}") {
			want = append(want, "404")
		}
		if op.RequestBody != nil {
			if slices.Contains(webhookRoutes, name) {
				want = append(want, "400", "413")
			} else if slices.Contains(streamedBodies, name) {
				// The body is the file itself: any type, any size, so no 413 or 415.
				want = append(want, "400", "422")
				if op.RequestBody.Content["application/octet-stream"] == nil {
					t.Errorf("%s: streamed request body is not application/octet-stream", name)
				}
			} else if slices.Contains(jsonRPCRoutes, name) {
				want = append(want, "400", "413", "415")
				if op.RequestBody.Content["application/json"] == nil {
					t.Errorf("%s: request body is not application/json", name)
				}
			} else {
				want = append(want, "400", "413", "415", "422")
				if op.RequestBody.Content["application/json"] == nil {
					t.Errorf("%s: request body is not application/json", name)
				}
			}
		}
		idem := false
		for _, p := range op.Parameters {
			switch p["$ref"] {
			case "#/components/parameters/Wait":
				want = append(want, "400")
			case "#/components/parameters/Limit":
				want = append(want, "400", "422")
			case "#/components/parameters/IdempotencyKey":
				idem = true
				want = append(want, "400", "409", "422")
			}
		}
		// Every mutating route takes an Idempotency-Key but uploads, which refuse it (their body is a stream).
		method, _, _ := strings.Cut(name, " ")
		mutating := method == "POST" || method == "PUT" || method == "PATCH" || method == "DELETE"
		if wantIdem := mutating && !slices.Contains(streamedBodies, name) && !slices.Contains(unkeyedRoutes, name); idem != wantIdem {
			t.Errorf("%s: documents Idempotency-Key %v, want %v", name, idem, wantIdem)
		}
		if op.RequestBody != nil && !slices.Contains(streamedBodies, name) && !slices.Contains(webhookRoutes, name) {
			want = append(want, "408") // the body deadline
		}
		for _, code := range want {
			if _, ok := op.Responses[code]; !ok {
				t.Errorf("%s does not document response %s", name, code)
			}
		}
		hasSuccess := false
		for code := range op.Responses {
			if code[0] == '2' || code == "101" && slices.Contains(webSocketRoutes, name) {
				hasSuccess = true
			}
		}
		if !hasSuccess {
			t.Errorf("%s documents no success response", name)
		}
	}
}

// TestOpenAPIRefsResolve walks the whole document and resolves every local $ref.
func TestOpenAPIRefsResolve(t *testing.T) {
	var root map[string]any
	if err := yaml.Unmarshal(openAPISpec, &root); err != nil {
		t.Fatal(err)
	}
	n := 0
	var walk func(v any, at string)
	walk = func(v any, at string) {
		switch x := v.(type) {
		case map[string]any:
			for k, e := range x {
				if k == "$ref" {
					n++
					ref, _ := e.(string)
					if !resolves(root, ref) {
						t.Errorf("%s: $ref %q does not resolve", at, ref)
					}
					continue
				}
				walk(e, at+"/"+k)
			}
		case []any:
			for _, e := range x {
				walk(e, at)
			}
		}
	}
	walk(root, "#")
	if n < 50 {
		t.Fatalf("found only %d $refs; the walk is broken", n)
	}
}

func resolves(root map[string]any, ref string) bool {
	if !strings.HasPrefix(ref, "#/") {
		return false
	}
	var cur any = root
	for _, part := range strings.Split(strings.TrimPrefix(ref, "#/"), "/") {
		m, ok := cur.(map[string]any)
		if !ok {
			return false
		}
		if cur, ok = m[part]; !ok {
			return false
		}
	}
	return cur != nil
}

// TestOpenAPISchemasMatchWireTypes keeps the document's schemas and pkg/client's types from drifting apart: same
// property names; for answers, required exactly when the field is never omitted, and nullable when a pointer is
// written as null.
func TestOpenAPISchemasMatchWireTypes(t *testing.T) {
	types := map[string]any{
		"ErrorBody": client.ErrorBody{}, "ErrorDetail": client.ErrorDetail{},
		"CreateVMRequest": client.CreateVMRequest{}, "VM": client.VM{}, "VMAccepted": client.VMAccepted{},
		"VMList": client.VMList{}, "ExecuteRequest": client.ExecuteRequest{}, "ExecuteAccepted": client.ExecuteAccepted{},
		"Execution": client.Execution{}, "ExecutionList": client.ExecutionList{}, "TaskAccepted": client.TaskAccepted{},
		"Task": client.Task{}, "JobCommand": client.JobCommand{}, "CreateJobRequest": client.CreateJobRequest{},
		"Job": client.Job{}, "JobAccepted": client.JobAccepted{}, "Health": client.Health{}, "Ready": client.Ready{},
		"Status": client.Status{}, "WorkersStatus": client.WorkersStatus{},
		"OutputChunk": client.OutputChunk{}, "ExecutionEnd": client.ExecutionEnd{},
		"FileInfo": client.FileInfo{}, "FileList": client.FileList{}, "MkdirRequest": client.MkdirRequest{},
		"StartProcessRequest": client.StartProcessRequest{}, "Process": client.Process{},
		"ProcessList": client.ProcessList{}, "ProcessOutput": client.ProcessOutput{},
		"SignalRequest": client.SignalRequest{}, "ShellMessage": client.ShellMessage{},
		"EgressPolicy": client.EgressPolicy{}, "VMNetwork": client.VMNetwork{}, "AddToolsRequest": client.AddToolsRequest{},
		"PutSecretRequest": client.PutSecretRequest{}, "Secret": client.Secret{}, "SecretList": client.SecretList{},
		// Runs. RunVM embeds CreateVMRequest (its schema lists both); RunAccepted's run is a pointer never null.
		"CreateRunRequest": client.CreateRunRequest{}, "RunRepo": client.RunRepo{}, "RunPush": client.RunPush{},
		"RunUsage": client.RunUsage{}, "DiffStat": client.DiffStat{}, "RunCommit": client.RunCommit{},
		"RunResult": client.RunResult{}, "Run": client.Run{}, "RunList": client.RunList{}, "RunEvent": client.RunEvent{},
		"RunEnd": client.RunEnd{}, "Agent": client.Agent{},
		"LogEntry": client.LogEntry{}, "LogList": client.LogList{},
	}
	requests := []string{"CreateVMRequest", "ExecuteRequest", "CreateJobRequest", "JobCommand", "MkdirRequest",
		"StartProcessRequest", "SignalRequest", "PutSecretRequest", "CreateRunRequest", "RunPush"}
	schemas := loadDoc(t).Components.Schemas
	for name, v := range types {
		sc, ok := schemas[name]
		if !ok {
			t.Errorf("schema %s is missing", name)
			continue
		}
		rt := reflect.TypeOf(v)
		var fields, required []string
		nullable := map[string]bool{}
		for i := range rt.NumField() {
			f := rt.Field(i)
			tag := f.Tag.Get("json")
			jn, opts, _ := strings.Cut(tag, ",")
			if jn == "-" || jn == "" {
				t.Fatalf("%s.%s has no json name", name, f.Name)
			}
			fields = append(fields, jn)
			omit := strings.Contains(opts, "omitempty")
			if !omit {
				required = append(required, jn)
				if f.Type.Kind() == reflect.Pointer {
					nullable[jn] = true
				}
			}
		}
		var props []string
		for p := range sc.Properties {
			props = append(props, p)
		}
		sort.Strings(fields)
		sort.Strings(props)
		if !slices.Equal(fields, props) {
			t.Errorf("schema %s properties %v, wire type has %v", name, props, fields)
		}
		for p, ps := range sc.Properties {
			if ps.Nullable != nullable[p] {
				t.Errorf("schema %s.%s nullable=%v, want %v", name, p, ps.Nullable, nullable[p])
			}
		}
		if slices.Contains(requests, name) {
			for _, r := range sc.Required {
				if !slices.Contains(fields, r) {
					t.Errorf("schema %s requires unknown property %s", name, r)
				}
			}
			continue
		}
		got := slices.Clone(sc.Required)
		sort.Strings(got)
		sort.Strings(required)
		if !slices.Equal(got, required) {
			t.Errorf("schema %s required %v, want %v (the fields without omitempty)", name, got, required)
		}
	}
}

func TestOpenAPIJSONIsTheYAML(t *testing.T) {
	doc := loadOpenAPI()
	if doc.err != nil {
		t.Fatal(doc.err)
	}
	var fromJSON, fromYAML any
	if err := json.Unmarshal(doc.json, &fromJSON); err != nil {
		t.Fatalf("openapi.json is not JSON: %v", err)
	}
	if err := yaml.Unmarshal(openAPISpec, &fromYAML); err != nil {
		t.Fatal(err)
	}
	// Round-trip the YAML through JSON too, so that numbers compare with the same Go types.
	conv, err := jsonable(fromYAML)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(conv)
	if err != nil {
		t.Fatal(err)
	}
	var want any
	if err := json.Unmarshal(b, &want); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(fromJSON, want) {
		t.Fatal("openapi.json differs from openapi.yaml")
	}
	m := fromJSON.(map[string]any)
	if m["openapi"] != "3.0.3" {
		t.Fatalf("openapi = %v", m["openapi"])
	}
}

func TestJSONableRejectsUnrepresentableKeys(t *testing.T) {
	if _, err := jsonable(map[any]any{1.5: "x"}); err == nil {
		t.Fatal("a float map key was accepted")
	}
	got, err := jsonable(map[any]any{200: map[any]any{true: []any{map[any]any{"a": 1}}}})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(got)
	if string(b) != `{"200":{"true":[{"a":1}]}}` {
		t.Fatalf("got %s", b)
	}
}
