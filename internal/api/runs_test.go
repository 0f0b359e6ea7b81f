package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/task"
	"github.com/aetherium/aetherium/pkg/client"
)

// putSecret stores a secret of key's owner through the API.
func (e *testEnv) putSecret(t *testing.T, key, name, value string) {
	t.Helper()
	if r := e.call("PUT", "/api/v1/secrets/"+name, key, `{"value":"`+value+`"}`); r.status/100 != 2 {
		t.Fatalf("put secret %s: %d %s", name, r.status, r.body)
	}
}

// counts is how many rows of each kind the store holds, to show that refused requests change nothing.
func (e *testEnv) runCounts(t *testing.T) string {
	t.Helper()
	ctx := context.Background()
	runs, err := e.st.Runs().List(ctx, store.RunFilter{Page: store.Page{Limit: 500}})
	if err != nil {
		t.Fatal(err)
	}
	vms, err := e.st.VMs().List(ctx, store.VMFilter{Page: store.Page{Limit: 500}})
	if err != nil {
		t.Fatal(err)
	}
	tasks, err := e.st.Tasks().List(ctx, store.TaskFilter{Page: store.Page{Limit: 500}})
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("runs=%d vms=%d tasks=%d", len(runs), len(vms), len(tasks))
}

func TestCreateRunRefusesBadInput(t *testing.T) {
	e := newEnv(t, nil)
	e.putSecret(t, e.keyA, "ANTHROPIC_API_KEY", "sk-ant-test")
	before := e.runCounts(t)
	ok := `"repo":{"url":"https://github.com/org/repo"},"prompt":"fix it"`
	for _, c := range []struct {
		name, body string
		status     int
		code, want string
	}{
		{"unknown agent", `{` + ok + `,"agent":"devin"}`, 422, client.CodeValidation, "known agents: claude-code"},
		{"file url", `{"repo":{"url":"file:///etc"},"prompt":"x"}`, 422, client.CodeValidation, "local repositories"},
		{"host path", `{"repo":{"url":"/srv/git/repo"},"prompt":"x"}`, 422, client.CodeValidation, "repo.url"},
		{"plain http", `{"repo":{"url":"http://github.com/org/repo"},"prompt":"x"}`, 422, client.CodeValidation, "use https"},
		{"credentials in url", `{"repo":{"url":"https://x:ghp_abc@github.com/org/repo"},"prompt":"x"}`, 422, client.CodeValidation, "credentials_secret"},
		{"option-like ref", `{"repo":{"url":"https://github.com/org/repo","ref":"--upload-pack=touch /x"},"prompt":"x"}`, 422, client.CodeValidation, "repo.ref"},
		{"no prompt", `{"repo":{"url":"https://github.com/org/repo"}}`, 422, client.CodeValidation, "prompt"},
		{"oversized prompt", `{"repo":{"url":"https://github.com/org/repo"},"prompt":"` + strings.Repeat("a", 100_001) + `"}`, 413, client.CodeTooLarge, "100000"},
		{"timeout too long", `{` + ok + `,"timeout_seconds":86401}`, 422, client.CodeValidation, "timeout_seconds"},
		{"negative timeout", `{` + ok + `,"timeout_seconds":-1}`, 422, client.CodeValidation, "timeout_seconds"},
		{"max turns", `{` + ok + `,"max_turns":100000}`, 422, client.CodeValidation, "max_turns"},
		{"missing secret_env secret", `{` + ok + `,"secret_env":{"NPM_TOKEN":"NPM"}}`, 422, client.CodeValidation, `secret \"NPM\" does not exist`},
		{"model key in env", `{` + ok + `,"env":{"ANTHROPIC_API_KEY":"sk-x"}}`, 422, client.CodeValidation, "credential proxy"},
		{"proxy variable in env", `{` + ok + `,"env":{"AETHERIUM_MODEL_PROXY":"1"}}`, 422, client.CodeValidation, "AETHERIUM_MODEL_PROXY"},
		{"push to an unknown host", `{"repo":{"url":"https://git.example.org/a/b"},"prompt":"x","push":{}}`, 422, client.CodeValidation, "git_hosts"},
		{"push without a token", `{` + ok + `,"push":{"branch":"fix"}}`, 422, client.CodeValidation, "GITHUB_TOKEN"},
		{"missing credentials secret", `{"repo":{"url":"https://github.com/org/repo","credentials_secret":"MY_TOKEN"},"prompt":"x"}`, 422, client.CodeValidation, "MY_TOKEN"},
		{"push onto the start branch", `{"repo":{"url":"https://github.com/org/repo","ref":"main"},"prompt":"x","push":{"branch":"main"}}`, 422, client.CodeValidation, "push.branch"},
		{"draft pr", `{` + ok + `,"push":{"draft_pr":true}}`, 422, client.CodeValidation, "GitHub integration"},
		{"bad vm", `{` + ok + `,"vm":{"memory_mb":1}}`, 422, client.CodeValidation, "vm.memory_mb"},
		{"unknown vm", `{` + ok + `,"vm":{"id":"6a0c0b57-5d0e-4a39-9f7c-0f3c2f9a1e11"}}`, 404, client.CodeNotFound, "vm"},
		{"unknown field", `{` + ok + `,"prompts":"x"}`, 400, client.CodeInvalidJSON, "prompts"},
	} {
		r := e.call("POST", "/api/v1/runs", e.keyA, c.body)
		if r.status != c.status || r.errCode() != c.code || !strings.Contains(string(r.body), c.want) {
			t.Errorf("%s: %d %s, want %d %s mentioning %q", c.name, r.status, r.body, c.status, c.code, c.want)
		}
	}
	if after := e.runCounts(t); after != before {
		t.Fatalf("refused requests changed the store: %s -> %s", before, after)
	}
	// Without the model key the default agent cannot run: refused, naming the secret.
	r := e.call("POST", "/api/v1/runs", e.keyB, `{`+ok+`}`)
	if r.status != 422 || !strings.Contains(string(r.body), "ANTHROPIC_API_KEY") {
		t.Fatalf("no model key: %d %s", r.status, r.body)
	}
}

