package anthropictest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// claudeBin is the real claude-code binary (the native one of npm package @anthropic-ai/claude-code-linux-x64),
// or the test is skipped.
func claudeBin(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("AETHERIUM_TEST_CLAUDE_BIN")
	if bin == "" {
		t.Skip("SKIPPED: AETHERIUM_TEST_CLAUDE_BIN is not set; point it at the claude binary of " +
			"@anthropic-ai/claude-code-linux-x64 (npm install --prefix /tmp/cc @anthropic-ai/claude-code-linux-x64)")
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("AETHERIUM_TEST_CLAUDE_BIN: %v", err)
	}
	return bin
}

// newRepo makes an empty git repository.
func newRepo(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, args := range [][]string{{"init", "-q", "-b", "main"}, {"config", "user.email", "t@example.com"}, {"config", "user.name", "t"}} {
		if out, err := exec.Command("git", append([]string{"-C", dir}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
	return dir
}

// claudeRun is one headless claude run against a scripted server, in a scratch git repository.
type claudeRun struct {
	dir    string
	lines  []map[string]any
	stdout string
	stderr string
	code   int
}

// runClaude runs claude -p in a fresh git repository with its model API at url. Under root it sets IS_SANDBOX=1,
// which is what lets root use --dangerously-skip-permissions (claude refuses it otherwise).
func runClaude(t *testing.T, dir, url string, maxTurns string, env ...string) *claudeRun {
	t.Helper()
	bin := claudeBin(t)
	home := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-p", "Create hello.txt, then run a command.", "--output-format", "stream-json",
		"--verbose", "--dangerously-skip-permissions", "--max-turns", maxTurns)
	cmd.Dir = dir
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + home, "ANTHROPIC_BASE_URL=" + url, "ANTHROPIC_API_KEY=test-key",
		"DISABLE_AUTOUPDATER=1", "DISABLE_TELEMETRY=1", "DISABLE_ERROR_REPORTING=1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1"}
	if os.Geteuid() == 0 {
		cmd.Env = append(cmd.Env, "IS_SANDBOX=1")
	}
	cmd.Env = append(cmd.Env, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	run := &claudeRun{dir: dir, stdout: stdout.String(), stderr: stderr.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		run.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("claude: %v", err)
	}
	sc := bufio.NewScanner(strings.NewReader(run.stdout))
	sc.Buffer(nil, 16<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("stream-json line is not JSON: %v: %q", err, sc.Text())
		}
		run.lines = append(run.lines, m)
	}
	t.Logf("claude exited %d; %d stream-json lines; stderr: %s", run.code, len(run.lines), run.stderr)
	return run
}

func (r *claudeRun) ofType(typ string) []map[string]any {
	var out []map[string]any
	for _, l := range r.lines {
		if l["type"] == typ {
			out = append(out, l)
		}
	}
	return out
}

func (r *claudeRun) result(t *testing.T) map[string]any {
	t.Helper()
	res := r.ofType("result")
	if len(res) != 1 {
		t.Fatalf("want one result line, got %d:\n%s", len(res), r.stdout)
	}
	if last := r.lines[len(r.lines)-1]; last["type"] != "result" {
		t.Fatalf("the last line is not the result: %v", last)
	}
	return res[0]
}

// contentTypes lists the content block types of the assistant or user lines.
func (r *claudeRun) contentTypes(typ string) []string {
	var out []string
	for _, l := range r.ofType(typ) {
		msg, _ := l["message"].(map[string]any)
		blocks, _ := msg["content"].([]any)
		for _, b := range blocks {
			if m, ok := b.(map[string]any); ok {
				out = append(out, m["type"].(string))
			}
		}
	}
	return out
}

func logRequests(t *testing.T, s *Server) {
	for _, r := range s.Requests() {
		var m messagesRequest
		_ = json.Unmarshal(r.Body, &m)
		t.Logf("request %s %s?%s turn=%d model=%s max_tokens=%d stream=%v tools=%d messages=%d beta=%q",
			r.Method, r.Path, r.Query, r.Turn, m.Model, m.MaxTokens, m.Stream, len(m.Tools), len(m.Messages), r.Header.Get("anthropic-beta"))
	}
}

// TestClaudeCode plays the three-turn script to the real claude-code: it writes a file with Write, runs a
// command with Bash, answers with text; the files change as scripted and its stream-json output reports each step.
func TestClaudeCode(t *testing.T) {
	claudeBin(t)
	dir := newRepo(t)
	srv := New(Script{APIKey: "test-key", Turns: []Turn{
		{Blocks: []Block{Text("I will write the file."),
			ToolUse("Write", map[string]any{"file_path": filepath.Join(dir, "hello.txt"), "content": "hello from the script\n"})}},
		{Blocks: []Block{ToolUse("Bash", map[string]any{"command": "echo hi > ran.txt && git status --short", "description": "Write ran.txt"})},
			Usage: Usage{InputTokens: 7, OutputTokens: 3, CacheReadInputTokens: 50}},
		{Blocks: []Block{Text("All done.")}},
	}})
	hs := httptest.NewServer(srv)
	defer hs.Close()
	run := runClaude(t, dir, hs.URL, "5")
	defer logRequests(t, srv)
	t.Logf("stdout:\n%s", run.stdout)
	if run.code != 0 {
		t.Fatalf("claude exited %d", run.code)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "hello.txt")); err != nil || string(b) != "hello from the script\n" {
		t.Errorf("hello.txt = %q, %v", b, err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "ran.txt")); err != nil || string(b) != "hi\n" {
		t.Errorf("ran.txt = %q, %v", b, err)
	}
	turns := map[int]bool{}
	for _, r := range srv.TurnRequests() {
		turns[r.Turn] = true
	}
	if !turns[0] || !turns[1] || !turns[2] || len(turns) != 3 {
		t.Errorf("turns asked: %v, want 0, 1 and 2", turns)
	}
	if init := run.ofType("system"); len(init) == 0 || init[0]["subtype"] != "init" {
		t.Errorf("no system init line first: %v", init)
	}
	if got := strings.Join(run.contentTypes("assistant"), ","); !strings.Contains(got, "tool_use") || !strings.Contains(got, "text") {
		t.Errorf("assistant content types %s, want text and tool_use", got)
	}
	if got := run.contentTypes("user"); strings.Count(strings.Join(got, ","), "tool_result") != 2 {
		t.Errorf("user content types %v, want two tool_result", got)
	}
	res := run.result(t)
	if res["subtype"] != "success" || res["is_error"] != false || res["result"] != "All done." {
		t.Errorf("result %v", res)
	}
	// claude sums the usage of its model calls: input from message_start, output from message_delta.
	u, _ := res["usage"].(map[string]any)
	want := 2*DefaultUsage.InputTokens + 7
	if u["input_tokens"] != float64(want) || u["output_tokens"] != float64(2*DefaultUsage.OutputTokens+3) || u["cache_read_input_tokens"] != 50.0 {
		t.Errorf("result usage %v, want input %d, output %d, cache reads 50", u, want, 2*DefaultUsage.OutputTokens+3)
	}
	if n, _ := res["num_turns"].(float64); n < 3 {
		t.Errorf("num_turns %v, want 3 or more", res["num_turns"])
	}
}

