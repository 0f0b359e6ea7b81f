package api

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"gopkg.in/yaml.v3"

	"github.com/aetherium/aetherium/internal/auth"
	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/pkg/client"
)

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

func TestHealthAndOpenAPIArePublic(t *testing.T) {
	e := newEnv(t, nil)
	r := e.call("GET", "/api/v1/health", "", "")
	if r.status != http.StatusOK {
		t.Fatalf("health: %d %s", r.status, r.body)
	}
	if h := decodeAs[client.Health](t, r); h.Status != "ok" || h.Version != "test-1.2.3" {
		t.Fatalf("health = %+v", h)
	}

	r = e.call("GET", "/api/v1/openapi.yaml", "", "")
	if r.status != http.StatusOK || !bytes.Equal(r.body, openAPISpec) {
		t.Fatalf("openapi.yaml: %d, %d bytes (want the embedded %d)", r.status, len(r.body), len(openAPISpec))
	}
	if ct := r.header.Get("Content-Type"); ct != "application/yaml" {
		t.Errorf("openapi.yaml content type %q", ct)
	}
	var y map[string]any
	if err := yaml.Unmarshal(r.body, &y); err != nil {
		t.Fatal(err)
	}
	r = e.call("GET", "/api/v1/openapi.json", "", "")
	var j map[string]any
	if r.status != http.StatusOK || json.Unmarshal(r.body, &j) != nil {
		t.Fatalf("openapi.json: %d %.200s", r.status, r.body)
	}
	if j["openapi"] != y["openapi"] || len(j["paths"].(map[string]any)) != len(y["paths"].(map[string]any)) {
		t.Fatal("openapi.json does not match openapi.yaml")
	}
}

// TestReady checks that readiness is this process's dependencies only: no live worker is not a reason to take a
// gateway out of a load balancer. Worker liveness shows in /status.
func TestReady(t *testing.T) {
	e := newEnv(t, nil)
	r := e.call("GET", "/api/v1/ready", "", "")
	if r.status != http.StatusOK {
		t.Fatalf("ready without a worker: %d %s", r.status, r.body)
	}
	rd := decodeAs[client.Ready](t, r)
	if rd.Status != "ready" || rd.Checks["store"] != "ok" || rd.Checks["queue"] != "ok" || rd.Checks["events"] != "ok" {
		t.Fatalf("ready = %+v", rd)
	}
	if _, ok := rd.Checks["workers"]; ok {
		t.Errorf("ready checks workers: %+v", rd)
	}
	st := decodeAs[client.Status](t, e.okCall("GET", "/api/v1/status", e.keyA, ""))
	if st.Status != "degraded" || st.Workers.Live != 0 || st.Workers.Registered != 0 || st.Workers.StaleAfterSeconds != 30 {
		t.Fatalf("status without a worker = %+v", st)
	}

	e.registerWorker("w-ready")
	st = decodeAs[client.Status](t, e.okCall("GET", "/api/v1/status", e.keyA, ""))
	if st.Status != "ok" || st.Workers.Live != 1 || st.Workers.Registered != 1 {
		t.Fatalf("status with a worker = %+v", st)
	}
	// A worker whose backend reports trouble is registered but not live.
	if err := e.st.Workers().Upsert(t.Context(), &model.Worker{ID: "w-sick", Hostname: "h", Backend: "docker",
		Status: "active", Capacity: 1, Metadata: map[string]string{"backend_health": "engine unreachable"},
		StartedAt: time.Now(), LastHeartbeat: time.Now()}); err != nil {
		t.Fatal(err)
	}
	st = decodeAs[client.Status](t, e.okCall("GET", "/api/v1/status", e.keyA, ""))
	if st.Workers.Live != 1 || st.Workers.Registered != 2 {
		t.Fatalf("status with a sick worker = %+v", st)
	}

	// A dependency of this process failing does make it unready.
	if err := e.bus.Close(); err != nil {
		t.Fatal(err)
	}
	r = e.call("GET", "/api/v1/ready", "", "")
	rd = decodeAs[client.Ready](t, r)
	if r.status != http.StatusServiceUnavailable || rd.Status != "not_ready" || rd.Checks["events"] == "ok" {
		t.Fatalf("ready with a closed bus: %d %+v", r.status, rd)
	}
}