func TestRunLifecycleWithoutWorker(t *testing.T) {
	e := newEnv(t, nil)
	e.putSecret(t, e.keyA, "ANTHROPIC_API_KEY", "sk-ant-test")
	e.putSecret(t, e.keyA, "GITHUB_TOKEN", "ghp_test")
	r := e.call("POST", "/api/v1/runs", e.keyA, `{"repo":{"url":"git@github.com:org/repo.git","ref":"main"},"prompt":"fix it",
		"env":{"API_TOKEN":"tok-123456789","LEVEL":"debug"},"push":{},"max_turns":5}`)
	if r.status != http.StatusAccepted {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	acc := decodeAs[client.RunAccepted](t, r)
	run := acc.Run
	if run.Status != "pending" || acc.TaskID == "" || run.TaskID != acc.TaskID || run.VMID == "" || run.Agent != "claude-code" ||
		run.TimeoutSeconds != 1800 || run.MaxTurns != 5 || r.header.Get("Location") != "/api/v1/runs/"+run.ID {
		t.Fatalf("accepted run: %+v (location %q)", run, r.header.Get("Location"))
	}
	if run.Env["API_TOKEN"] == "tok-123456789" || run.Env["LEVEL"] != "debug" {
		t.Fatalf("env is not masked: %v", run.Env)
	}
	// The run and its VM and task are stored before the answer; the run reaches github.com through the proxy.
	stored, err := e.st.Runs().Get(context.Background(), run.ID)
	if err != nil || !stored.Spec.GitProxy || stored.Spec.GitSecret != "GITHUB_TOKEN" || stored.Spec.VMSpec == nil ||
		stored.Spec.VMSpec.MemoryMB != 2048 {
		t.Fatalf("stored run: %+v %v", stored, err)
	}
	vm, err := e.st.VMs().Get(context.Background(), run.VMID)
	if err != nil || vm.Status != model.VMPending || vm.Name != "run-"+run.ID[:8] {
		t.Fatalf("the run's vm: %+v %v", vm, err)
	}
	for _, tool := range []string{"git", "claude-code"} {
		if !strings.Contains(strings.Join(vm.Tools, ","), tool) {
			t.Fatalf("the vm lacks the agent's tool %s: %v", tool, vm.Tools)
		}
	}
	// Another owner sees nothing of it.
	if r := e.call("GET", "/api/v1/runs/"+run.ID, e.keyB, ""); r.status != 404 {
		t.Fatalf("other owner: %d", r.status)
	}
	if l := decodeAs[client.RunList](t, e.call("GET", "/api/v1/runs", e.keyB, "")); len(l.Runs) != 0 {
		t.Fatalf("other owner lists %d runs", len(l.Runs))
	}
	l := decodeAs[client.RunList](t, e.call("GET", "/api/v1/runs?status=pending&repo=git@github.com:org/repo.git", e.keyA, ""))
	if len(l.Runs) != 1 || l.Runs[0].ID != run.ID {
		t.Fatalf("list: %+v", l)
	}
	if r := e.call("GET", "/api/v1/runs?status=bogus", e.keyA, ""); r.status != 422 {
		t.Fatalf("bad status filter: %d", r.status)
	}
	// No worker took it: a cancel ends it at once, with its end event, and its VM is forgotten by the worker later.
	r = e.call("POST", "/api/v1/runs/"+run.ID+"/cancel", e.keyA, "")
	if r.status != http.StatusAccepted || decodeAs[client.Run](t, r).Status != "cancelled" {
		t.Fatalf("cancel: %d %s", r.status, r.body)
	}
	if r := e.call("POST", "/api/v1/runs/"+run.ID+"/cancel", e.keyA, ""); r.status != http.StatusConflict {
		t.Fatalf("second cancel: %d %s", r.status, r.body)
	}
	sr := e.call("GET", "/api/v1/runs/"+run.ID+"/stream", e.keyA, "")
	if sr.status != 200 || !strings.Contains(sr.header.Get("Content-Type"), "text/event-stream") ||
		!strings.Contains(string(sr.body), "id: 1\nevent: end\n") || !strings.Contains(string(sr.body), `"status":"cancelled"`) {
		t.Fatalf("stream of a cancelled run: %d %q", sr.status, sr.body)
	}
	d := e.call("GET", "/api/v1/runs/"+run.ID+"/diff", e.keyA, "")
	if d.status != 200 || len(d.body) != 0 || !strings.HasPrefix(d.header.Get("Content-Type"), "text/x-diff") {
		t.Fatalf("diff of a run that never ran: %d %q", d.status, d.body)
	}
	ag := e.call("GET", "/api/v1/agents", e.keyA, "")
	var agents struct{ Agents []client.Agent }
	if err := json.Unmarshal(ag.body, &agents); err != nil || len(agents.Agents) == 0 || agents.Agents[0].Name != "claude-code" {
		t.Fatalf("agents: %s", ag.body)
	}
}

func TestRunStreamReplaysAndResumes(t *testing.T) {
	e := newEnv(t, nil)
	e.putSecret(t, e.keyA, "ANTHROPIC_API_KEY", "sk-ant-test")
	r := e.call("POST", "/api/v1/runs", e.keyA, `{"repo":{"url":"https://github.com/org/repo"},"prompt":"x"}`)
	run := decodeAs[client.RunAccepted](t, r).Run
	stored, _ := e.st.Runs().Get(context.Background(), run.ID)
	evs := []*model.RunEvent{
		{Type: model.RunEventStatus, Data: json.RawMessage(`{"status":"preparing","message":"cloning"}`)},
		{Type: model.RunEventAgent, Data: json.RawMessage(`{"type":"assistant","message":{"content":[{"type":"text","text":"hi"}]}}`)},
	}
	if err := e.svc.AppendRunEvents(context.Background(), stored, evs...); err != nil {
		t.Fatal(err)
	}
	if _, err := e.st.Runs().Update(context.Background(), run.ID, func(x *model.Run) error {
		x.Status = model.RunCompleted
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	end, _ := e.st.Runs().Get(context.Background(), run.ID)
	if err := e.svc.AppendRunEvents(context.Background(), end, &model.RunEvent{Type: model.RunEventEnd, Data: json.RawMessage(`{"status":"completed"}`)}); err != nil {
		t.Fatal(err)
	}
	full := string(e.call("GET", "/api/v1/runs/"+run.ID+"/stream", e.keyA, "").body)
	for _, want := range []string{"id: 1\nevent: status\n", "id: 2\nevent: agent\n", "id: 3\nevent: end\n", `"text":"hi"`} {
		if !strings.Contains(full, want) {
			t.Fatalf("stream lacks %q:\n%s", want, full)
		}
	}
	resumed := e.do(req{method: "GET", path: "/api/v1/runs/" + run.ID + "/stream", key: e.keyA, header: map[string]string{"Last-Event-ID": "2"}})
	if strings.Contains(string(resumed.body), "id: 1\n") || strings.Contains(string(resumed.body), "id: 2\n") ||
		!strings.Contains(string(resumed.body), "id: 3\nevent: end\n") {
		t.Fatalf("resumed stream:\n%s", resumed.body)
	}
	if bad := e.do(req{method: "GET", path: "/api/v1/runs/" + run.ID + "/stream", key: e.keyA, header: map[string]string{"Last-Event-ID": "x"}}); bad.status != 400 {
		t.Fatalf("bad Last-Event-ID: %d", bad.status)
	}
}

// TestRunOfALostWorkerFails: a run whose worker stopped sending heartbeats long ago is failed, with the reason,
// when it is read; one whose worker is alive is left alone.
func TestRunOfALostWorkerFails(t *testing.T) {
	e := newEnv(t, nil)
	e.putSecret(t, e.keyA, "ANTHROPIC_API_KEY", "sk-ant-test")
	ctx := context.Background()
	mk := func(worker string) string {
		r := e.call("POST", "/api/v1/runs", e.keyA, `{"repo":{"url":"https://github.com/org/repo"},"prompt":"x"}`)
		id := decodeAs[client.RunAccepted](t, r).Run.ID
		if _, err := e.st.Runs().Update(ctx, id, func(x *model.Run) error {
			x.Status, x.WorkerID = model.RunRunning, worker
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return id
	}
	now := time.Now().UTC()
	for id, beat := range map[string]time.Time{"w-lost": now.Add(-10 * time.Minute), "w-alive": now} {
		if err := e.st.Workers().Upsert(ctx, &model.Worker{ID: id, Hostname: "h", Backend: "qemu", Status: "active",
			Capacity: 1, StartedAt: beat, LastHeartbeat: beat}); err != nil {
			t.Fatal(err)
		}
	}
	lost, alive, gone := mk("w-lost"), mk("w-alive"), mk("w-never-registered")
	for id, want := range map[string]string{lost: "failed", alive: "running", gone: "failed"} {
		r := decodeAs[client.Run](t, e.call("GET", "/api/v1/runs/"+id, e.keyA, ""))
		if r.Status != want {
			t.Fatalf("run on %s: %s (%q), want %s", r.WorkerID, r.Status, r.Error, want)
		}
		if want == "failed" && (!strings.Contains(r.Error, "lost") || !strings.Contains(r.Error, r.WorkerID)) {
			t.Fatalf("reason: %q", r.Error)
		}
	}
	// Its stream ends with the failure.
	sr := e.call("GET", "/api/v1/runs/"+lost+"/stream", e.keyA, "")
	if !strings.Contains(string(sr.body), "event: end") || !strings.Contains(string(sr.body), `"failed"`) {
		t.Fatalf("stream of the lost run:\n%s", sr.body)
	}
}

// TestLostRunsAreEndedUnread: the gateway's sweep (task.Service.ReapLostRuns) fails runs of a lost worker that
// nobody reads, and announces each end on task.TopicRuns, which notifications and integrations wait on; a run on a
// live worker and a finished run are left alone, and a second sweep ends nothing more.
func TestLostRunsAreEndedUnread(t *testing.T) {
	e := newEnv(t, nil)
	e.putSecret(t, e.keyA, "ANTHROPIC_API_KEY", "sk-ant-test")
	ctx := context.Background()
	mk := func(worker string, st model.RunStatus) string {
		r := e.call("POST", "/api/v1/runs", e.keyA, `{"repo":{"url":"https://github.com/org/repo"},"prompt":"x"}`)
		id := decodeAs[client.RunAccepted](t, r).Run.ID
		if _, err := e.st.Runs().Update(ctx, id, func(x *model.Run) error {
			x.Status, x.WorkerID = st, worker
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return id
	}
	now := time.Now().UTC()
	for id, beat := range map[string]time.Time{"w-lost": now.Add(-10 * time.Minute), "w-alive": now} {
		if err := e.st.Workers().Upsert(ctx, &model.Worker{ID: id, Hostname: "h", Backend: "qemu", Status: "active",
			Capacity: 1, StartedAt: beat, LastHeartbeat: beat}); err != nil {
			t.Fatal(err)
		}
	}
	sub, err := e.bus.Subscribe(ctx, task.TopicRuns)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	lostRunning, lostPreparing := mk("w-lost", model.RunRunning), mk("w-lost", model.RunPreparing)
	alive, done := mk("w-alive", model.RunRunning), mk("w-lost", model.RunCompleted)
	n, err := e.svc.ReapLostRuns(ctx)
	if err != nil || n != 2 {
		t.Fatalf("first sweep ended %d runs (%v), want 2", n, err)
	}
	for id, want := range map[string]model.RunStatus{lostRunning: model.RunFailed, lostPreparing: model.RunFailed,
		alive: model.RunRunning, done: model.RunCompleted} {
		r, err := e.st.Runs().Get(ctx, id)
		if err != nil || r.Status != want {
			t.Fatalf("run %s after the sweep: %+v %v, want %s", id, r, err, want)
		}
	}
	ended := map[string]bool{}
	for len(ended) < 2 {
		select {
		case ev := <-sub.C():
			if ev.Type != task.EventRunFinished || ev.OwnerID != e.ownerA || !strings.Contains(string(ev.Data), `"failed"`) {
				t.Fatalf("event: %+v (%s)", ev, ev.Data)
			}
			ended[ev.Subject] = true
		case <-time.After(5 * time.Second):
			t.Fatalf("end events seen: %v, want %s and %s", ended, lostRunning, lostPreparing)
		}
	}
	if !ended[lostRunning] || !ended[lostPreparing] {
		t.Fatalf("end events for %v", ended)
	}
	if n, err := e.svc.ReapLostRuns(ctx); err != nil || n != 0 {
		t.Fatalf("second sweep ended %d (%v)", n, err)
	}
}