// TestClaudeCodeMaxTurns: claude stops after --max-turns model turns although the script asks for more tools.
func TestClaudeCodeMaxTurns(t *testing.T) {
	claudeBin(t)
	dir := newRepo(t)
	bash := func(cmd string) Turn { return Turn{Blocks: []Block{ToolUse("Bash", map[string]any{"command": cmd})}} }
	srv := New(Script{Turns: []Turn{bash("echo 1 >> n.txt"), bash("echo 2 >> n.txt"), bash("echo 3 >> n.txt"), {Blocks: []Block{Text("done")}}}})
	hs := httptest.NewServer(srv)
	defer hs.Close()
	run := runClaude(t, dir, hs.URL, "2")
	defer logRequests(t, srv)
	res := run.result(t)
	t.Logf("exit %d, result: %v", run.code, res)
	if b, _ := os.ReadFile(filepath.Join(dir, "n.txt")); string(b) != "1\n2\n" {
		t.Errorf("n.txt = %q, want two commands run", b)
	}
	if res["subtype"] != "error_max_turns" || res["is_error"] != true || run.code == 0 {
		t.Errorf("exit %d, subtype %v, is_error %v; want error_max_turns", run.code, res["subtype"], res["is_error"])
	}
}

// TestClaudeCodeAPIError: a model API that refuses (400, 401) or fails (500) ends the run with an error result
// and exit 1. claude retries even a 401 (10 times by default, with backoff: three minutes); CLAUDE_CODE_MAX_RETRIES
// bounds that.
func TestClaudeCodeAPIError(t *testing.T) {
	claudeBin(t)
	for _, status := range []int{400, 401, 500} {
		t.Run(strconv.Itoa(status), func(t *testing.T) {
			dir := newRepo(t)
			srv := New(Script{Turns: []Turn{{Status: status}}})
			hs := httptest.NewServer(srv)
			defer hs.Close()
			run := runClaude(t, dir, hs.URL, "3", "CLAUDE_CODE_MAX_RETRIES=1")
			defer logRequests(t, srv)
			res := run.result(t)
			t.Logf("exit %d, %d requests, result: %v", run.code, len(srv.Requests()), res)
			// The subtype stays "success": an API error shows in is_error, terminal_reason and api_error_status.
			if run.code != 1 || res["is_error"] != true || res["terminal_reason"] != "api_error" ||
				res["api_error_status"] != float64(status) {
				t.Errorf("exit %d, is_error %v, terminal_reason %v, api_error_status %v: want a failed run",
					run.code, res["is_error"], res["terminal_reason"], res["api_error_status"])
			}
		})
	}
}