// TestAuthRequired sends every protected route every kind of bad credential, and checks public routes need none.
// Nothing may change in the store.
func TestAuthRequired(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	unknown, _, err := auth.NewKey("", "never stored", false)
	if err != nil {
		t.Fatal(err)
	}
	revoked, rk, err := auth.NewKey("", "revoked", false)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.st.APIKeys().Create(ctx, rk); err != nil {
		t.Fatal(err)
	}
	if err := e.st.APIKeys().Revoke(ctx, rk.ID, time.Now()); err != nil {
		t.Fatal(err)
	}
	// A real VM id, so that a route that skipped auth would find something to act on.
	vm := e.createVM(e.keyA, "target")
	before := e.counts()

	bad := map[string]string{
		"missing":            "",
		"basic scheme":       "Basic " + e.keyA,
		"bearer without key": "Bearer ",
		"malformed key":      "Bearer not-a-key",
		"truncated key":      "Bearer " + e.keyA[:len(e.keyA)-1],
		"unknown key":        "Bearer " + unknown,
		"revoked key":        "Bearer " + revoked,
	}
	s := newServer(Config{})
	for _, route := range routerRoutes(t, s) {
		method, path, _ := strings.Cut(route, " ")
		path = strings.ReplaceAll(path, "{id}", vm.VM.ID)
		if slices.Contains(publicRoutes, route) {
			r := e.call(method, path, "", "")
			if r.status == http.StatusUnauthorized {
				t.Errorf("public route %s answered 401", route)
			}
			continue
		}
		for name, h := range bad {
			var body io.Reader
			if method == "POST" {
				body = strings.NewReader(`{"name":"x","command":"true","commands":[{"command":"true"}],"vm_id":"` + vm.VM.ID + `"}`)
			}
			r := e.do(req{method: method, path: path, body: body, header: map[string]string{"Authorization": h}})
			if r.status != http.StatusUnauthorized || r.errCode() != client.CodeUnauthorized {
				t.Errorf("%s with %s: %d %s", route, name, r.status, r.body)
			}
			if wa := r.header.Get("WWW-Authenticate"); !strings.HasPrefix(wa, "Bearer") {
				t.Errorf("%s with %s: WWW-Authenticate = %q", route, name, wa)
			}
		}
	}
	if after := e.counts(); after != before {
		t.Fatalf("unauthenticated requests changed the store: %+v -> %+v", before, after)
	}
	for _, k := range []string{e.keyA, e.keyB, unknown, revoked} {
		if strings.Contains(e.logs.String(), k) {
			t.Fatal("an API key was written to the log")
		}
	}
}

