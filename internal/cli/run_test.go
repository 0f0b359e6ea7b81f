package cli_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/cli"
	"github.com/aetherium/aetherium/internal/cli/fakeapi"
	"github.com/aetherium/aetherium/pkg/client"
)

const repoURL = "https://github.com/org/repo"

// runID is the id of the only run the fake API has.
func (e *env) runID() string {
	e.t.Helper()
	var body client.RunList
	r := e.run("run", "list", "--json")
	if err := json.Unmarshal([]byte(r.stdout), &body); err != nil || len(body.Runs) == 0 {
		e.t.Fatalf("run list: %v %s", err, r)
	}
	return body.Runs[0].ID
}

// wantLines checks that out has these lines, in this order (others may come between).
func wantLines(t *testing.T, out string, lines ...string) {
	t.Helper()
	got := strings.Split(out, "\n")
	i := 0
	for _, want := range lines {
		for i < len(got) && got[i] != want {
			i++
		}
		if i == len(got) {
			t.Fatalf("line %q missing (or out of order) in:\n%s", want, out)
		}
		i++
	}
}

// TestRunRendersTranscript follows a realistic claude-code run and checks the lines a person reads: the worker's
// steps, the agent's words, one line per tool call and result (errors marked, long results cut), stderr, the final
// answer and the summary, and no raw JSON or terminal escape from the guest.
func TestRunRendersTranscript(t *testing.T) {
	e := newEnv(t)
	r := e.run("run", "--repo", repoURL, "fix the failing test")
	wantCode(t, r, 0)
	id := e.runID()
	run, _ := e.srv.Run(id)
	ws := "/home/agent/runs/" + id + "/repo"
	wantLines(t, r.stdout,
		"· run "+id+": claude-code on "+repoURL,
		"· preparing: creating vm "+run.VMID,
		"· preparing: cloning "+repoURL,
		"· running: agent claude-code started",
		"· agent session: model claude-sonnet-4-5, 5 tools, in "+ws,
		"I'll add the file.",
		"→ Write: "+ws+"/NOTES.md",
		"  ← File created successfully at: "+ws+"/NOTES.md",
		"→ Bash: go test ./... …",
		"stderr: warning: [31mcolour[0m from the agent",
		"  ← error: --- FAIL: TestParse (0.00s)",
		"        parse_test.go:12: got 1, want 2",
		"    FAIL",
		"    … 2 more lines",
		"→ Edit: "+ws+"/parse.go",
		"  ← The file "+ws+"/parse.go has been updated.",
		`→ Grep {"pattern":"TODO","path":"."}`,
		"  ← No matches found",
		"All tests pass now.",
		"",
		"── result ──",
		"Done: added NOTES.md and fixed TestParse.",
		"· completed",
	)
	wantFields(t, r.stdout, "Run", id, "Status", "completed", "Exit", "0", "Turns", "6",
		"Usage", "5400 input + 640 output tokens (cache: 12000 read, 0 written), 6 requests, $0.0258 at list prices",
		"Agent cost", "$0.0123 (as the agent reported it)", "Changes", "2 files changed, +10 -2",
		"Commits", "222222222222 Add NOTES.md, fix TestParse", "Diff", "aetherium run diff "+id, "Details", "aetherium run get "+id)
	if strings.Contains(r.stdout, "\x1b") || strings.Contains(r.stdout, `"type"`) || strings.Contains(r.stdout, "VM:") {
		t.Errorf("escape, raw event or the deleted VM in the transcript:\n%s", r.stdout)
	}
	if r.stderr != "" {
		t.Errorf("stderr: %s", r.stderr)
	}

	// On a terminal, stderr lines are dimmed (the only escapes written: ours).
	e.tty = true
	r = e.run("run", "--repo", repoURL, "again")
	wantCode(t, r, 0)
	if !strings.Contains(r.stdout, "\x1b[2mstderr: warning: [31mcolour[0m from the agent\x1b[0m\n") {
		t.Errorf("stderr not dimmed on a terminal:\n%q", r.stdout)
	}
}

