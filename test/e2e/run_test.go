//go:build linux

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/credproxy/anthropictest"
	"github.com/aetherium/aetherium/pkg/client"
)

// The owner's credentials in the run tests: they must never be readable in a guest.
const (
	runModelKey = "sk-ant-api03-OWNERkey-e2e-5b7c9d"
	runGitToken = "ghp_OWNERgitToken0e2e4a7f"
)

// gitServer is a real git smart-HTTP server (git http-backend) with one repository, org/repo.git, that wants the
// owner's token as basic auth.
type gitServer struct {
	root string
	bare string
	srv  *httptest.Server
}

func newGitServer(t testing.TB, ln net.Listener) *gitServer {
	t.Helper()
	g := &gitServer{root: t.TempDir()}
	g.bare = filepath.Join(g.root, "org", "repo.git")
	seed := t.TempDir()
	gitEnv := append(os.Environ(), "GIT_AUTHOR_NAME=u", "GIT_AUTHOR_EMAIL=u@example.com", "GIT_COMMITTER_NAME=u",
		"GIT_COMMITTER_EMAIL=u@example.com")
	if err := os.WriteFile(filepath.Join(seed, "README.md"), []byte("# repo\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range [][]string{{"init", "-q", "--bare", "-b", "main", g.bare}, {"-C", g.bare, "config", "http.receivepack", "true"},
		{"-C", seed, "init", "-q", "-b", "main"}, {"-C", seed, "add", "README.md"}, {"-C", seed, "commit", "-q", "-m", "first"},
		{"-C", seed, "push", "-q", g.bare, "main"}} {
		cmd := exec.Command("git", c...)
		cmd.Env = gitEnv
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", c, err, out)
		}
	}
	execPath, err := exec.Command("git", "--exec-path").Output()
	if err != nil {
		t.Fatal(err)
	}
	g.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, pw, ok := r.BasicAuth(); !ok || u != "x-access-token" || pw != runGitToken {
			w.Header().Set("WWW-Authenticate", `Basic realm="git"`)
			http.Error(w, "auth required", http.StatusUnauthorized)
			return
		}
		(&cgi.Handler{Path: filepath.Join(strings.TrimSpace(string(execPath)), "git-http-backend"),
			Env: []string{"GIT_PROJECT_ROOT=" + g.root, "GIT_HTTP_EXPORT_ALL=1", "REMOTE_USER=owner"}}).ServeHTTP(w, r)
	}))
	g.srv.Listener.Close()
	g.srv.Listener = ln
	g.srv.Start()
	t.Cleanup(g.srv.Close)
	return g
}

// show runs git in the bare repository.
func (g *gitServer) git(t *testing.T, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command("git", append([]string{"--git-dir", g.bare}, args...)...).CombinedOutput()
	return string(out), err
}

// startModel serves a scripted Anthropic API on ln.
func startModel(t testing.TB, ln net.Listener, s http.Handler) {
	t.Helper()
	srv := httptest.NewUnstartedServer(s)
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
}

// runTranscript follows a run's stream to its end and returns every event.
func runTranscript(t testing.TB, c *client.Client, id string) ([]client.RunEvent, *client.RunEnd) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	var evs []client.RunEvent
	var end *client.RunEnd
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		var after int64
		if len(evs) > 0 {
			after = evs[len(evs)-1].Seq
		}
		end, err = c.StreamRunFrom(ctx, id, after, func(e client.RunEvent) error { evs = append(evs, e); return nil })
		if err == nil {
			break
		}
		t.Logf("run stream broke (%v); resuming after %d", err, after)
	}
	if err != nil {
		t.Fatalf("stream of run %s: %v", id, err)
	}
	return evs, end
}

// guestSh runs a shell command as root in a VM through the API and returns its output.
func guestSh(t *testing.T, c *client.Client, vmID, script string, env map[string]string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	e, err := c.ExecAndWait(ctx, vmID, client.ExecuteRequest{Command: "sh", Args: []string{"-c", script}, Env: env, TimeoutSeconds: 240})
	if err != nil || e.ExitCode == nil {
		t.Fatalf("exec in %s: %+v %v", vmID, e, err)
	}
	return e.Stdout + e.Stderr, *e.ExitCode
}

