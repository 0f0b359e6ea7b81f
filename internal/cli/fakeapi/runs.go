package fakeapi

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/aetherium/aetherium/internal/agents"
	"github.com/aetherium/aetherium/internal/gitrepo"
	"github.com/aetherium/aetherium/pkg/client"
)

// Agent runs, as internal/api/runs.go and internal/task/runs.go answer them: the same checks and messages (422 for
// an unknown agent naming the known ones, a bad repository URL, a missing secret naming it, out-of-range numbers;
// 413 for a prompt over MaxPromptBytes), 202 with the run, and the transcript as server-sent events with ids.
//
// No worker runs: a new run plays its RunPlan at once (every event stored, then its end) unless the plan holds
// it, in which case it stays running until CancelRun (which ends it cancelled, as a worker would), EndRun or
// AppendRunEvents with an end event. Streams are live: a held run's stream sends what is appended as it comes.

// MaxPromptBytes bounds a run's prompt (internal/task.MaxPromptBytes).
const MaxPromptBytes = 100_000

// RunStep is an event of a planned transcript: Data is marshalled (a json.RawMessage or []byte is kept as is).
type RunStep struct {
	Type string
	Data any
}

// RunPlan is what a run does once created.
type RunPlan struct {
	Steps []RunStep
	// Status is how the run ends (completed, failed or cancelled) after its steps; "" holds it running.
	Status string
	Error  string
	Result *client.RunResult
	Usage  client.RunUsage
	Diff   string
}

type runState struct {
	run    client.Run
	events []client.RunEvent
	diff   []byte
}

// SetRunPlan sets what the runs created from now on do (default: DefaultRunPlan).
func (s *Server) SetRunPlan(f func(r client.Run) RunPlan) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.runPlan = f
}

// SetSecrets sets the names of the owner's secrets, which runs check (default: ANTHROPIC_API_KEY).
func (s *Server) SetSecrets(names ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.secrets = slices.Clone(names)
}

// SetStreamBreak makes every run stream break after n events (0: never): it sends half of the next event and cuts
// the connection, as a proxy's timeout or a server restart would.
func (s *Server) SetStreamBreak(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.streamBreak = n
}

// Run returns a stored run.
func (s *Server) Run(id string) (client.Run, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rs, ok := s.runs[id]
	if !ok {
		return client.Run{}, false
	}
	return rs.run, true
}

// RunEvents returns a run's transcript as stored.
func (s *Server) RunEvents(id string) []client.RunEvent {
	s.mu.Lock()
	defer s.mu.Unlock()
	if rs, ok := s.runs[id]; ok {
		return slices.Clone(rs.events)
	}
	return nil
}

// AppendRunEvents adds events to a run's transcript; an end event also ends the run with the end's status.
func (s *Server) AppendRunEvents(id string, steps ...RunStep) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rs := s.runs[id]
	for _, st := range steps {
		s.appendEvent(rs, st.Type, st.Data)
		if st.Type == "end" {
			var end client.RunEnd
			_ = json.Unmarshal(rs.events[len(rs.events)-1].Data, &end)
			now := time.Now().UTC()
			rs.run.Status, rs.run.Error, rs.run.CompletedAt, rs.run.UpdatedAt = end.Status, end.Error, &now, now
		}
	}
}

// EndRun ends a held run with status and error, as a worker would (its end event included).
func (s *Server) EndRun(id, status, errMsg string) {
	s.AppendRunEvents(id, RunStep{Type: "end", Data: client.RunEnd{Status: status, Error: errMsg}})
}

// appendEvent stores one event and wakes the streams. Called with the mutex held.
func (s *Server) appendEvent(rs *runState, typ string, data any) {
	var raw json.RawMessage
	switch d := data.(type) {
	case json.RawMessage:
		raw = d
	case []byte:
		raw = d
	case string:
		raw = json.RawMessage(d)
	default:
		raw, _ = json.Marshal(d)
	}
	rs.events = append(rs.events, client.RunEvent{Seq: int64(len(rs.events) + 1), Type: typ, Data: raw, Time: time.Now().UTC()})
	close(s.runChanged)
	s.runChanged = make(chan struct{})
}