// TestRunHostileOutput: control characters of every kind from the guest never reach the terminal.
func TestRunHostileOutput(t *testing.T) {
	e := newEnv(t)
	evil := "a\x1b]0;owned\x07b\rc\u009b2Jd\u202ee\x08f"
	text, _ := json.Marshal(evil)
	e.srv.SetRunPlan(func(client.Run) fakeapi.RunPlan {
		return fakeapi.RunPlan{Status: "completed", Steps: []fakeapi.RunStep{
			{Type: "agent", Data: json.RawMessage(`{"type":"assistant","message":{"content":[{"type":"text","text":` + string(text) + `},` +
				`{"type":"tool_use","id":"t","name":"Bash","input":{"command":` + string(text) + `}}]}}`)},
			{Type: "agent", Data: json.RawMessage(`{"type":"user","message":{"content":[{"type":"tool_result","content":` + string(text) + `}]}}`)},
			{Type: "stderr", Data: map[string]string{"text": evil}},
			{Type: "output", Data: map[string]string{"text": evil}},
			{Type: "status", Data: map[string]string{"status": "running", "message": evil}},
			{Type: "agent", Data: json.RawMessage(`{"type":"result","subtype":"success","result":` + string(text) + `}`)},
		}}
	})
	r := e.run("run", "--repo", repoURL, "x")
	wantCode(t, r, 0)
	for _, bad := range []string{"\x1b", "\x07", "\r", "\u009b", "\u202e", "\x08"} {
		if strings.Contains(r.stdout, bad) {
			t.Errorf("%q reached the output:\n%q", bad, r.stdout)
		}
	}
	wantLines(t, r.stdout, "a]0;ownedbc2Jdef", "→ Bash: a]0;ownedbc2Jdef", "  ← a]0;ownedbc2Jdef", "stderr: a]0;ownedbc2Jdef")
}