// TestBadInputChangesNothing sends malformed, oversized and invalid requests; each gets its 4xx and the store is
// left exactly as it was.
func TestBadInputChangesNothing(t *testing.T) {
	e := newEnv(t, nil)
	vm := e.createVM(e.keyA, "existing")
	before := e.counts()
	big := `{"name":"big","metadata":{"k":"` + strings.Repeat("x", DefaultMaxBodyBytes) + `"}}`
	vmPath := "/api/v1/vms/" + vm.VM.ID

	cases := []struct {
		name   string
		req    req
		status int
		code   string
		msg    []string // substrings the message must contain
	}{
		{"empty body", req{method: "POST", path: "/api/v1/vms", body: strings.NewReader("")},
			400, client.CodeInvalidJSON, []string{"empty"}},
		{"no body at all", req{method: "POST", path: "/api/v1/vms", noType: true},
			400, client.CodeInvalidJSON, []string{"empty"}},
		{"truncated JSON", req{method: "POST", path: "/api/v1/vms", body: strings.NewReader(`{"name": "a"`)},
			400, client.CodeInvalidJSON, []string{"ends before"}},
		{"syntax error", req{method: "POST", path: "/api/v1/vms", body: strings.NewReader("{\n\"name\": 'a'}")},
			400, client.CodeInvalidJSON, []string{"line 2, column 9"}},
		{"unknown field", req{method: "POST", path: "/api/v1/vms", body: strings.NewReader(`{"name":"a","vcpu":2}`)},
			400, client.CodeInvalidJSON, []string{`"vcpu"`}},
		{"wrong type", req{method: "POST", path: "/api/v1/vms", body: strings.NewReader(`{"name":"a","vcpus":"2"}`)},
			400, client.CodeInvalidJSON, []string{`"vcpus"`, "integer"}},
		{"nested wrong type", req{method: "POST", path: "/api/v1/jobs",
			body: strings.NewReader(`{"vm":{"name":"a"},"commands":[{"command":"x","args":"y"}]}`)},
			400, client.CodeInvalidJSON, []string{`"commands.args"`}},
		{"trailing data", req{method: "POST", path: "/api/v1/vms", body: strings.NewReader(`{"name":"a"} {"name":"b"}`)},
			400, client.CodeInvalidJSON, []string{"after the JSON object"}},
		{"null body", req{method: "POST", path: "/api/v1/vms", body: strings.NewReader(`null`)},
			400, client.CodeInvalidJSON, []string{"JSON object"}},
		{"array body", req{method: "POST", path: "/api/v1/vms", body: strings.NewReader(`[{"name":"a"}]`)},
			400, client.CodeInvalidJSON, []string{"JSON object"}},
		{"oversized, declared", req{method: "POST", path: "/api/v1/vms", body: strings.NewReader(big)},
			413, client.CodeTooLarge, []string{"1048576"}},
		// A reader of unknown length is sent chunked, so only MaxBytesReader can stop it.
		{"oversized, chunked", req{method: "POST", path: "/api/v1/vms", body: io.MultiReader(strings.NewReader(big))},
			413, client.CodeTooLarge, []string{"1048576"}},
		{"text/plain", req{method: "POST", path: "/api/v1/vms", body: strings.NewReader(`{"name":"a"}`), contentType: "text/plain"},
			415, client.CodeUnsupportedMedia, []string{"application/json"}},
		{"no content type", req{method: "POST", path: "/api/v1/vms", body: strings.NewReader(`{"name":"a"}`), noType: true},
			415, client.CodeUnsupportedMedia, nil},
		{"form", req{method: "POST", path: vmPath + "/execute", body: strings.NewReader(`command=ls`),
			contentType: "application/x-www-form-urlencoded"}, 415, client.CodeUnsupportedMedia, nil},
		{"vcpus too many", req{method: "POST", path: "/api/v1/vms", body: strings.NewReader(`{"name":"a","vcpus":1000}`)},
			422, client.CodeValidation, []string{"vcpus"}},
		{"vcpus negative", req{method: "POST", path: "/api/v1/vms", body: strings.NewReader(`{"name":"a","vcpus":-1}`)},
			422, client.CodeValidation, []string{"vcpus"}},
		{"memory too small", req{method: "POST", path: "/api/v1/vms", body: strings.NewReader(`{"name":"a","memory_mb":1}`)},
			422, client.CodeValidation, []string{"memory_mb"}},
		{"memory too large", req{method: "POST", path: "/api/v1/vms", body: strings.NewReader(`{"name":"a","memory_mb":10000000}`)},
			422, client.CodeValidation, []string{"memory_mb"}},
		{"name missing", req{method: "POST", path: "/api/v1/vms", body: strings.NewReader(`{}`)},
			422, client.CodeValidation, []string{"name"}},
		{"name invalid", req{method: "POST", path: "/api/v1/vms", body: strings.NewReader(`{"name":"../etc"}`)},
			422, client.CodeValidation, []string{"name"}},
		{"priority invalid", req{method: "POST", path: "/api/v1/vms", body: strings.NewReader(`{"name":"a","priority":"urgent"}`)},
			422, client.CodeValidation, []string{"priority"}},
		{"unknown tool", req{method: "POST", path: "/api/v1/vms", body: strings.NewReader(`{"name":"a","tools":["git","nosuchtool"]}`)},
			422, client.CodeValidation, []string{"tools", "nosuchtool", "known tools", "node"}},
		{"bad tool version", req{method: "POST", path: "/api/v1/vms", body: strings.NewReader(`{"name":"a","tools":["node@;rm"]}`)},
			422, client.CodeValidation, []string{"tools", "version"}},
		{"conflicting tool versions", req{method: "POST", path: "/api/v1/vms", body: strings.NewReader(`{"name":"a","tools":["node@22"],"tool_versions":{"node":"24"}}`)},
			422, client.CodeValidation, []string{"tools", "node"}},
		{"egress CIDR invalid", req{method: "POST", path: "/api/v1/vms", body: strings.NewReader(`{"name":"a","network":{"egress":{"deny_cidrs":["10.0.0.0/33"]}}}`)},
			422, client.CodeValidation, []string{"network.egress.deny_cidrs", "10.0.0.0/33"}},
		{"egress IPv6 CIDR", req{method: "POST", path: "/api/v1/vms", body: strings.NewReader(`{"name":"a","network":{"egress":{"allow_cidrs":["2001:db8::/32"]}}}`)},
			422, client.CodeValidation, []string{"IPv4"}},
		{"egress domain invalid", req{method: "POST", path: "/api/v1/vms", body: strings.NewReader(`{"name":"a","network":{"egress":{"allow_domains":["exa mple.com"]}}}`)},
			422, client.CodeValidation, []string{"network.egress.allow_domains"}},
		{"egress unknown field", req{method: "POST", path: "/api/v1/vms", body: strings.NewReader(`{"name":"a","network":{"egress":{"allow":["x"]}}}`)},
			400, client.CodeInvalidJSON, []string{"allow"}},
		{"duplicate name", req{method: "POST", path: "/api/v1/vms", body: strings.NewReader(`{"name":"existing"}`)},
			409, client.CodeConflict, []string{"existing"}},
		{"wait not a duration", req{method: "POST", path: "/api/v1/vms?wait=soon", body: strings.NewReader(`{"name":"w1"}`)},
			400, client.CodeBadRequest, []string{"wait"}},
		{"wait bare number", req{method: "POST", path: "/api/v1/vms?wait=30", body: strings.NewReader(`{"name":"w2"}`)},
			400, client.CodeBadRequest, []string{"wait"}},
		{"wait zero", req{method: "POST", path: "/api/v1/vms?wait=0s", body: strings.NewReader(`{"name":"w3"}`)},
			400, client.CodeBadRequest, []string{"wait"}},
		{"wait negative", req{method: "POST", path: "/api/v1/vms?wait=-5s", body: strings.NewReader(`{"name":"w4"}`)},
			400, client.CodeBadRequest, []string{"wait"}},
		{"wait too long", req{method: "POST", path: "/api/v1/vms?wait=11m", body: strings.NewReader(`{"name":"w5"}`)},
			400, client.CodeBadRequest, []string{"10m"}},
		{"wait empty", req{method: "POST", path: "/api/v1/vms?wait=", body: strings.NewReader(`{"name":"w6"}`)},
			400, client.CodeBadRequest, []string{"wait"}},
		{"delete wait invalid", req{method: "DELETE", path: vmPath + "?wait=x"}, 400, client.CodeBadRequest, []string{"wait"}},
		{"delete priority invalid", req{method: "DELETE", path: vmPath + "?priority=urgent"},
			422, client.CodeValidation, []string{"priority"}},
		{"execute wait invalid", req{method: "POST", path: vmPath + "/execute?wait=1h",
			body: strings.NewReader(`{"command":"true"}`)}, 400, client.CodeBadRequest, []string{"wait"}},
		{"execute without command", req{method: "POST", path: vmPath + "/execute", body: strings.NewReader(`{}`)},
			422, client.CodeValidation, []string{"command"}},
		{"execute relative working dir", req{method: "POST", path: vmPath + "/execute",
			body: strings.NewReader(`{"command":"ls","working_dir":"tmp"}`)}, 422, client.CodeValidation, []string{"working_dir"}},
		{"execute on a pending vm", req{method: "POST", path: vmPath + "/execute", body: strings.NewReader(`{"command":"ls"}`)},
			409, client.CodeVMNotRunning, []string{"pending"}},
		{"job with vm_id and vm", req{method: "POST", path: "/api/v1/jobs",
			body: strings.NewReader(`{"vm_id":"` + vm.VM.ID + `","vm":{"name":"j"},"commands":[{"command":"ls"}]}`)},
			422, client.CodeValidation, []string{"vm_id"}},
		{"job without commands", req{method: "POST", path: "/api/v1/jobs", body: strings.NewReader(`{"vm":{"name":"j"},"commands":[]}`)},
			422, client.CodeValidation, []string{"commands"}},
		{"job with invalid vm", req{method: "POST", path: "/api/v1/jobs",
			body: strings.NewReader(`{"vm":{"name":"j","vcpus":99},"commands":[{"command":"ls"}]}`)},
			422, client.CodeValidation, []string{"vm.vcpus"}},
		{"job on a pending vm", req{method: "POST", path: "/api/v1/jobs",
			body: strings.NewReader(`{"vm_id":"` + vm.VM.ID + `","commands":[{"command":"ls"}]}`)},
			409, client.CodeVMNotRunning, nil},
		{"job with bad command", req{method: "POST", path: "/api/v1/jobs",
			body: strings.NewReader(`{"vm":{"name":"j"},"commands":[{"command":"ls"},{"command":" "}]}`)},
			422, client.CodeValidation, []string{"commands[1].command"}},
		{"job wait invalid", req{method: "POST", path: "/api/v1/jobs?wait=forever",
			body: strings.NewReader(`{"vm":{"name":"j"},"commands":[{"command":"ls"}]}`)}, 400, client.CodeBadRequest, []string{"wait"}},
		{"list limit not a number", req{method: "GET", path: "/api/v1/vms?limit=ten"}, 400, client.CodeBadRequest, []string{"limit"}},
		{"list limit too large", req{method: "GET", path: "/api/v1/vms?limit=501"}, 422, client.CodeValidation, []string{"limit"}},
		{"list limit zero", req{method: "GET", path: "/api/v1/vms?limit=0"}, 422, client.CodeValidation, []string{"limit"}},
		{"list bad status", req{method: "GET", path: "/api/v1/vms?status=running,bogus"}, 422, client.CodeValidation, []string{"bogus"}},
		{"list bad cursor", req{method: "GET", path: "/api/v1/vms?cursor=abc"}, 422, client.CodeValidation, []string{"cursor"}},
		{"executions limit", req{method: "GET", path: vmPath + "/executions?limit=-3"}, 422, client.CodeValidation, []string{"limit"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.req.key = e.keyA
			r := e.do(c.req)
			if r.status != c.status || r.errCode() != c.code {
				t.Fatalf("got %d %s, want %d %s", r.status, r.body, c.status, c.code)
			}
			if ct := r.header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("content type %q", ct)
			}
			for _, m := range c.msg {
				if !strings.Contains(r.errMessage(), m) {
					t.Errorf("message %q does not mention %q", r.errMessage(), m)
				}
			}
			if strings.Contains(r.errMessage(), "sqlite") || strings.Contains(r.errMessage(), e.ownerA) {
				t.Errorf("message leaks internals: %q", r.errMessage())
			}
		})
	}
	if after := e.counts(); after != before {
		t.Fatalf("rejected requests changed the store: %+v -> %+v", before, after)
	}
	// The VM that all of this was aimed at is untouched.
	r := e.call("GET", vmPath, e.keyA, "")
	if got := decodeAs[client.VM](t, r); got.Status != "pending" || got.Name != "existing" {
		t.Fatalf("vm after bad requests: %+v", got)
	}
}

// TestOwnersAreIsolated: another owner's resources are 404, exactly like missing ones, for every route.
func TestOwnersAreIsolated(t *testing.T) {
	e := newEnv(t, nil)
	a := e.createVM(e.keyA, "mine")
	before := e.counts()

	for _, c := range []struct{ method, path, body string }{
		{"GET", "/api/v1/vms/" + a.VM.ID, ""},
		{"DELETE", "/api/v1/vms/" + a.VM.ID, ""},
		{"DELETE", "/api/v1/vms/" + a.VM.ID + "?wait=1s", ""},
		{"POST", "/api/v1/vms/" + a.VM.ID + "/execute", `{"command":"id"}`},
		{"GET", "/api/v1/vms/" + a.VM.ID + "/executions", ""},
		{"GET", "/api/v1/tasks/" + a.TaskID, ""},
		{"POST", "/api/v1/jobs", `{"vm_id":"` + a.VM.ID + `","commands":[{"command":"id"}]}`},
	} {
		r := e.call(c.method, c.path, e.keyB, c.body)
		if r.status != http.StatusNotFound || r.errCode() != client.CodeNotFound {
			t.Errorf("bob: %s %s = %d %s, want 404", c.method, c.path, r.status, r.body)
		}
		// The answer must be the one a missing id gets, so that ids cannot be probed.
		missing := strings.ReplaceAll(c.path, a.VM.ID, uuid.NewString())
		missing = strings.ReplaceAll(missing, a.TaskID, uuid.NewString())
		body := strings.ReplaceAll(c.body, a.VM.ID, uuid.NewString())
		if m := e.call(c.method, missing, e.keyB, body); m.status != r.status || m.errCode() != r.errCode() {
			t.Errorf("%s %s: foreign id answers %d, missing id answers %d", c.method, c.path, r.status, m.status)
		}
	}
	if list := decodeAs[client.VMList](t, e.call("GET", "/api/v1/vms", e.keyB, "")); len(list.VMs) != 0 {
		t.Errorf("bob lists alice's vms: %+v", list.VMs)
	}
	if after := e.counts(); after != before {
		t.Fatalf("another owner's requests changed the store: %+v -> %+v", before, after)
	}

	// Alice still sees hers, and the names are per owner.
	if r := e.call("GET", "/api/v1/vms/"+a.VM.ID, e.keyA, ""); r.status != http.StatusOK {
		t.Fatalf("alice: %d %s", r.status, r.body)
	}
	if r := e.call("POST", "/api/v1/vms", e.keyB, `{"name":"mine"}`); r.status != http.StatusAccepted {
		t.Fatalf("bob may use a name alice uses: %d %s", r.status, r.body)
	}
}

func TestUnknownAndMalformedIDs(t *testing.T) {
	e := newEnv(t, nil)
	before := e.counts()
	for _, id := range []string{uuid.NewString(), "not-a-uuid", "123", strings.Repeat("a", 500),
		strings.ToUpper(uuid.NewString()), "{" + uuid.NewString() + "}", "urn:uuid:" + uuid.NewString(), "%00"} {
		for _, c := range []struct{ method, path, body string }{
			{"GET", "/api/v1/vms/" + id, ""},
			{"DELETE", "/api/v1/vms/" + id, ""},
			{"POST", "/api/v1/vms/" + id + "/execute", `{"command":"id"}`},
			{"GET", "/api/v1/vms/" + id + "/executions", ""},
			{"GET", "/api/v1/executions/" + id, ""},
			{"GET", "/api/v1/tasks/" + id, ""},
			{"GET", "/api/v1/jobs/" + id, ""},
		} {
			r := e.call(c.method, c.path, e.keyA, c.body)
			if r.status != http.StatusNotFound || r.errCode() != client.CodeNotFound {
				t.Errorf("%s %s: %d %s", c.method, c.path, r.status, r.body)
			}
		}
	}
	if after := e.counts(); after != before {
		t.Fatalf("requests for unknown ids changed the store: %+v -> %+v", before, after)
	}
}