// serveRuns answers the runs and agents routes but the stream; it reports whether the route was one of them.
// Called with the mutex held.
func (s *Server) serveRuns(w http.ResponseWriter, r *http.Request, parts []string) bool {
	switch {
	case len(parts) == 1 && parts[0] == "agents" && r.Method == http.MethodGet:
		out := struct {
			Agents []client.Agent `json:"agents"`
		}{Agents: []client.Agent{}}
		for _, a := range agents.Default().All() {
			out.Agents = append(out.Agents, client.Agent{Name: a.Name, Description: a.Description, Command: a.Command,
				Tools: a.Tools, User: a.User, Output: a.Output, Proxy: a.Proxy})
		}
		writeJSON(w, http.StatusOK, out)
	case len(parts) == 1 && parts[0] == "runs" && r.Method == http.MethodPost:
		s.createRun(w, r)
	case len(parts) == 1 && parts[0] == "runs" && r.Method == http.MethodGet:
		s.listRuns(w, r)
	case len(parts) == 2 && parts[0] == "runs" && r.Method == http.MethodGet:
		if rs := s.findRun(w, parts[1]); rs != nil {
			writeJSON(w, http.StatusOK, rs.run)
		}
	case len(parts) == 3 && parts[0] == "runs" && parts[2] == "diff" && r.Method == http.MethodGet:
		if rs := s.findRun(w, parts[1]); rs != nil {
			w.Header().Set("Content-Type", "text/x-diff; charset=utf-8")
			w.Header().Set("Content-Length", strconv.Itoa(len(rs.diff)))
			w.WriteHeader(http.StatusOK)
			_, _ = w.Write(rs.diff)
		}
	case len(parts) == 3 && parts[0] == "runs" && parts[2] == "cancel" && r.Method == http.MethodPost:
		s.cancelRun(w, parts[1])
	default:
		return false
	}
	return true
}

func (s *Server) findRun(w http.ResponseWriter, id string) *runState {
	if uuid.Validate(id) != nil || len(id) != 36 {
		writeErr(w, http.StatusNotFound, client.CodeNotFound, fmt.Sprintf("run %q: not found", id))
		return nil
	}
	rs, ok := s.runs[id]
	if !ok {
		writeErr(w, http.StatusNotFound, client.CodeNotFound, "run "+id+": not found")
		return nil
	}
	return rs
}

func invalidRun(w http.ResponseWriter, field, format string, a ...any) {
	writeErr(w, http.StatusUnprocessableEntity, client.CodeValidation, field+": "+fmt.Sprintf(format, a...))
}