// TestRunFlagsToRequest: every flag lands in its field of the request.
func TestRunFlagsToRequest(t *testing.T) {
	e := newEnv(t)
	e.srv.SetSecrets("ANTHROPIC_API_KEY", "GITHUB_TOKEN", "NPM", "GH_ORG")
	box := e.srv.AddVM("box", "running")
	body := func() client.CreateRunRequest {
		t.Helper()
		var req client.CreateRunRequest
		if err := json.Unmarshal(e.lastRequest(http.MethodPost, "/api/v1/runs").Body, &req); err != nil {
			t.Fatal(err)
		}
		return req
	}

	r := e.run("run", "--repo", repoURL, "--ref", "v1.2", "--branch", "fix-tests", "--agent", "claude-code",
		"--model", "claude-opus-4-5", "--max-turns", "12", "--timeout", "45m", "--memory", "4096", "--vcpus", "4",
		"--keep-vm", "--tool", "jq", "--tool", "node@22", "--env", "CI=1", "--env", "A=b=c", "--secret-env", "NPM_TOKEN=NPM",
		"--credentials-secret", "GH_ORG", "--priority", "high", "fix the failing test")
	wantCode(t, r, 0)
	want := client.CreateRunRequest{
		Repo:   client.RunRepo{URL: repoURL, Ref: "v1.2", CredentialsSecret: "GH_ORG"},
		Prompt: "fix the failing test", Agent: "claude-code", Model: "claude-opus-4-5", MaxTurns: 12, TimeoutSeconds: 2700,
		Tools: []string{"jq", "node@22"}, Env: map[string]string{"CI": "1", "A": "b=c"}, SecretEnv: map[string]string{"NPM_TOKEN": "NPM"},
		VM: &client.RunVM{CreateVMRequest: client.CreateVMRequest{MemoryMB: 4096, VCPUs: 4}}, KeepVM: true,
		Push: &client.RunPush{Branch: "fix-tests"}, Priority: "high",
	}
	if got := body(); !reflect.DeepEqual(got, want) {
		t.Errorf("request\n got %+v\nwant %+v", got, want)
	}
	id := e.runID()
	run, _ := e.srv.Run(id)
	wantFields(t, r.stdout, "Pushed", "branch fix-tests", "VM", run.VMID+" (kept: delete it with `aetherium vm delete "+run.VMID+"`)")

	// --push alone asks for the default branch; --vm by name; the timeout in seconds; the prompt from a file.
	file := filepath.Join(t.TempDir(), "prompt.md")
	if err := os.WriteFile(file, []byte("# Task\nmake it faster\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	wantCode(t, e.run("run", "--repo", repoURL, "--push", "--vm", "box", "--timeout", "90", "--prompt-file", file), 0)
	want = client.CreateRunRequest{Repo: client.RunRepo{URL: repoURL}, Prompt: "# Task\nmake it faster\n", TimeoutSeconds: 90,
		VM: &client.RunVM{ID: box.ID}, Push: &client.RunPush{}}
	if got := body(); !reflect.DeepEqual(got, want) {
		t.Errorf("request\n got %+v\nwant %+v", got, want)
	}

	// The prompt from stdin.
	e.stdin = "from stdin"
	wantCode(t, e.run("run", "--repo", repoURL, "--prompt-file", "-"), 0)
	if got := body(); got.Prompt != "from stdin" || got.Push != nil || got.VM != nil {
		t.Errorf("request %+v", got)
	}

	// A prompt that is a subcommand's name, after --.
	wantCode(t, e.run("run", "--repo", repoURL, "--", "list"), 0)
	if got := body(); got.Prompt != "list" {
		t.Errorf("prompt %q", got.Prompt)
	}
}

func TestRunUsageErrors(t *testing.T) {
	e := newEnv(t)
	delete(e.vars, cli.EnvAPIKey) // usage errors come before the missing key
	usage := "\nRun 'aetherium run --help' for usage.\n"
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"run", "--repo", repoURL}, "error: want a PROMPT (or --prompt-file FILE)"},
		{[]string{"run", "--repo", repoURL, "--prompt-file", "p.md", "do it"}, "error: the prompt is given both as an argument and with --prompt-file: give one"},
		{[]string{"run", "--repo", repoURL, "fix", "the", "bug"}, "error: the prompt is one argument, got 3: quote it, or use --prompt-file"},
		{[]string{"run", "do it"}, "error: --repo is required"},
		{[]string{"run", "--repo", repoURL, " "}, "error: the prompt is empty"},
		{[]string{"run", "--repo", repoURL, "--vm", "box", "--memory", "4096", "x"}, "error: --memory is for the run's new VM, not with --vm (a VM given to a run is never deleted)"},
		{[]string{"run", "--repo", repoURL, "--timeout", "soon", "x"}, `error: invalid argument "soon" for "--timeout" flag: "soon" is neither a duration (30m) nor a number of seconds`},
		{[]string{"run", "--repo", repoURL, "--timeout", "1.5s", "x"}, "error: --timeout must be a whole, non-negative number of seconds"},
		{[]string{"run", "--repo", repoURL, "--max-turns", "-1", "x"}, "error: --max-turns must not be negative"},
		{[]string{"run", "--repo", repoURL, "--env", "NOEQUALS", "x"}, `error: --env "NOEQUALS": want KEY=VALUE`},
		{[]string{"run", "--repo", repoURL, "--detach", "--cancel-on-interrupt", "x"}, "error: --cancel-on-interrupt needs a run that is followed, not --detach"},
		{[]string{"run", "--repo", repoURL, "--frob", "x"}, "error: unknown flag: --frob"},
	} {
		r := e.run(tc.args...)
		if r.code != 2 || r.stderr != tc.want+usage || r.stdout != "" {
			t.Errorf("%v: want exit 2 and %q, got %s", tc.args, tc.want, r)
		}
	}
	if n := len(e.srv.Requests()); n != 0 {
		t.Errorf("usage errors sent %d requests", n)
	}
	// A prompt that is a subcommand's name is taken for the subcommand: the error says what to do.
	// (`run --repo URL list` even works: it lists the repository's runs.)
	r := e.run("run", "--repo", repoURL, "cancel")
	want := "error: unknown flag: --repo (a prompt that is a subcommand's name goes after --: aetherium run --repo URL -- cancel)\n" +
		"Run 'aetherium run cancel --help' for usage.\n"
	if r.code != 2 || r.stderr != want {
		t.Errorf("subcommand as prompt: %s", r)
	}
	r = e.run("run")
	wantCode(t, r, 0)
	if !strings.Contains(r.stdout, "Available Commands:") || !strings.Contains(r.stdout, "--prompt-file") {
		t.Errorf("bare run: %s", r)
	}
}