// TestRunAgentOnRepository is issue 11's end-to-end test: serve (QEMU guests, networking on, in a network namespace
// of its own) runs the REAL claude-code of the default template on a repository of a real git server, with its
// model requests going through the worker's credential proxy to a scripted Anthropic API. claude-code writes a
// file and runs a shell command as scripted; the run's diff and transcript show both; the branch is pushed; the
// upstream saw the owner's key and nothing in the guest holds it; another VM cannot use the run's VM's token; and a
// cancelled run ends with no agent process left.
func TestRunAgentOnRepository(t *testing.T) {
	rig := newRunRig(t)
	c, git, ctx := rig.c, rig.git, rig.ctx
	hold := anthropictest.NewHold()
	model := anthropictest.New(anthropictest.Script{APIKey: runModelKey, Turns: []anthropictest.Turn{
		{Blocks: []anthropictest.Block{anthropictest.Text("I'll add the notes file."),
			anthropictest.ToolUse("Write", map[string]any{"file_path": "WORKSPACE/NOTES.md", "content": "written by the agent\n"})}},
		{Blocks: []anthropictest.Block{anthropictest.ToolUse("Bash", map[string]any{
			"command": "echo ran-by-bash > ran.txt && git status --short", "description": "Record that a command ran"})}},
		{Blocks: []anthropictest.Block{anthropictest.Text("Done: NOTES.md and ran.txt are in place.")}},
	}})
	rig.model.Store(model)

	// 1. A run that edits the repository and pushes a branch; its VM is kept to be searched afterwards.
	posted := time.Now()
	acc, err := c.CreateRun(ctx, client.CreateRunRequest{
		Repo:   client.RunRepo{URL: "https://git.test/org/repo.git", Ref: "main"},
		Prompt: "Add NOTES.md, then run a command that proves you can run commands.", MaxTurns: 10,
		Push: &client.RunPush{Branch: "agent/notes"}, KeepVM: true, TimeoutSeconds: 900,
		VM: &client.RunVM{CreateVMRequest: client.CreateVMRequest{MemoryMB: 2048}},
	})
	if err != nil {
		t.Fatal(err)
	}
	run := acc.Run
	// The VMs kept for inspection are deleted however the test ends, before serve stops (cleanups run
	// last-registered first), so a failure is reported as itself and not also as disks left behind.
	var keptVMs []string
	t.Cleanup(func() {
		for _, id := range keptVMs {
			if _, err := c.DeleteVMAndWait(context.Background(), id); err != nil {
				t.Errorf("delete vm %s: %v", id, err)
			}
		}
	})
	model.Set("WORKSPACE", "/home/agent/runs/"+run.ID+"/repo")
	go func() {
		select {
		case <-model.FirstMessage():
			t.Logf("POST /runs -> first model request: %s", time.Since(posted).Round(time.Millisecond))
		case <-ctx.Done():
		}
	}()
	evs, end := runTranscript(t, c, run.ID)
	// Where the time went (the transcript's status events and the agent's first and last events).
	for _, e := range evs {
		if e.Type == "status" || e.Type == "end" {
			t.Logf("%8s  %s %s", e.Time.Sub(posted).Round(100*time.Millisecond), e.Type, e.Data)
		}
	}
	for _, l := range strings.Split(rig.serve.out.String(), "\n") {
		if strings.Contains(l, "run prepared") {
			t.Logf("serve: %s", l[strings.Index(l, "msg="):])
		}
	}
	run, err = c.GetRun(ctx, run.ID)
	if err != nil {
		t.Fatal(err)
	}
	if run.VMID != "" {
		keptVMs = append(keptVMs, run.VMID)
	}
	if end.Status != "completed" || run.Status != "completed" || run.Result == nil {
		t.Fatalf("run ended %s / %+v (error %q)\nresult %+v\ntranscript:\n%s", end.Status, run.Status, run.Error, run.Result, dumpEvents(evs))
	}
	res := run.Result
	if res.Turns < 3 || res.IsError || res.ExitCode == nil || *res.ExitCode != 0 || !strings.Contains(res.Text, "NOTES.md and ran.txt") {
		t.Fatalf("result: %+v", res)
	}
	if res.DiffStat == nil || res.DiffStat.FilesChanged != 2 || res.PushedBranch != "agent/notes" || len(res.Commits) != 1 || res.BaseCommit == "" {
		t.Fatalf("changes: %+v", res)
	}
	// The transcript: claude-code's own events, with the Write and the Bash call and their results.
	var sawWrite, sawBash, sawResult, sawToolResult bool
	for _, e := range evs {
		if e.Type != "agent" {
			continue
		}
		s := string(e.Data)
		sawWrite = sawWrite || strings.Contains(s, `"name":"Write"`)
		sawBash = sawBash || strings.Contains(s, `"name":"Bash"`) && strings.Contains(s, "ran-by-bash")
		sawToolResult = sawToolResult || strings.Contains(s, `"tool_result"`)
		sawResult = sawResult || strings.Contains(s, `"type":"result"`)
	}
	if !sawWrite || !sawBash || !sawToolResult || !sawResult || evs[len(evs)-1].Type != "end" {
		t.Fatalf("transcript lacks the agent's steps (write %v bash %v tool_result %v result %v):\n%s", sawWrite, sawBash, sawToolResult, sawResult, dumpEvents(evs))
	}
	diff, err := c.RunDiff(ctx, run.ID)
	if err != nil || !strings.Contains(string(diff), "+written by the agent") || !strings.Contains(string(diff), "+ran-by-bash") {
		t.Fatalf("diff (%v):\n%s", err, diff)
	}
	// The branch is on the git server, with the agent's file; main is untouched.
	if out, err := git.git(t, "show", "agent/notes:NOTES.md"); err != nil || out != "written by the agent\n" {
		t.Fatalf("pushed branch: %v %q", err, out)
	}
	if out, _ := git.git(t, "rev-parse", "main"); strings.TrimSpace(out) != res.BaseCommit {
		t.Fatalf("main moved: %s (base %s)", out, res.BaseCommit)
	}
	// The upstream saw the owner's key on every model request, and the usage the proxy measured is the run's.
	var messages int64
	for _, r := range model.Requests() {
		if r.Header.Get("X-Api-Key") != runModelKey {
			t.Fatalf("model request %s %s without the owner's key (x-api-key %q, authorization %q)", r.Method, r.Path,
				r.Header.Get("X-Api-Key"), r.Header.Get("Authorization"))
		}
		if r.Path == "/v1/messages" {
			messages++
		}
	}
	if run.Usage.Requests != messages || run.Usage.InputTokens != messages*anthropictest.DefaultUsage.InputTokens {
		t.Fatalf("usage %+v for %d model responses", run.Usage, messages)
	}

	// The CLI shows the same run: its summary and its patch.
	if out, errOut, code := runCLI(t, rig.cli, "run", "get", run.ID); code != 0 || !strings.Contains(out, "completed") ||
		!strings.Contains(out, "agent/notes") || !strings.Contains(out, "2 files changed") {
		t.Fatalf("aetherium run get: %d\n%s%s", code, out, errOut)
	}
	if out, errOut, code := runCLI(t, rig.cli, "run", "diff", run.ID); code != 0 || out != string(diff) {
		t.Fatalf("aetherium run diff: %d (%d bytes, want %d)\n%s", code, len(out), len(diff), errOut)
	}
	if out, _, code := runCLI(t, rig.cli, "run", "logs", run.ID); code != 0 || !strings.Contains(out, "→ Write") || !strings.Contains(out, "→ Bash") {
		t.Fatalf("aetherium run logs: %d\n%s", code, out)
	}

	// 2. Nothing in the guest holds either credential: not any process's environment, not claude's files, not git's.
	for _, secret := range []string{runModelKey, runGitToken} {
		out, _ := guestSh(t, c, run.VMID, fmt.Sprintf(`cat /proc/[0-9]*/environ 2>/dev/null | tr '\0' '\n' | grep -c -F %[1]q;
			grep -r -l -F %[1]q /home /root /etc /tmp /run /var 2>/dev/null; true`, secret), nil)
		if strings.TrimSpace(out) != "0" {
			t.Fatalf("the owner's credential %s... is readable in the guest:\n%s", secret[:12], out)
		}
	}
	// 3. Another VM cannot use this VM's proxy token (it is refused where it comes from).
	tokOut, code := guestSh(t, c, run.VMID, `printf %s "$ANTHROPIC_AUTH_TOKEN"`, map[string]string{"AETHERIUM_MODEL_PROXY": "1"})
	if code != 0 || !strings.HasPrefix(tokOut, "aep1.") {
		t.Fatalf("token of the run's vm: %d %q", code, tokOut)
	}
	other, err := c.CreateVMAndWait(ctx, client.CreateVMRequest{Name: "other", MemoryMB: 512})
	if err != nil || other.Status != "running" {
		t.Fatalf("second vm: %+v %v", other, err)
	}
	keptVMs = append(keptVMs, other.ID)
	out, _ := guestSh(t, c, other.ID, `curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOK" "$BASE/anthropic/v1/models"`,
		map[string]string{"TOK": tokOut, "BASE": "http://" + other.Network.Gateway + ":8091"})
	if out != "403" {
		t.Fatalf("another vm using the run's token got %q, want 403", out)
	}

	// 4. Cancel: a run (on the kept VM) whose agent waits on the model is stopped, and nothing of it is left
	// running in the guest.
	held := anthropictest.New(anthropictest.Script{APIKey: runModelKey, Turns: []anthropictest.Turn{{Hold: hold,
		Blocks: []anthropictest.Block{anthropictest.Text("never sent")}}}})
	rig.model.Store(held)
	defer hold.Release()
	acc, err = c.CreateRun(ctx, client.CreateRunRequest{Repo: client.RunRepo{URL: "https://git.test/org/repo.git"},
		Prompt: "Wait for the model.", VM: &client.RunVM{ID: run.VMID}})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-hold.Reached():
	case <-time.After(10 * time.Minute):
		t.Fatal("the second run's agent never asked the model")
	}
	// While the agent is alive (it waits on the model), nothing in the guest holds either credential: not its
	// environment nor any other process's, not a file anywhere but /proc, /sys and /dev.
	for _, secret := range []string{runModelKey, runGitToken} {
		out, _ := guestSh(t, c, run.VMID, fmt.Sprintf(`alive=$(grep -l -s -z -x -F "AETHERIUM_RUN_ID=%[2]s" /proc/[0-9]*/environ 2>/dev/null | wc -l)
			env=$(cat /proc/[0-9]*/environ 2>/dev/null | tr '\0' '\n' | grep -c -F %[1]q)
			echo "$alive $env"
			for d in /*; do case $d in /proc|/sys|/dev) continue;; esac; grep -r -l -s -F %[1]q "$d"; done 2>/dev/null; true`,
			secret, acc.Run.ID), nil)
		lines := strings.SplitN(strings.TrimSpace(out), "\n", 2)
		var alive, inEnv int
		if _, err := fmt.Sscanf(lines[0], "%d %d", &alive, &inEnv); err != nil || alive == 0 {
			t.Fatalf("no live process of the held run to look at (%v):\n%s", err, out)
		}
		if inEnv != 0 || len(lines) > 1 {
			t.Fatalf("the owner's credential %s... is readable in the guest while the agent runs (%d environments):\n%s",
				secret[:12], inEnv, out)
		}
	}
	cancelled := time.Now()
	if _, err := c.CancelRun(ctx, acc.Run.ID); err != nil {
		t.Fatal(err)
	}
	evs, end = runTranscript(t, c, acc.Run.ID)
	t.Logf("cancel -> run ended (end event read): %s", time.Since(cancelled).Round(time.Millisecond))
	if r, err := c.GetRun(ctx, acc.Run.ID); err == nil && r.CompletedAt != nil {
		t.Logf("cancel -> run marked cancelled: %s", r.CompletedAt.Sub(cancelled).Round(time.Millisecond))
	}
	if end.Status != "cancelled" {
		t.Fatalf("cancelled run ended %s:\n%s", end.Status, dumpEvents(evs))
	}
	// No process of the run is left: none carries its id, and no claude runs.
	// grep -z reads environ and cmdline as NUL-separated records; a process that ends while they are read is
	// no finding (its error is dropped), and the greps' own arguments match neither pattern.
	out, _ = guestSh(t, c, run.VMID, fmt.Sprintf(`{ grep -l -s -z -x -F "AETHERIUM_RUN_ID=%s" /proc/[0-9]*/environ
		grep -l -s -z -E '^(.*/)?claude$' /proc/[0-9]*/cmdline; } 2>/dev/null | wc -l`, acc.Run.ID), nil)
	if strings.TrimSpace(out) != "0" {
		t.Fatalf("processes of the cancelled run are left in the guest: %q", out)
	}
	if vm, err := c.GetVM(ctx, run.VMID); err != nil || vm.Status != "running" {
		t.Fatalf("the vm given to the cancelled run: %+v %v", vm, err)
	}
}