func (s *Server) createRun(w http.ResponseWriter, r *http.Request) {
	var req client.CreateRunRequest
	if !decode(w, r, &req) {
		return
	}
	cat := agents.Default()
	name := req.Agent
	if name == "" {
		name = agents.DefaultAgent
	}
	maxSec := int((24 * time.Hour).Seconds())
	switch {
	case strings.TrimSpace(req.Prompt) == "":
		invalidRun(w, "prompt", "is required")
		return
	case len(req.Prompt) > MaxPromptBytes:
		writeErr(w, http.StatusRequestEntityTooLarge, client.CodeTooLarge,
			fmt.Sprintf("prompt: is %d bytes; at most %d are allowed", len(req.Prompt), MaxPromptBytes))
		return
	}
	ag, err := cat.Get(name)
	if err != nil {
		invalidRun(w, "agent", "unknown agent %q; known agents: %s", name, strings.Join(cat.Names(), ", "))
		return
	}
	repo, err := gitrepo.Parse(req.Repo.URL)
	if err != nil {
		invalidRun(w, "repo.url", "%v", err)
		return
	}
	if req.Repo.Ref != "" {
		if err := gitrepo.CheckRef(req.Repo.Ref); err != nil {
			invalidRun(w, "repo.ref", "%v", err)
			return
		}
	}
	switch {
	case req.MaxTurns < 0 || req.MaxTurns > 1000:
		invalidRun(w, "max_turns", "must be between 1 and %d, or 0 for the agent's default (got %d)", 1000, req.MaxTurns)
		return
	case req.TimeoutSeconds < 0 || req.TimeoutSeconds > maxSec:
		invalidRun(w, "timeout_seconds", "must be between 1 and %d, or 0 for the default %d (got %d)", maxSec, 1800, req.TimeoutSeconds)
		return
	}
	for v, sec := range req.SecretEnv {
		if !slices.Contains(s.secrets, sec) {
			invalidRun(w, "secret_env", "%s: secret %q does not exist (create it with PUT /api/v1/secrets/%s)", v, sec, sec)
			return
		}
	}
	if p := req.Push; p != nil && p.Branch != "" {
		if err := gitrepo.CheckRef(p.Branch); err != nil {
			invalidRun(w, "push.branch", "%v", err)
			return
		}
		if p.Branch == req.Repo.Ref {
			invalidRun(w, "push.branch", "must differ from repo.ref: a run pushes a branch of its own, never the one it started from")
			return
		}
	}
	gitHosts := map[string]string{"github.com": "GITHUB_TOKEN", "gitlab.com": "GITLAB_TOKEN"}
	hostSecret, known := gitHosts[repo.Host]
	if !known && (req.Repo.CredentialsSecret != "" || req.Push != nil) {
		invalidRun(w, "repo.url", "%s is not a git host of the credential proxy (known: github.com, gitlab.com; operators add more with git_hosts): "+
			"credentials_secret and push need it, since the VM never holds a git credential", repo.Host)
		return
	}
	need := [][2]string{}
	if ag.UsesProxy(agents.ProxyAnthropic) {
		need = append(need, [2]string{"ANTHROPIC_API_KEY", "agent " + name + " (the credential proxy calls the Anthropic API with it)"})
	}
	if req.Repo.CredentialsSecret != "" {
		need = append(need, [2]string{req.Repo.CredentialsSecret, "the repository's git token (repo.credentials_secret)"})
	} else if req.Push != nil {
		need = append(need, [2]string{hostSecret, "pushing to " + repo.Host + " (its git token)"})
	}
	for _, n := range need {
		if !slices.Contains(s.secrets, n[0]) {
			invalidRun(w, "secrets", "secret %s does not exist; it is needed by %s (create it with `aetherium secret set %s` or PUT /api/v1/secrets/%s)",
				n[0], n[1], n[0], n[0])
			return
		}
	}
	now := time.Now().UTC()
	timeout := req.TimeoutSeconds
	if timeout == 0 {
		timeout = 1800
	}
	tools := slices.Clone(ag.Tools)
	for _, t := range req.Tools {
		if !slices.Contains(tools, t) {
			tools = append(tools, t)
		}
	}
	run := client.Run{
		ID: uuid.NewString(), Status: "pending", Repo: req.Repo, Prompt: req.Prompt, Agent: name, Model: req.Model,
		MaxTurns: req.MaxTurns, TimeoutSeconds: timeout, Tools: tools, Env: req.Env, SecretEnv: req.SecretEnv,
		KeepVM: req.KeepVM, CreatedAt: now, UpdatedAt: now,
	}
	if req.Push != nil {
		run.Push = &client.RunPush{Branch: req.Push.Branch, DraftPR: req.Push.DraftPR}
	}
	var made *client.VM
	if req.VM != nil && req.VM.ID != "" {
		vm := s.findVM(w, req.VM.ID)
		if vm == nil {
			return
		}
		if vm.Status != "running" {
			writeErr(w, http.StatusConflict, client.CodeVMNotRunning, fmt.Sprintf("vm %s is %s", vm.ID, vm.Status))
			return
		}
		run.VMID = vm.ID
	} else {
		vreq := client.CreateVMRequest{Name: "run-" + run.ID[:8], MemoryMB: 2048, VCPUs: 2}
		if req.VM != nil {
			if req.VM.MemoryMB != 0 {
				vreq.MemoryMB = req.VM.MemoryMB
			}
			if req.VM.VCPUs != 0 {
				vreq.VCPUs = req.VM.VCPUs
			}
		}
		if !s.validateVM(w, vreq) {
			return
		}
		made = s.newVM(vreq)
		run.VMID = made.ID
	}
	ts := s.newTask("run:agent", run.VMID, func(*client.Task) {})
	run.TaskID = ts.task.ID
	rs := &runState{run: run}
	s.runs[run.ID] = rs
	s.runOrder = append(s.runOrder, run.ID)
	accepted := run

	plan := DefaultRunPlan(run)
	if s.runPlan != nil {
		plan = s.runPlan(run)
	}
	start := time.Now().UTC()
	rs.run.Status, rs.run.WorkerID, rs.run.StartedAt = "running", "worker-1", &start
	if made != nil {
		made.Status, made.WorkerID, made.StartedAt = "running", "worker-1", &start
	}
	for _, st := range plan.Steps {
		s.appendEvent(rs, st.Type, st.Data)
	}
	rs.run.Usage, rs.run.Result, rs.diff = plan.Usage, plan.Result, []byte(plan.Diff)
	if plan.Status != "" {
		rs.run.Status, rs.run.Error, rs.run.CompletedAt, rs.run.UpdatedAt = plan.Status, plan.Error, &start, start
		s.appendEvent(rs, "end", client.RunEnd{Status: plan.Status, Error: plan.Error})
		if made != nil && !run.KeepVM {
			made.Status, made.StoppedAt = "deleted", &start
		}
	}
	w.Header().Set("Location", "/api/v1/runs/"+run.ID)
	writeJSON(w, http.StatusAccepted, client.RunAccepted{TaskID: run.TaskID, Run: &accepted})
}