// TestRunJSONPassesEventsThrough: --json prints every event as the server sent it, one a line, and nothing else.
func TestRunJSONPassesEventsThrough(t *testing.T) {
	e := newEnv(t)
	r := e.run("run", "--repo", repoURL, "--json", "x")
	wantCode(t, r, 0)
	stored := e.srv.RunEvents(e.runID())
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	if len(lines) != len(stored) {
		t.Fatalf("%d lines for %d events:\n%s", len(lines), len(stored), r.stdout)
	}
	for i, l := range lines {
		var ev client.RunEvent
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatalf("line %d: %v: %s", i, err, l)
		}
		want := stored[i]
		if ev.Seq != want.Seq || ev.Type != want.Type || !bytes.Equal(ev.Data, want.Data) || !ev.Time.Equal(want.Time) {
			t.Errorf("line %d = %s\nwant %+v (data %s)", i, l, want, want.Data)
		}
	}
	if stored[len(stored)-1].Type != "end" {
		t.Errorf("last event %+v", stored[len(stored)-1])
	}
}

// TestRunResumesBrokenStream: a stream cut halfway through an event (every 4 events) is resumed after the last
// event seen: each event is shown exactly once, none is lost, and the resumptions say where they start.
func TestRunResumesBrokenStream(t *testing.T) {
	e := newEnv(t)
	e.srv.SetStreamBreak(4)
	r := e.run("run", "--repo", repoURL, "--json", "x")
	wantCode(t, r, 0)
	id := e.runID()
	stored := e.srv.RunEvents(id)
	var seqs []int64
	for l := range strings.SplitSeq(strings.TrimSuffix(r.stdout, "\n"), "\n") {
		var ev client.RunEvent
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatal(err, l)
		}
		seqs = append(seqs, ev.Seq)
	}
	for i, s := range seqs {
		if s != int64(i+1) {
			t.Fatalf("seqs %v: want 1..%d once each", seqs, len(stored))
		}
	}
	if len(seqs) != len(stored) {
		t.Fatalf("got %d events, %d stored", len(seqs), len(stored))
	}
	var resumedFrom []string
	for _, q := range e.srv.Requests() {
		if q.Path == "/api/v1/runs/"+id+"/stream" {
			resumedFrom = append(resumedFrom, q.Header.Get("Last-Event-ID"))
		}
	}
	var want []string
	for n := 0; n < len(stored); n += 4 {
		want = append(want, map[bool]string{true: "", false: fmt.Sprint(n)}[n == 0])
	}
	if !reflect.DeepEqual(resumedFrom, want) {
		t.Errorf("Last-Event-ID of the streams %q, want %q", resumedFrom, want)
	}

	// The readable transcript, too, shows every line once.
	r = e.run("run", "--repo", repoURL, "y")
	wantCode(t, r, 0)
	if n := strings.Count(r.stdout, "→ "); n != 4 {
		t.Errorf("%d tool lines, want 4:\n%s", n, r.stdout)
	}

	// A proxy that answers 502 for a moment is waited out.
	e.srv.SetStreamBreak(0)
	failed := false
	e.srv.SetBefore(func(w http.ResponseWriter, r *http.Request) bool {
		if strings.HasSuffix(r.URL.Path, "/stream") && !failed {
			failed = true
			http.Error(w, "<html>bad gateway</html>", http.StatusBadGateway)
			return true
		}
		return false
	})
	r = e.run("run", "--repo", repoURL, "z")
	wantCode(t, r, 0)
	if !failed || !strings.Contains(r.stdout, "── result ──") {
		t.Errorf("after a 502: %s", r)
	}
}

func TestRunExitCodes(t *testing.T) {
	for _, tc := range []struct {
		status, err string
		code        int
		want        string
	}{
		{"completed", "", 0, ""},
		{"failed", "the agent exited with code 1: Error: rate limited", 1, "failed: the agent exited with code 1: Error: rate limited"},
		{"cancelled", "cancelled while the agent was running", 1, "was cancelled: cancelled while the agent was running"},
	} {
		e := newEnv(t)
		e.srv.SetRunPlan(func(r client.Run) fakeapi.RunPlan {
			p := fakeapi.DefaultRunPlan(r)
			p.Status, p.Error = tc.status, tc.err
			if tc.status == "failed" { // the agent's own verdict
				p.Steps[len(p.Steps)-1].Data = json.RawMessage(`{"type":"result","subtype":"error_max_turns","is_error":true,"num_turns":50,"result":"Ran out of turns."}`)
			}
			return p
		})
		for _, args := range [][]string{{"run", "--repo", repoURL, "x"}, {"run", "--repo", repoURL, "--json", "x"}} {
			r := e.run(args...)
			wantCode(t, r, tc.code)
			id := e.runID()
			if tc.code == 0 {
				if r.stderr != "" {
					t.Errorf("%v: %s", args, r)
				}
				continue
			}
			if r.stderr != "error: run "+id+" "+tc.want+"\n" {
				t.Errorf("%v: %s", args, r)
			}
			if args[3] != "--json" {
				wantFields(t, r.stdout, "Status", tc.status, "Error", tc.err)
				if tc.status == "failed" {
					wantLines(t, r.stdout, "", "── result: error (error_max_turns) ──", "Ran out of turns.", "· failed: "+tc.err)
				}
			}
		}
	}
}

// TestRunServerErrors: the server's refusals are shown as it words them, with exit 1, and start nothing.
func TestRunServerErrors(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--agent", "codex"}, `error: agent: unknown agent "codex"; known agents: claude-code (validation_failed)`},
		{[]string{"--repo", "file:///etc"}, "error: repo.url: not a repository URL: local repositories (file:// URLs and host paths) are refused: give an https, ssh or git URL (validation_failed)"},
		{[]string{"--repo", "https://git.example.com/a/b", "--push"}, "error: repo.url: git.example.com is not a git host of the credential proxy (known: github.com, gitlab.com; operators add more with git_hosts): credentials_secret and push need it, since the VM never holds a git credential (validation_failed)"},
		{[]string{"--push"}, "error: secrets: secret GITHUB_TOKEN does not exist; it is needed by pushing to github.com (its git token) (create it with `aetherium secret set GITHUB_TOKEN` or PUT /api/v1/secrets/GITHUB_TOKEN) (validation_failed)"},
		{[]string{"--timeout", "25h"}, "error: timeout_seconds: must be between 1 and 86400, or 0 for the default 1800 (got 90000) (validation_failed)"},
		{[]string{"--max-turns", "5000"}, "error: max_turns: must be between 1 and 1000, or 0 for the agent's default (got 5000) (validation_failed)"},
		{[]string{"--vm", "nobox"}, `error: vm not found: no VM is named "nobox" (not_found)`},
	} {
		args := append([]string{"run", "--repo", repoURL}, tc.args...)
		r := e.run(append(args, "x")...)
		if r.code != 1 || r.stderr != tc.want+"\n" || r.stdout != "" {
			t.Errorf("%v: want exit 1 and %q, got %s", tc.args, tc.want, r)
		}
	}
	r := e.run("run", "--repo", repoURL, strings.Repeat("x", fakeapi.MaxPromptBytes+1))
	if r.code != 1 || r.stderr != "error: prompt: is 100001 bytes; at most 100000 are allowed (payload_too_large)\n" {
		t.Errorf("large prompt: %s", r)
	}
	if n := e.srv.Count(http.MethodGet, "/api/v1/runs"); n != 0 {
		t.Errorf("%d lists", n)
	}
	var body client.RunList
	if err := json.Unmarshal([]byte(e.run("run", "list", "--json").stdout), &body); err != nil || len(body.Runs) != 0 {
		t.Errorf("refused runs were stored: %+v %v", body, err)
	}
}