// procStat is a process's group and session, from /proc/<pid>/stat.
func procStat(pid int) (pgid, sid int, ok bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, false
	}
	// The command name (field 2) may hold spaces; the fields after its closing parenthesis are fixed.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 4 {
		return 0, 0, false
	}
	pgid, _ = strconv.Atoi(f[2])
	sid, _ = strconv.Atoi(f[3])
	return pgid, sid, true
}

// pidsRunning lists the processes whose command line contains marker.
func pidsRunning(marker string) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if bytes.Contains(bytes.ReplaceAll(b, []byte{0}, []byte{' '}), []byte(marker)) {
			if _, _, ok := procStat(pid); ok {
				out = append(out, pid)
			}
		}
	}
	return out
}

// TestClaudeCodeKill: claude runs each Bash tool command in a session of its own (setsid: the shell's pgid and
// sid are its pid), so SIGKILL to claude's process group leaves the command running, reparented. What does end
// everything is a PID namespace: claude under `unshare --pid --fork --kill-child`, killed, takes every process
// of the namespace with it (the kernel kills them when the namespace's init dies).
func TestClaudeCodeKill(t *testing.T) {
	bin := claudeBin(t)
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED: unshare --pid needs root")
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Skip("SKIPPED: no unshare (util-linux)")
	}
	dir := newRepo(t)
	// claude's Bash tool refuses a plain long sleep; tail waits as long, and its interval makes the marker.
	marker := fmt.Sprintf("tail -f /dev/null -s 7.%d", os.Getpid())
	srv := New(Script{Turns: []Turn{{Blocks: []Block{ToolUse("Bash", map[string]any{"command": marker + " ; echo after"})}},
		{Blocks: []Block{Text("done")}}}})
	hs := httptest.NewServer(srv)
	defer hs.Close()
	cmd := exec.Command(unshare, "--pid", "--fork", "--kill-child", bin, "-p", "wait", "--output-format", "stream-json",
		"--verbose", "--dangerously-skip-permissions")
	cmd.Dir = dir
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(), "ANTHROPIC_BASE_URL=" + hs.URL, "ANTHROPIC_API_KEY=x",
		"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1", "IS_SANDBOX=1"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var stdout syncBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stdout
	defer func() {
		if t.Failed() {
			logRequests(t, srv)
			t.Logf("claude's output:\n%s", stdout.String())
		}
	}()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		for _, p := range pidsRunning(marker) {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
	})
	var tails []int
	for deadline := time.Now().Add(time.Minute); len(tails) == 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the Bash command did not start within a minute")
		}
		tails = pidsRunning(marker)
	}
	group, _, _ := procStat(cmd.Process.Pid)
	for _, p := range tails {
		pg, sid, _ := procStat(p)
		t.Logf("claude's group %d; %q pid %d pgid %d sid %d", group, marker, p, pg, sid)
		if pg == group {
			t.Errorf("the Bash command runs in claude's process group %d: claude no longer makes a session per command", pg)
		}
	}
	killed := time.Now()
	if err := syscall.Kill(cmd.Process.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-done
	for deadline := time.Now().Add(10 * time.Second); len(pidsRunning(marker)) > 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%q still runs 10 s after SIGKILL of the PID namespace's parent", marker)
		}
	}
	t.Logf("the Bash command was gone %v after SIGKILL of unshare", time.Since(killed))
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }
