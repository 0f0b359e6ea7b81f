package api

import (
	"net/http"
	"strings"
	"testing"

	"github.com/go-chi/chi/v5"
	"github.com/google/uuid"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/pkg/client"
)

// TestForeignIDReadsAsMissing walks every route of the router that takes an id and asks for one of alice's
// resources with bob's key, then for an id nobody has. The two answers must be the same status and, once the id
// itself is replaced by a placeholder, the same bytes: an id of another owner cannot be told from a missing one.
func TestForeignIDReadsAsMissing(t *testing.T) {
	e := webhookEnv(t)
	a := e.createVM(e.keyA, "mine")
	for _, st := range []model.VMStatus{model.VMCreating, model.VMRunning} {
		if _, err := e.st.VMs().Update(t.Context(), a.VM.ID, func(vm *model.VM) error {
			vm.Status, vm.WorkerID = st, testWorkerID
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	e.registerWorker(testWorkerID)
	ex := decodeAs[client.ExecuteAccepted](t, e.call("POST", "/api/v1/vms/"+a.VM.ID+"/execute", e.keyA, `{"command":"id"}`))
	job := decodeAs[client.JobAccepted](t, e.call("POST", "/api/v1/jobs", e.keyA,
		`{"vm_id":"`+a.VM.ID+`","commands":[{"command":"id"}]}`))
	e.putSecret(t, e.keyA, "ANTHROPIC_API_KEY", "sk-test")
	run := decodeAs[client.RunAccepted](t, e.call("POST", "/api/v1/runs", e.keyA,
		`{"repo":{"url":"https://github.com/org/repo"},"prompt":"x"}`))
	e.putSecret(t, e.keyA, "alices", "v")
	link := decodeAs[client.IntegrationLink](t, e.call("POST", "/api/v1/integrations/links", e.keyA,
		`{"integration":"test","source":"github.com/o/r"}`))
	rule := decodeAs[client.NotificationRule](t, e.call("POST", "/api/v1/notifications/rules", e.keyA,
		`{"events":["run.finished"],"integration":"slack","destination":"C1"}`))
	if ex.ExecutionID == "" || job.JobID == "" || run.Run == nil || link.ID == "" || rule.ID == "" {
		t.Fatalf("setup: execution %q job %q run %v link %q rule %q", ex.ExecutionID, job.JobID, run.Run, link.ID, rule.ID)
	}
	// The resource of alice's that each route's first parameter names, by the route's leading segment.
	ids := map[string]string{
		"/api/v1/vms/": a.VM.ID, "/api/v1/executions/": ex.ExecutionID, "/api/v1/tasks/": a.TaskID,
		"/api/v1/jobs/": job.JobID, "/api/v1/runs/": run.Run.ID, "/api/v1/secrets/": "alices",
		"/api/v1/integrations/links/": link.ID, "/api/v1/notifications/rules/": rule.ID,
	}
	bodies := map[string]string{
		"POST /api/v1/vms/{id}/execute":                `{"command":"id"}`,
		"POST /api/v1/vms/{id}/tools":                  `{"tools":["git"]}`,
		"POST /api/v1/vms/{id}/fs/mkdir":               `{"path":"/tmp/x"}`,
		"POST /api/v1/vms/{id}/processes":              `{"command":"id"}`,
		"PUT /api/v1/secrets/{name}":                   `{"value":"v"}`,
		"POST /api/v1/vms/{id}/processes/{pid}/signal": `{"signal":"TERM"}`,
	}
	before := e.counts()
	tried := 0
	err := chi.Walk(newServer(Config{Service: e.svc}).router, func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		if !strings.Contains(route, "{") || strings.Contains(route, "{integration}") || strings.Contains(route, "{seq}") {
			return nil
		}
		if strings.HasPrefix(route, "/api/v1/workers/") || strings.HasPrefix(route, "/api/v1/quotas/") ||
			strings.HasPrefix(route, "/api/v1/apikeys/") {
			return nil // admins' routes: they name workers and owners of the whole installation, not one owner's resources
		}
		if method == "PUT" && strings.HasPrefix(route, "/api/v1/secrets/") {
			return nil // a PUT of a name bob does not have creates bob's own secret: there is nothing to hide
		}
		var prefix, foreign string
		for p, id := range ids {
			if strings.HasPrefix(route, p) {
				prefix, foreign = p, id
			}
		}
		if prefix == "" {
			t.Errorf("%s %s: the test does not know which resource this route names; add it", method, route)
			return nil
		}
		missing := uuid.NewString()
		if prefix == "/api/v1/secrets/" {
			missing = "nobodys"
		}
		path := func(id string) string {
			rest := strings.TrimPrefix(route, prefix)
			_, rest, _ = strings.Cut(rest, "}")
			p := prefix + id + strings.ReplaceAll(rest, "{pid}", "7")
			if strings.Contains(p, "/fs") || strings.HasSuffix(p, "/files") {
				p += "?path=/etc/hostname"
			}
			return p
		}
		body := bodies[method+" "+route]
		send := func(p string) response {
			if strings.HasSuffix(route, "/shell") {
				return e.do(req{method: method, path: p, key: e.keyB, header: map[string]string{
					"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
					"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}})
			}
			return e.call(method, p, e.keyB, body)
		}
		f, m := send(path(foreign)), send(path(missing))
		tried++
		if f.status != http.StatusNotFound || f.errCode() != client.CodeNotFound {
			t.Errorf("%s %s, another owner's id: %d %s, want 404 not_found", method, route, f.status, f.body)
		}
		fb := strings.ReplaceAll(string(f.body), foreign, "<id>")
		mb := strings.ReplaceAll(string(m.body), missing, "<id>")
		if f.status != m.status || fb != mb {
			t.Errorf("%s %s: another owner's id answers %d %s, a missing id %d %s", method, route, f.status, fb, m.status, mb)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if tried < 25 {
		t.Fatalf("only %d id routes tried", tried)
	}
	if after := e.counts(); after != before {
		t.Fatalf("bob's requests changed the store: %+v -> %+v", before, after)
	}
	t.Logf("%d id routes give the same answer for another owner's id and a missing one", tried)
}