func (s *Server) listRuns(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit := 50
	if raw := q.Get("limit"); raw != "" {
		n, err := strconv.Atoi(raw)
		if err != nil {
			writeErr(w, http.StatusBadRequest, client.CodeBadRequest, fmt.Sprintf("limit: %q is not an integer", raw))
			return
		}
		if n < 1 || n > 500 {
			invalidRun(w, "limit", "must be between 1 and 500")
			return
		}
		limit = n
	}
	var statuses []string
	for _, v := range q["status"] {
		for _, st := range strings.Split(v, ",") {
			if st = strings.TrimSpace(st); st == "" {
				continue
			}
			if !slices.Contains([]string{"pending", "preparing", "running", "completed", "failed", "cancelled"}, st) {
				invalidRun(w, "status", "unknown run status %q", st)
				return
			}
			statuses = append(statuses, st)
		}
	}
	vmID, repo, cursor := q.Get("vm_id"), q.Get("repo"), q.Get("cursor")
	if vmID != "" && uuid.Validate(vmID) != nil {
		invalidRun(w, "vm_id", "is not a vm id")
		return
	}
	if cursor != "" && uuid.Validate(cursor) != nil {
		invalidRun(w, "cursor", "is not a cursor returned by this API")
		return
	}
	out := client.RunList{Runs: []client.Run{}}
	skipping := cursor != ""
	for i := len(s.runOrder) - 1; i >= 0 && len(out.Runs) < limit; i-- {
		run := s.runs[s.runOrder[i]].run
		if skipping {
			skipping = run.ID != cursor
			continue
		}
		if (len(statuses) == 0 || slices.Contains(statuses, run.Status)) && (vmID == "" || run.VMID == vmID) &&
			(repo == "" || run.Repo.URL == repo) {
			out.Runs = append(out.Runs, run)
		}
	}
	if len(out.Runs) == limit {
		out.NextCursor = out.Runs[len(out.Runs)-1].ID
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) cancelRun(w http.ResponseWriter, id string) {
	rs := s.findRun(w, id)
	if rs == nil {
		return
	}
	switch rs.run.Status {
	case "completed", "failed", "cancelled":
		writeErr(w, http.StatusConflict, client.CodeConflict, fmt.Sprintf("run %s is already %s", id, rs.run.Status))
		return
	}
	rs.run.CancelRequested = true
	answer := rs.run
	// The worker sees the cancel, kills the agent and ends the run.
	now := time.Now().UTC()
	rs.run.Status, rs.run.Error, rs.run.CompletedAt, rs.run.UpdatedAt = "cancelled", "cancelled while the agent was running", &now, now
	s.appendEvent(rs, "end", client.RunEnd{Status: rs.run.Status, Error: rs.run.Error})
	writeJSON(w, http.StatusAccepted, answer)
}

// streamRun answers GET /runs/{id}/stream without the server's lock held while it waits: the stored events after
// Last-Event-ID (or ?after), then the new ones as they are appended, until the end event.
func (s *Server) streamRun(w http.ResponseWriter, r *http.Request, id string) {
	var after int64
	for _, raw := range []string{r.Header.Get("Last-Event-ID"), r.URL.Query().Get("after")} {
		if raw == "" {
			continue
		}
		n, err := strconv.ParseInt(raw, 10, 64)
		if err != nil || n < 0 {
			writeErr(w, http.StatusBadRequest, client.CodeBadRequest, fmt.Sprintf("Last-Event-ID/after: %q is not a non-negative event number", raw))
			return
		}
		after = n
	}
	s.mu.Lock()
	rs := s.findRun(w, id)
	limit := s.streamBreak
	s.mu.Unlock()
	if rs == nil {
		return
	}
	flusher, _ := w.(http.Flusher)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	fmt.Fprintf(w, ": run %s\n\n", id)
	flusher.Flush()
	sent := 0
	for {
		s.mu.Lock()
		var pending []client.RunEvent
		for _, e := range rs.events {
			if e.Seq > after {
				pending = append(pending, e)
			}
		}
		changed := s.runChanged
		s.mu.Unlock()
		for _, e := range pending {
			var b bytes.Buffer // as the server encodes it: no HTML escaping, one line
			enc := json.NewEncoder(&b)
			enc.SetEscapeHTML(false)
			_ = enc.Encode(e)
			frame := fmt.Sprintf("id: %d\nevent: %s\ndata: %s\n", e.Seq, e.Type, b.Bytes())
			if limit > 0 && sent == limit {
				// Half an event, then the connection is cut: the client must drop it and resume before it.
				_, _ = fmt.Fprint(w, frame[:len(frame)/2])
				flusher.Flush()
				panic(http.ErrAbortHandler)
			}
			_, _ = fmt.Fprint(w, frame)
			flusher.Flush()
			sent++
			after = e.Seq
			if e.Type == "end" {
				return
			}
		}
		select {
		case <-changed:
		case <-r.Context().Done():
			return
		}
	}
}

// DefaultRunPlan is a realistic claude-code run: the worker's steps, the agent's stream-json (a file written, a
// failing test, an edit, a tool this CLI has no special line for), a line of stderr, the result, and a push when
// the run asks for one; it completes with a diff of two files.
func DefaultRunPlan(r client.Run) RunPlan {
	ws := "/home/agent/runs/" + r.ID + "/repo"
	if repo, err := gitrepo.Parse(r.Repo.URL); err == nil {
		ws = "/home/agent/runs/" + r.ID + "/" + repo.Name()
	}
	agent := func(v string) RunStep { return RunStep{Type: "agent", Data: json.RawMessage(v)} }
	status := func(st, msg string) RunStep {
		return RunStep{Type: "status", Data: map[string]string{"status": st, "message": msg}}
	}
	ref := ""
	if r.Repo.Ref != "" {
		ref = " at " + r.Repo.Ref
	}
	steps := []RunStep{
		status("preparing", "creating vm "+r.VMID),
		status("preparing", "cloning "+r.Repo.URL+ref),
		status("running", "agent "+r.Agent+" started"),
		agent(`{"type":"system","subtype":"init","cwd":"` + ws + `","session_id":"s-1","tools":["Bash","Edit","Read","Write","Grep"],"model":"claude-sonnet-4-5","permissionMode":"bypassPermissions"}`),
		agent(`{"type":"assistant","message":{"id":"msg_1","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"I'll add the file."},{"type":"tool_use","id":"toolu_1","name":"Write","input":{"file_path":"` + ws + `/NOTES.md","content":"# Notes\n"}}],"stop_reason":"tool_use","usage":{"input_tokens":1200,"output_tokens":80}},"session_id":"s-1"}`),
		agent(`{"type":"user","message":{"role":"user","content":[{"tool_use_id":"toolu_1","type":"tool_result","content":"File created successfully at: ` + ws + `/NOTES.md"}]},"session_id":"s-1"}`),
		agent(`{"type":"assistant","message":{"id":"msg_2","role":"assistant","content":[{"type":"tool_use","id":"toolu_2","name":"Bash","input":{"command":"go test ./...\necho done","description":"Run the tests"}}]},"session_id":"s-1"}`),
		{Type: "stderr", Data: map[string]string{"text": "warning: \x1b[31mcolour\x1b[0m from the agent"}},
		agent(`{"type":"user","message":{"role":"user","content":[{"tool_use_id":"toolu_2","type":"tool_result","is_error":true,"content":[{"type":"text","text":"--- FAIL: TestParse (0.00s)\n    parse_test.go:12: got 1, want 2\nFAIL\nFAIL\texample.com/m\t0.003s\nexit status 1"}]}]},"session_id":"s-1"}`),
		agent(`{"type":"assistant","message":{"id":"msg_3","role":"assistant","content":[{"type":"tool_use","id":"toolu_3","name":"Edit","input":{"file_path":"` + ws + `/parse.go","old_string":"return 1","new_string":"return 2"}}]},"session_id":"s-1"}`),
		agent(`{"type":"user","message":{"role":"user","content":[{"tool_use_id":"toolu_3","type":"tool_result","content":"The file ` + ws + `/parse.go has been updated."}]},"session_id":"s-1"}`),
		agent(`{"type":"assistant","message":{"id":"msg_4","role":"assistant","content":[{"type":"tool_use","id":"toolu_4","name":"Grep","input":{"pattern":"TODO","path":"."}}]},"session_id":"s-1"}`),
		agent(`{"type":"user","message":{"role":"user","content":[{"tool_use_id":"toolu_4","type":"tool_result","content":"No matches found"}]},"session_id":"s-1"}`),
		agent(`{"type":"assistant","message":{"id":"msg_5","role":"assistant","content":[{"type":"text","text":"All tests pass now."}]},"session_id":"s-1"}`),
		agent(`{"type":"result","subtype":"success","is_error":false,"duration_ms":41234,"num_turns":6,"result":"Done: added NOTES.md and fixed TestParse.","session_id":"s-1","total_cost_usd":0.0123,"usage":{"input_tokens":5400,"output_tokens":640}}`),
	}
	exit := 0
	cost, agentCost := 0.0258, 0.0123
	res := &client.RunResult{
		Text: "Done: added NOTES.md and fixed TestParse.", Subtype: "success", ExitCode: &exit, Turns: 6,
		AgentCostUSD: &agentCost, BaseCommit: "1111111111111111111111111111111111111111",
		HeadCommit: "2222222222222222222222222222222222222222", DiffStat: &client.DiffStat{FilesChanged: 2, Insertions: 10, Deletions: 2},
		Commits: []client.RunCommit{{SHA: "2222222222222222222222222222222222222222", Subject: "Add NOTES.md, fix TestParse"}},
	}
	if r.Push != nil {
		branch := r.Push.Branch
		if branch == "" {
			branch = "aetherium/run-" + r.ID[:8]
		}
		steps = append(steps, status("pushing", "pushing branch "+branch), status("pushing", "pushed branch "+branch))
		res.PushedBranch = branch
	}
	return RunPlan{
		Steps: steps, Status: "completed", Result: res,
		Usage: client.RunUsage{Requests: 6, InputTokens: 5400, OutputTokens: 640, CacheReadInputTokens: 12000, CostUSD: &cost},
		Diff: "diff --git a/NOTES.md b/NOTES.md\nnew file mode 100644\n--- /dev/null\n+++ b/NOTES.md\n@@ -0,0 +1 @@\n+# Notes\n" +
			"diff --git a/parse.go b/parse.go\n--- a/parse.go\n+++ b/parse.go\n@@ -1,2 +1,2 @@\n-return 1\n+return 2\n",
	}
}