func TestRoutingErrors(t *testing.T) {
	e := newEnv(t, nil)
	id := uuid.NewString()
	for _, c := range []struct {
		method, path string
		status       int
		allow        string
	}{
		{"GET", "/", 404, ""},
		{"GET", "/api/v1", 404, ""},
		{"GET", "/api/v1/nothing", 404, ""},
		{"GET", "/api/v1/vms/" + id + "/nothing", 404, ""},
		{"GET", "/api/v2/vms", 404, ""},
		{"PUT", "/api/v1/vms", 405, "GET, POST"},
		{"PATCH", "/api/v1/vms/" + id, 405, "GET, DELETE"},
		{"GET", "/api/v1/vms/" + id + "/execute", 405, "POST"},
		{"DELETE", "/api/v1/tasks/" + id, 405, "GET"},
		{"POST", "/api/v1/health", 405, "GET"},
	} {
		r := e.call(c.method, c.path, e.keyA, "")
		wantCode := client.CodeNotFound
		if c.status == 405 {
			wantCode = codeMethodNotAllowed
		}
		if r.status != c.status || r.errCode() != wantCode {
			t.Errorf("%s %s: %d %s, want %d", c.method, c.path, r.status, r.body, c.status)
		}
		if got := r.header.Get("Allow"); got != c.allow {
			t.Errorf("%s %s: Allow = %q, want %q", c.method, c.path, got, c.allow)
		}
	}
}

func TestRequestIDAndAccessLog(t *testing.T) {
	e := newEnv(t, nil)
	r := e.do(req{method: "GET", path: "/api/v1/vms", key: e.keyA, header: map[string]string{"X-Request-Id": "trace-42"}})
	if r.status != http.StatusOK || r.header.Get("X-Request-Id") != "trace-42" {
		t.Fatalf("caller's request id: %d %q", r.status, r.header.Get("X-Request-Id"))
	}
	r = e.call("GET", "/api/v1/health", "", "")
	if !uuidRE.MatchString(r.header.Get("X-Request-Id")) {
		t.Fatalf("generated request id %q", r.header.Get("X-Request-Id"))
	}
	r = e.do(req{method: "GET", path: "/api/v1/health", header: map[string]string{"X-Request-Id": "bad id\twith tab"}})
	if got := r.header.Get("X-Request-Id"); !uuidRE.MatchString(got) {
		t.Fatalf("unsafe request id was kept: %q", got)
	}

	var found bool
	for _, line := range strings.Split(e.logs.String(), "\n") {
		if !strings.Contains(line, `"http request"`) || !strings.Contains(line, "trace-42") {
			continue
		}
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatal(err)
		}
		found = rec["method"] == "GET" && rec["path"] == "/api/v1/vms" && rec["status"] == float64(200) &&
			rec["owner_id"] == e.ownerA && rec["duration"] != nil
	}
	if !found {
		t.Fatalf("no complete access log line for request trace-42 in:\n%s", e.logs.String())
	}
	if strings.Contains(e.logs.String(), e.keyA) || strings.Contains(e.logs.String(), "Bearer") {
		t.Fatal("credentials reached the log")
	}
}