// runRig is serve (QEMU guests, networking on) in a network namespace of its own, a real git server with
// org/repo.git on the host side of its link (git host "git.test" of the credential proxy), and a scripted model
// API whose script the test chooses run by run; the owner's model key and git token are stored as secrets.
type runRig struct {
	c     *client.Client
	cli   []string // the environment that points the CLI at serve
	serve *proc
	git   *gitServer
	model *atomic.Pointer[anthropictest.Server]
	ctx   context.Context
}

func newRunRig(tb testing.TB) *runRig {
	tb.Helper()
	requireGuestPhase(tb)
	tmpl := os.Getenv("AETHERIUM_TEST_TOOLS_TEMPLATE")
	requireService(tb, "the default template with tools (AETHERIUM_TEST_TOOLS_TEMPLATE, made by scripts/test.sh)", tmpl != "", "unset")
	ns := newNetNS(tb)
	r := &runRig{model: new(atomic.Pointer[anthropictest.Server])}
	r.model.Store(anthropictest.New(anthropictest.Script{APIKey: runModelKey}))
	modelLn := ns.listenHost(tb)
	startModel(tb, modelLn, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) { r.model.Load().ServeHTTP(w, req) }))
	gitLn := ns.listenHost(tb)
	r.git = newGitServer(tb, gitLn)
	// The model's upstream and the git host are on the host side of the namespace's link: the proxy reaches them
	// from the worker's side; guests cannot.
	env := []string{"AETHERIUM_ROOTFS_PATH=" + tmpl, "AETHERIUM_SHUTDOWN_VMS=true",
		"AETHERIUM_MODEL_UPSTREAM_URL=http://" + modelLn.Addr().String(),
		"AETHERIUM_GIT_HOSTS=git.test=http://" + gitLn.Addr().String() + "|GITHUB_TOKEN|x-access-token"}
	dataDir := shortDir(tb)
	addr, p := serveInNetNS(tb, ns, dataDir, "e2e-runs", env...)
	r.serve = p
	tb.Cleanup(func() {
		p.stop(syscall.SIGTERM, 60*time.Second)
		assertNoGuests(tb, dataDir)
	})
	key := readLine(tb, filepath.Join(dataDir, "admin-api-key"))
	r.c = newClient(tb, addr, key)
	r.cli = []string{"AETHERIUM_API_KEY=" + key, "AETHERIUM_SERVER=http://" + addr}
	waitReady(tb, r.c)
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	tb.Cleanup(cancel)
	r.ctx = ctx
	for name, v := range map[string]string{"ANTHROPIC_API_KEY": runModelKey, "GITHUB_TOKEN": runGitToken} {
		if _, _, err := r.c.PutSecret(ctx, name, v); err != nil {
			tb.Fatal(err)
		}
	}
	return r
}

// BenchmarkRunToFirstModelRequest measures what a user waits for before the agent thinks: from POST /runs to the
// agent's first model request at the upstream (a new VM of the default template, guest user, clone through the
// credential proxy, claude-code's start), and the whole run of a one-turn answer. Run with -benchtime=5x.
func BenchmarkRunToFirstModelRequest(b *testing.B) {
	rig := newRunRig(b)
	var first, whole []time.Duration
	for i := 0; b.Loop(); i++ {
		model := anthropictest.New(anthropictest.Script{APIKey: runModelKey,
			Turns: []anthropictest.Turn{{Blocks: []anthropictest.Block{anthropictest.Text("Nothing to do.")}}}})
		rig.model.Store(model)
		start := time.Now()
		acc, err := rig.c.CreateRun(rig.ctx, client.CreateRunRequest{Repo: client.RunRepo{URL: "https://git.test/org/repo.git"},
			Prompt: "Say that there is nothing to do."})
		if err != nil {
			b.Fatal(err)
		}
		select {
		case <-model.FirstMessage():
			first = append(first, time.Since(start))
		case <-time.After(10 * time.Minute):
			b.Fatal("no model request within 10 minutes")
		}
		_, end := runTranscript(b, rig.c, acc.Run.ID)
		if end.Status != "completed" {
			r, _ := rig.c.GetRun(rig.ctx, acc.Run.ID)
			b.Fatalf("run %d ended %s: %+v", i, end.Status, r)
		}
		whole = append(whole, time.Since(start))
	}
	b.ReportMetric(float64(median(first).Milliseconds()), "ms-to-first-model-request-p50")
	b.ReportMetric(float64(median(whole).Milliseconds()), "ms-whole-run-p50")
	b.Logf("POST /runs -> first model request: %v; whole run: %v", first, whole)
}

func median(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

func dumpEvents(evs []client.RunEvent) string {
	var b strings.Builder
	for _, e := range evs {
		d, _ := json.Marshal(e.Data)
		if len(d) > 600 {
			d = append(d[:600], "..."...)
		}
		fmt.Fprintf(&b, "%d %s %s\n", e.Seq, e.Type, d)
	}
	return b.String()
}