func TestRunDetach(t *testing.T) {
	e := newEnv(t)
	r := e.run("run", "--repo", repoURL, "--detach", "x")
	wantCode(t, r, 0)
	id := strings.TrimSpace(r.stdout)
	if !uuidRE.MatchString(id) || !strings.Contains(r.stderr, "aetherium run logs -f "+id) {
		t.Errorf("detach: %s", r)
	}
	if n := e.srv.Count(http.MethodGet, "/api/v1/runs/"+id+"/stream"); n != 0 {
		t.Errorf("--detach followed the run")
	}
	r = e.run("run", "--repo", repoURL, "--detach", "--json", "x")
	var acc client.RunAccepted
	if err := json.Unmarshal([]byte(r.stdout), &acc); err != nil || acc.TaskID == "" || acc.Run.Status != "pending" {
		t.Errorf("--detach --json: %+v %v %s", acc, err, r)
	}
}

// heldPlan is the default run's first n events, after which it stays running.
func heldPlan(n int) func(r client.Run) fakeapi.RunPlan {
	return func(r client.Run) fakeapi.RunPlan {
		p := fakeapi.DefaultRunPlan(r)
		return fakeapi.RunPlan{Steps: p.Steps[:n]}
	}
}

// startHeld starts `run` on a run that stays running, and waits until its stream is open.
func startHeld(t *testing.T, e *env, args ...string) (id string, done <-chan result) {
	t.Helper()
	e.srv.SetRunPlan(heldPlan(5))
	before := len(e.srv.Requests())
	ch := make(chan result, 1)
	go func() { ch <- e.run(args...) }()
	for {
		for _, q := range e.srv.Requests()[before:] {
			if strings.HasSuffix(q.Path, "/stream") {
				return strings.TrimSuffix(strings.TrimPrefix(q.Path, "/api/v1/runs/"), "/stream"), ch
			}
		}
		select {
		case r := <-ch:
			t.Fatalf("the command ended before following the run: %s", r)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// TestRunInterrupt: the first Ctrl-C stops following and says how to cancel (the run goes on); with
// --cancel-on-interrupt it cancels the run and shows its end.
func TestRunInterrupt(t *testing.T) {
	sig := make(chan os.Signal, 1)
	e := newEnv(t)
	e.opts = []cli.Option{cli.WithInterrupt(sig)}
	id, done := startHeld(t, e, "run", "--repo", repoURL, "x")
	sig <- os.Interrupt
	r := <-done
	wantCode(t, r, 130)
	if !strings.Contains(r.stderr, "stopped following run "+id+"; it goes on") || !strings.Contains(r.stderr, "`aetherium run cancel "+id+"`") {
		t.Errorf("interrupt: %s", r)
	}
	if run, _ := e.srv.Run(id); run.Status != "running" || run.CancelRequested {
		t.Errorf("the run was touched: %+v", run)
	}

	// It is still there to follow: logs -f shows the rest once it ends.
	_, done = func() (string, <-chan result) {
		ch := make(chan result, 1)
		go func() { ch <- e.run("run", "logs", "-f", id) }()
		return "", ch
	}()
	for e.srv.Count(http.MethodGet, "/api/v1/runs/"+id+"/stream") < 2 {
		time.Sleep(5 * time.Millisecond)
	}
	e.srv.AppendRunEvents(id, fakeapi.RunStep{Type: "agent", Data: json.RawMessage(`{"type":"assistant","message":{"content":[{"type":"text","text":"later words"}]}}`)})
	e.srv.EndRun(id, "failed", "the agent exited with code 2")
	r = <-done
	wantCode(t, r, 1)
	wantLines(t, r.stdout, "I'll add the file.", "later words", "· failed: the agent exited with code 2")
	if r.stderr != "error: run "+id+" failed: the agent exited with code 2\n" {
		t.Errorf("logs -f: %s", r)
	}

	id, done = startHeld(t, e, "run", "--repo", repoURL, "--cancel-on-interrupt", "x")
	sig <- os.Interrupt
	r = <-done
	wantCode(t, r, 1)
	if n := e.srv.Count(http.MethodPost, "/api/v1/runs/"+id+"/cancel"); n != 1 {
		t.Errorf("%d cancels", n)
	}
	wantLines(t, r.stdout, "→ Write: /home/agent/runs/"+id+"/repo/NOTES.md", "· cancelled: cancelled while the agent was running")
	wantFields(t, r.stdout, "Status", "cancelled")
	if !strings.HasPrefix(r.stderr, "cancelling run "+id+" (Ctrl-C again to stop following)\n") ||
		!strings.HasSuffix(r.stderr, "error: run "+id+" was cancelled: cancelled while the agent was running\n") {
		t.Errorf("cancel on interrupt: %s", r)
	}
}

func TestRunSubcommands(t *testing.T) {
	e := newEnv(t)
	box := e.srv.AddVM("box", "running")
	wantCode(t, e.run("run", "--repo", repoURL, "--detach", "first"), 0)
	e.srv.SetRunPlan(func(r client.Run) fakeapi.RunPlan {
		p := fakeapi.DefaultRunPlan(r)
		p.Status, p.Error, p.Result.DiffStat = "failed", "the agent reported an error (error_max_turns)", &client.DiffStat{FilesChanged: 1, Insertions: 3}
		return p
	})
	wantCode(t, e.run("run", "--repo", "https://gitlab.com/g/other", "--vm", "box", "--detach", "second"), 0)
	second := e.runID()

	r := e.run("run", "list")
	wantCode(t, r, 0)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 3 || !regexp.MustCompile(`^ID +STATUS +AGENT +REPO +AGE +CHANGES$`).MatchString(lines[0]) ||
		!regexp.MustCompile(`^`+second+` +failed +claude-code +https://gitlab.com/g/other +\d+s +1 file changed, \+3 -0$`).MatchString(lines[1]) ||
		!regexp.MustCompile(` +completed +claude-code +`+repoURL+` +\d+s +2 files changed, \+10 -2$`).MatchString(lines[2]) {
		t.Errorf("list:\n%s", r.stdout)
	}
	r = e.run("run", "ls", "--status", "failed,cancelled", "--vm", "box", "--repo", "https://gitlab.com/g/other", "--limit", "5", "--json")
	wantCode(t, r, 0)
	q := e.lastRequest(http.MethodGet, "/api/v1/runs").Query
	if q.Get("status") != "failed,cancelled" && strings.Join(q["status"], ",") != "failed,cancelled" || q.Get("vm_id") != box.ID ||
		q.Get("repo") != "https://gitlab.com/g/other" || q.Get("limit") != "5" {
		t.Errorf("list query %v", q)
	}
	var l client.RunList
	if err := json.Unmarshal([]byte(r.stdout), &l); err != nil || len(l.Runs) != 1 || l.Runs[0].ID != second {
		t.Errorf("list --json: %v %s", err, r)
	}
	r = e.run("run", "list", "--status", "done")
	if r.code != 1 || r.stderr != "error: status: unknown run status \"done\" (validation_failed)\n" {
		t.Errorf("bad status: %s", r)
	}

	r = e.run("run", "get", second)
	wantCode(t, r, 0)
	wantFields(t, r.stdout, "Run", second, "Status", "failed", "Error", "the agent reported an error (error_max_turns)",
		"Repo", "https://gitlab.com/g/other", "Agent", "claude-code", "Prompt", "second", "VM", box.ID,
		"Result", "Done: added NOTES.md and fixed TestParse.", "Changes", "1 file changed, +3 -0", "Diff", "aetherium run diff "+second)
	r = e.run("run", "get", second, "--json")
	var run client.Run
	if err := json.Unmarshal([]byte(r.stdout), &run); err != nil || run.ID != second || run.Result == nil {
		t.Errorf("get --json: %v %s", err, r)
	}
	r = e.run("run", "get", "8b0c1a7e-5a0e-4f7e-9d2a-0a0b0c0d0e0f")
	if r.code != 1 || r.stderr != "error: run 8b0c1a7e-5a0e-4f7e-9d2a-0a0b0c0d0e0f: not found (not_found)\n" {
		t.Errorf("get unknown: %s", r)
	}

	r = e.run("run", "diff", second)
	wantCode(t, r, 0)
	if want := fakeapi.DefaultRunPlan(run).Diff; r.stdout != want || r.stderr != "" {
		t.Errorf("diff %q, want %q", r.stdout, want)
	}

	r = e.run("run", "logs", second)
	wantCode(t, r, 0)
	wantLines(t, r.stdout, "· preparing: creating vm "+box.ID, "→ Write: /home/agent/runs/"+second+"/other/NOTES.md", "── result ──",
		"· failed: the agent reported an error (error_max_turns)")
	r = e.run("run", "logs", second, "--json")
	if n := strings.Count(r.stdout, "\n"); r.code != 0 || n != len(e.srv.RunEvents(second)) {
		t.Errorf("logs --json: %d lines: %s", n, r)
	}

	r = e.run("run", "cancel", second)
	if r.code != 1 || r.stderr != "error: run "+second+" is already failed (conflict)\n" {
		t.Errorf("cancel of an ended run: %s", r)
	}

	for _, args := range [][]string{{"agents"}, {"run", "agents"}} {
		r = e.run(args...)
		wantCode(t, r, 0)
		if !regexp.MustCompile(`(?m)^NAME +MODEL APIS +TOOLS +DESCRIPTION\nclaude-code +anthropic +git,claude-code +Anthropic's Claude Code`).MatchString(r.stdout) {
			t.Errorf("%v:\n%s", args, r.stdout)
		}
	}
	r = e.run("agents", "--json")
	var ag struct{ Agents []client.Agent }
	if err := json.Unmarshal([]byte(r.stdout), &ag); err != nil || len(ag.Agents) != 1 || ag.Agents[0].Output != "claude-stream-json" {
		t.Errorf("agents --json: %v %s", err, r)
	}
}

// TestRunLogsAndCancelOfARunningRun: logs without -f prints what there is and stops; cancel ends it.
func TestRunLogsAndCancelOfARunningRun(t *testing.T) {
	e := newEnv(t)
	e.srv.SetRunPlan(heldPlan(6))
	wantCode(t, e.run("run", "--repo", repoURL, "--detach", "x"), 0)
	id := e.runID()
	r := e.run("run", "logs", id)
	wantCode(t, r, 0)
	wantLines(t, r.stdout, "· running: agent claude-code started", "→ Write: /home/agent/runs/"+id+"/repo/NOTES.md", "  ← File created successfully at: /home/agent/runs/"+id+"/repo/NOTES.md")
	if r.stderr != "run "+id+" is still running; follow it with `aetherium run logs -f "+id+"`\n" {
		t.Errorf("logs of a running run: %s", r)
	}
	r = e.run("run", "cancel", id)
	wantCode(t, r, 0)
	if r.stdout != "cancelling run "+id+" (it was running); `aetherium run get "+id+"` shows when it has stopped\n" {
		t.Errorf("cancel: %s", r)
	}
	if run, _ := e.srv.Run(id); run.Status != "cancelled" {
		t.Errorf("run %+v", run)
	}
	r = e.run("run", "diff", id)
	if r.code != 0 || r.stdout != "" || r.stderr != "run "+id+" changed nothing\n" {
		t.Errorf("diff: %s", r)
	}
}