// TestPanicBecomes500: a handler that panics (here: a server configured without a service) answers a JSON 500,
// logs the panic, and the server keeps serving.
func TestPanicBecomes500(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Service = nil })
	r := e.call("GET", "/api/v1/ready", "", "")
	if r.status != http.StatusInternalServerError || r.errCode() != client.CodeInternal {
		t.Fatalf("got %d %s", r.status, r.body)
	}
	if strings.Contains(string(r.body), "nil pointer") || strings.Contains(string(r.body), "goroutine") {
		t.Fatalf("the 500 leaks the panic: %s", r.body)
	}
	if !strings.Contains(e.logs.String(), "panic in handler") || !strings.Contains(e.logs.String(), "nil pointer") {
		t.Fatalf("panic not logged:\n%s", e.logs.String())
	}
	if r := e.call("GET", "/api/v1/health", "", ""); r.status != http.StatusOK {
		t.Fatalf("server unhealthy after a panic: %d", r.status)
	}
}

// TestAcceptedWithoutWorker covers the asynchronous answers while nothing consumes the queue: 202 with a pending
// task, still 202 when a ?wait ends first, and the resources readable and listable.
func TestAcceptedWithoutWorker(t *testing.T) {
	e := newEnv(t, nil)
	r := e.call("POST", "/api/v1/vms", e.keyA, `{"name":"first","vcpus":2,"memory_mb":256,"metadata":{"team":"x"}}`)
	if r.status != http.StatusAccepted {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	acc := decodeAs[client.VMAccepted](t, r)
	if !uuidRE.MatchString(acc.TaskID) || acc.Task == nil || acc.Task.ID != acc.TaskID || acc.Task.Status != "pending" ||
		acc.Task.Type != "vm:create" || acc.Task.Attempts != 0 {
		t.Fatalf("accepted task: %s", r.body)
	}
	if acc.VM.Status != "pending" || acc.VM.VCPUs != 2 || acc.VM.MemoryMB != 256 || acc.VM.Metadata["team"] != "x" {
		t.Fatalf("accepted vm: %+v", acc.VM)
	}

	r = e.call("POST", "/api/v1/vms?wait=150ms", e.keyA, `{"name":"second"}`)
	if r.status != http.StatusAccepted {
		t.Fatalf("create with a wait that ends first: %d %s", r.status, r.body)
	}
	if w := decodeAs[client.VMAccepted](t, r); w.Task == nil || w.Task.Status != "pending" || w.VM.Name != "second" {
		t.Fatalf("after wait: %s", r.body)
	}

	tk := decodeAs[client.Task](t, e.call("GET", "/api/v1/tasks/"+acc.TaskID, e.keyA, ""))
	if tk.ID != acc.TaskID || tk.VMID != acc.VM.ID || tk.Status != "pending" || tk.MaxRetries != 3 {
		t.Fatalf("task: %+v", tk)
	}

	list := decodeAs[client.VMList](t, e.call("GET", "/api/v1/vms?limit=1", e.keyA, ""))
	if len(list.VMs) != 1 || list.VMs[0].Name != "second" || list.NextCursor == "" {
		t.Fatalf("first page: %+v", list)
	}
	list = decodeAs[client.VMList](t, e.call("GET", "/api/v1/vms?limit=1&cursor="+list.NextCursor, e.keyA, ""))
	if len(list.VMs) != 1 || list.VMs[0].Name != "first" {
		t.Fatalf("second page: %+v", list)
	}
	for _, q := range []string{"?status=pending", "?status=running,pending", "?status=running&status=pending"} {
		if l := decodeAs[client.VMList](t, e.call("GET", "/api/v1/vms"+q, e.keyA, "")); len(l.VMs) != 2 {
			t.Errorf("%s: %d vms", q, len(l.VMs))
		}
	}
	if l := decodeAs[client.VMList](t, e.call("GET", "/api/v1/vms?status=running", e.keyA, "")); len(l.VMs) != 0 {
		t.Errorf("status=running: %+v", l.VMs)
	}
	el := e.call("GET", "/api/v1/vms/"+acc.VM.ID+"/executions", e.keyA, "")
	if el.status != http.StatusOK || !strings.Contains(string(el.body), `"executions":[]`) {
		t.Fatalf("executions of a new vm: %d %s", el.status, el.body)
	}

	// A VM no worker has picked up is deleted at once; the task says so.
	r = e.call("DELETE", "/api/v1/vms/"+acc.VM.ID, e.keyA, "")
	if r.status != http.StatusAccepted {
		t.Fatalf("delete: %d %s", r.status, r.body)
	}
	del := decodeAs[client.TaskAccepted](t, r)
	if del.Task == nil || del.Task.Type != "vm:delete" || del.Task.ID != del.TaskID {
		t.Fatalf("delete answer: %s", r.body)
	}
	if vm := decodeAs[client.VM](t, e.call("GET", "/api/v1/vms/"+acc.VM.ID, e.keyA, "")); vm.Status != "deleted" {
		t.Fatalf("vm after delete: %+v", vm)
	}
	if r := e.call("DELETE", "/api/v1/vms/"+acc.VM.ID, e.keyA, ""); r.status != http.StatusConflict {
		t.Fatalf("second delete: %d %s", r.status, r.body)
	}
	// The name of a deleted VM is free again.
	if r := e.call("POST", "/api/v1/vms", e.keyA, `{"name":"first"}`); r.status != http.StatusAccepted {
		t.Fatalf("reuse of a deleted vm's name: %d %s", r.status, r.body)
	}
}

func TestWaitIsBoundedByTheRequest(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxWait = time.Minute })
	if r := e.call("POST", "/api/v1/vms?wait=2m", e.keyA, `{"name":"a"}`); r.status != 400 ||
		!strings.Contains(r.errMessage(), "1m0s") {
		t.Fatalf("wait over the configured max: %d %s", r.status, r.body)
	}
	// A client that gives up ends the wait: the handler must return, not sit out the minute.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	hr, _ := http.NewRequestWithContext(ctx, "POST", e.srv.URL+"/api/v1/vms?wait=1m", strings.NewReader(`{"name":"b"}`))
	hr.Header.Set("Authorization", "Bearer "+e.keyA)
	hr.Header.Set("Content-Type", "application/json")
	if resp, err := e.srv.Client().Do(hr); err == nil {
		resp.Body.Close()
		t.Fatalf("got an answer (%d) to a request whose client gave up", resp.StatusCode)
	}
	// Bounded polling of the access log: the handler's return is what is awaited, and it has no other signal.
	deadline := time.Now().Add(10 * time.Second)
	for {
		var durations []time.Duration
		for _, line := range strings.Split(e.logs.String(), "\n") {
			var rec struct {
				Msg      string
				Path     string
				Status   int
				Duration time.Duration
			}
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "http request" && rec.Path == "/api/v1/vms" &&
				rec.Status != http.StatusBadRequest {
				durations = append(durations, rec.Duration)
			}
		}
		if len(durations) == 1 {
			if durations[0] > 30*time.Second {
				t.Fatalf("the handler waited %s after its client left", durations[0])
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the handler did not return after its client left:\n%s", e.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestCreateWithToolsAndNetwork: tools and the egress policy are normalized, stored and shown.
func TestCreateWithToolsAndNetwork(t *testing.T) {
	e := newEnv(t, nil)
	r := e.call("POST", "/api/v1/vms", e.keyA, `{"name":"tooled","tools":["jq","node@24"],"tool_versions":{"bun":"1"},
		"network":{"egress":{"allow_domains":["GitHub.com."],"deny_cidrs":["198.51.100.7/24"]}}}`)
	if r.status != http.StatusAccepted {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	acc := decodeAs[client.VMAccepted](t, r)
	got, err := e.st.VMs().Get(context.Background(), acc.VM.ID)
	if err != nil {
		t.Fatal(err)
	}
	for name, vm := range map[string]client.VM{"answer": acc.VM, "stored": ToVM(got)} {
		if strings.Join(vm.Tools, ",") != "jq,node@24,bun@1" {
			t.Errorf("%s tools = %q", name, vm.Tools)
		}
		if vm.Network == nil || strings.Join(vm.Network.Egress.AllowDomains, ",") != "github.com" ||
			strings.Join(vm.Network.Egress.DenyCIDRs, ",") != "198.51.100.0/24" {
			t.Errorf("%s network = %+v", name, vm.Network)
		}
	}
}
