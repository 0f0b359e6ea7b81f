package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/aetherium/aetherium/internal/cli"
	"github.com/aetherium/aetherium/internal/cli/fakeapi"
	"github.com/aetherium/aetherium/pkg/client"
)

const testKey = "ae_testtest_secretsecretsecretsecretsecretsecretsec"

// env is a test's environment; the fake API's URL and key are set by newEnv.
type env struct {
	t    *testing.T
	srv  *fakeapi.Server
	vars map[string]string
	tty  bool
	// stdin and opts are given to the commands of the next runs.
	stdin string
	opts  []cli.Option
}

func newEnv(t *testing.T) *env {
	t.Helper()
	srv := fakeapi.New(testKey)
	t.Cleanup(srv.Close)
	return &env{t: t, srv: srv, vars: map[string]string{cli.EnvServer: srv.URL, cli.EnvAPIKey: testKey}}
}

type result struct {
	stdout, stderr string
	code           int
}

// run runs the CLI as main would: a root command with the client commands mounted, and the exit code that main
// would exit with. The root is left with cobra's defaults so that the commands are shown not to rely on it.
func (e *env) run(args ...string) result {
	e.t.Helper()
	var out, errb bytes.Buffer
	root := &cobra.Command{Use: "aetherium"}
	opts := append([]cli.Option{
		cli.WithGetenv(func(k string) string { return e.vars[k] }),
		cli.WithTerminal(e.tty),
		cli.WithClientOptions(client.WithMaxPollInterval(2 * time.Millisecond)),
	}, e.opts...)
	root.AddCommand(cli.NewClientCommands(cli.IOStreams{In: strings.NewReader(e.stdin), Out: &out, ErrOut: &errb}, opts...)...)
	root.SetArgs(args)
	root.SetOut(&out)
	root.SetErr(&errb)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := root.ExecuteContext(ctx)
	r := result{stdout: out.String(), stderr: errb.String(), code: cli.ExitCode(err)}
	// The key's secret part, even a piece of it; the word "secret" alone is in messages and JSON field names.
	if strings.Contains(r.stdout+r.stderr, "secretsecret") {
		e.t.Errorf("output leaks the API key:\n%s\n%s", r.stdout, r.stderr)
	}
	return r
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

func (e *env) lastRequest(method, prefix string) fakeapi.Request {
	e.t.Helper()
	reqs := e.srv.Requests()
	for i := len(reqs) - 1; i >= 0; i-- {
		if reqs[i].Method == method && strings.HasPrefix(reqs[i].Path, prefix) {
			return reqs[i]
		}
	}
	e.t.Fatalf("no %s %s request", method, prefix)
	return fakeapi.Request{}
}

func wantCode(t *testing.T, r result, code int) {
	t.Helper()
	if r.code != code {
		t.Fatalf("want exit %d, got %s", code, r)
	}
}

// wantFields checks "key: value" lines of human output, given as key, value, key, value...
func wantFields(t *testing.T, out string, kv ...string) {
	t.Helper()
	for i := 0; i+1 < len(kv); i += 2 {
		re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(kv[i]) + `: +` + regexp.QuoteMeta(kv[i+1]) + `$`)
		if !re.MatchString(out) {
			t.Errorf("no %s: %s in\n%s", kv[i], kv[i+1], out)
		}
	}
}

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

func TestVMCreateWaitsAndPrintsID(t *testing.T) {
	e := newEnv(t)
	r := e.run("vm", "create", "web", "--vcpus", "2", "--memory", "1024", "--image", "ubuntu-24.04", "--priority", "high", "--metadata", "team=infra", "--metadata", "x=a=b")
	wantCode(t, r, 0)
	id := strings.TrimSpace(r.stdout)
	if !uuidRE.MatchString(id) || r.stderr != "" {
		t.Fatalf("want only the id on stdout and nothing on stderr, got %s", r)
	}
	vm, ok := e.srv.VM(id)
	if !ok || vm.Status != "running" {
		t.Errorf("vm = %+v", vm)
	}
	req := e.lastRequest(http.MethodPost, "/api/v1/vms")
	if req.Query.Get("wait") == "" {
		t.Error("vm create did not ask the server to wait")
	}
	var body client.CreateVMRequest
	if err := json.Unmarshal(req.Body, &body); err != nil {
		t.Fatal(err)
	}
	want := client.CreateVMRequest{Name: "web", VCPUs: 2, MemoryMB: 1024, Image: "ubuntu-24.04", Priority: "high", Metadata: map[string]string{"team": "infra", "x": "a=b"}}
	if fmt.Sprint(body) != fmt.Sprint(want) {
		t.Errorf("body = %+v, want %+v", body, want)
	}
}

func TestVMCreateSlowPollsTask(t *testing.T) {
	e := newEnv(t)
	e.srv.SetSteps(3)
	r := e.run("vm", "create", "slow")
	wantCode(t, r, 0)
	if vm, _ := e.srv.VM(strings.TrimSpace(r.stdout)); vm.Status != "running" {
		t.Errorf("vm = %+v", vm)
	}
	if n := len(e.srv.Requests()); n < 5 {
		t.Errorf("only %d requests: the task was not polled", n)
	}
}

func TestVMCreateNoWaitAndJSON(t *testing.T) {
	e := newEnv(t)
	e.srv.SetSteps(5)
	r := e.run("vm", "create", "later", "--no-wait")
	wantCode(t, r, 0)
	id := strings.TrimSpace(r.stdout)
	if vm, _ := e.srv.VM(id); vm.Status != "creating" {
		t.Errorf("vm = %+v", vm)
	}
	if !strings.Contains(r.stderr, "aetherium task get ") {
		t.Errorf("no hint to follow the task: %s", r)
	}
	if e.lastRequest(http.MethodPost, "/api/v1/vms").Query.Has("wait") {
		t.Error("--no-wait asked the server to wait")
	}

	r = e.run("vm", "create", "later2", "--no-wait", "--json")
	wantCode(t, r, 0)
	var acc client.VMAccepted
	if err := json.Unmarshal([]byte(r.stdout), &acc); err != nil || acc.TaskID == "" || acc.VM.Name != "later2" {
		t.Errorf("--json output %q: %+v %v", r.stdout, acc, err)
	}

	e.srv.SetSteps(0)
	r = e.run("vm", "create", "now", "--json")
	wantCode(t, r, 0)
	var vm client.VM
	if err := json.Unmarshal([]byte(r.stdout), &vm); err != nil || vm.Status != "running" {
		t.Errorf("--json output %q: %v", r.stdout, err)
	}
}

func TestVMCreateFailure(t *testing.T) {
	for _, steps := range []int{0, 2} {
		e := newEnv(t)
		e.srv.SetSteps(steps)
		r := e.run("vm", "create", "fail-boot")
		wantCode(t, r, 1)
		if !regexp.MustCompile(`^error: creating vm fail-boot failed: boot failed: kernel panic \(task [0-9a-f-]{36}\)\n$`).MatchString(r.stderr) || r.stdout != "" {
			t.Errorf("steps=%d: %s", steps, r)
		}
	}

	e := newEnv(t)
	e.run("vm", "create", "dup")
	r := e.run("vm", "create", "dup")
	wantCode(t, r, 1)
	if r.stderr != "error: a vm named \"dup\" already exists (conflict)\n" {
		t.Errorf("conflict: %s", r)
	}
}

func TestVMCreateTimeout(t *testing.T) {
	e := newEnv(t)
	e.srv.SetSteps(1 << 30)
	r := e.run("vm", "create", "stuck", "--timeout", "300ms")
	wantCode(t, r, 1)
	want := regexp.MustCompile(`^error: gave up waiting after 300ms \(--timeout\): vm stuck \([0-9a-f-]{36}\) is still in progress; follow it with ` + "`aetherium task get [0-9a-f-]{36}`\n$")
	if !want.MatchString(r.stderr) {
		t.Errorf("%s", r)
	}
}

func TestVMCreateProgressOnTerminal(t *testing.T) {
	e := newEnv(t)
	e.tty = true
	r := e.run("vm", "create", "shown")
	wantCode(t, r, 0)
	if !strings.Contains(r.stderr, "creating vm shown") || !strings.HasSuffix(r.stderr, "\r\x1b[K") {
		t.Errorf("progress line: %q", r.stderr)
	}
	if !uuidRE.MatchString(strings.TrimSpace(r.stdout)) {
		t.Errorf("stdout %q", r.stdout)
	}
}

func TestVMList(t *testing.T) {
	e := newEnv(t)
	r := e.run("vm", "list")
	wantCode(t, r, 0)
	if r.stdout != "" || r.stderr != "no VMs found\n" {
		t.Errorf("empty list: %s", r)
	}

	e.srv.SetPageSize(2) // the CLI must follow cursors
	var ids []string
	for i, st := range []string{"running", "stopped", "running", "failed", "running"} {
		ids = append(ids, e.srv.AddVM(fmt.Sprintf("vm-%d", i), st).ID)
	}
	r = e.run("vm", "list")
	wantCode(t, r, 0)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 6 || !regexp.MustCompile(`^ID\s+NAME\s+STATUS\s+VCPUS\s+MEMORY\s+IMAGE\s+AGE$`).MatchString(lines[0]) {
		t.Fatalf("table:\n%s", r.stdout)
	}
	for i, id := range ids {
		if !strings.HasPrefix(lines[i+1], id) || !strings.Contains(lines[i+1], fmt.Sprintf("vm-%d", i)) {
			t.Errorf("row %d = %q", i, lines[i+1])
		}
	}

	r = e.run("vm", "list", "--status", "running,failed", "--json")
	wantCode(t, r, 0)
	var l client.VMList
	if err := json.Unmarshal([]byte(r.stdout), &l); err != nil || len(l.VMs) != 4 {
		t.Errorf("filtered list: %+v %v\n%s", l, err, r)
	}
	if q := e.lastRequest(http.MethodGet, "/api/v1/vms").Query.Get("status"); q != "running,failed" {
		t.Errorf("status query %q", q)
	}

	r = e.run("vm", "list", "--limit", "3", "--json")
	wantCode(t, r, 0)
	if err := json.Unmarshal([]byte(r.stdout), &l); err != nil || len(l.VMs) != 3 {
		t.Errorf("--limit 3: %d VMs, %v", len(l.VMs), err)
	}

	r = e.run("vm", "list", "--status", "bogus")
	wantCode(t, r, 1)
	if r.stderr != "error: status: unknown status \"bogus\" (validation_failed)\n" {
		t.Errorf("%s", r)
	}
}

func TestVMGetResolvesNames(t *testing.T) {
	e := newEnv(t)
	vm := e.srv.AddVM("web", "running")
	e.srv.AddVM("web", "deleted") // a deleted VM's name may be reused; it must not make "web" ambiguous

	for _, ref := range []string{"web", vm.ID} {
		r := e.run("vm", "get", ref)
		wantCode(t, r, 0)
		wantFields(t, r.stdout, "ID", vm.ID, "Name", "web", "Status", "running", "Memory", "512 MiB")
	}
	r := e.run("vm", "get", "web", "--json")
	var got client.VM
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || got.ID != vm.ID {
		t.Errorf("--json: %v %s", err, r)
	}

	r = e.run("vm", "get", "nope")
	wantCode(t, r, 1)
	if r.stderr != "error: vm not found: no VM is named \"nope\" (not_found)\n" {
		t.Errorf("%s", r)
	}
	r = e.run("vm", "get", "00000000-0000-0000-0000-000000000000")
	wantCode(t, r, 1)
	if r.stderr != "error: vm not found (not_found)\n" {
		t.Errorf("%s", r)
	}

	other := e.srv.AddVM("web", "stopped")
	r = e.run("vm", "get", "web")
	wantCode(t, r, 1)
	if !strings.Contains(r.stderr, "2 VMs are named \"web\"") || !strings.Contains(r.stderr, other.ID) || !strings.Contains(r.stderr, vm.ID) {
		t.Errorf("ambiguous name: %s", r)
	}
}

func TestVMDelete(t *testing.T) {
	e := newEnv(t)
	vm := e.srv.AddVM("old", "running")
	e.srv.SetSteps(2)
	r := e.run("vm", "delete", "old")
	wantCode(t, r, 0)
	if r.stdout != "vm "+vm.ID+" deleted\n" {
		t.Errorf("%s", r)
	}
	if got, _ := e.srv.VM(vm.ID); got.Status != "deleted" {
		t.Errorf("status %q", got.Status)
	}

	vm = e.srv.AddVM("old2", "running")
	r = e.run("vm", "rm", vm.ID, "--no-wait", "--json")
	wantCode(t, r, 0)
	var acc client.TaskAccepted
	if err := json.Unmarshal([]byte(r.stdout), &acc); err != nil || acc.TaskID == "" {
		t.Errorf("--no-wait --json: %v %s", err, r)
	}
	if e.lastRequest(http.MethodDelete, "/api/v1/vms/").Path != "/api/v1/vms/"+vm.ID {
		t.Error("deleted the wrong VM")
	}

	r = e.run("vm", "delete", "ghost")
	wantCode(t, r, 1)
}

func TestVMExec(t *testing.T) {
	e := newEnv(t)
	vm := e.srv.AddVM("box", "running")

	r := e.run("vm", "exec", "box", "-e", "A=1", "--env", "B=x=y", "--workdir", "/src", "--timeout-seconds", "7", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
	wantCode(t, r, 3)
	if r.stdout != "out\n" || r.stderr != "err\n" {
		t.Errorf("%s", r)
	}
	req := e.lastRequest(http.MethodPost, "/api/v1/vms/")
	if req.Path != "/api/v1/vms/"+vm.ID+"/execute" {
		t.Errorf("path %s", req.Path)
	}
	var body client.ExecuteRequest
	if err := json.Unmarshal(req.Body, &body); err != nil {
		t.Fatal(err)
	}
	want := client.ExecuteRequest{Command: "sh", Args: []string{"-c", "echo out; echo err >&2; exit 3"}, Env: map[string]string{"A": "1", "B": "x=y"}, WorkingDir: "/src", TimeoutSeconds: 7}
	if fmt.Sprint(body) != fmt.Sprint(want) {
		t.Errorf("body %+v, want %+v", body, want)
	}

	// Streamed by default: started without a server-side wait, then followed on the stream.
	if req.Query.Has("wait") {
		t.Errorf("a streamed exec must not ask the server to wait: %v", req.Query)
	}
	if n := e.srv.Count(http.MethodGet, "/api/v1/executions/"+e.lastExecutionID(t)+"/stream"); n != 1 {
		t.Errorf("stream requests = %d, want 1", n)
	}

	e.srv.SetSteps(2) // longer than the server-side wait: polled
	r = e.run("vm", "exec", "--no-stream", vm.ID, "--", "echo", "hello", "world")
	wantCode(t, r, 0)
	if r.stdout != "hello world\n" || r.stderr != "" {
		t.Errorf("%s", r)
	}
	if n := e.srv.Count(http.MethodGet, "/api/v1/executions/"+e.lastExecutionID(t)+"/stream"); n != 0 {
		t.Errorf("--no-stream streamed")
	}
	e.srv.SetSteps(0)

	r = e.run("vm", "exec", "box", "--json", "--", "sh", "-c", "exit 4")
	wantCode(t, r, 4)
	var ex client.Execution
	if err := json.Unmarshal([]byte(r.stdout), &ex); err != nil || ex.ExitCode == nil || *ex.ExitCode != 4 {
		t.Errorf("--json: %v %s", err, r)
	}

	r = e.run("vm", "exec", "box", "--", "sh", "-c", "bigout")
	wantCode(t, r, 0)
	if r.stderr != "warning: stdout was truncated by the server\n" {
		t.Errorf("truncation: %s", r)
	}
	r = e.run("vm", "exec", "box", "--", "sh", "-c", "hang")
	wantCode(t, r, 124)
	if r.stderr != "warning: the command was killed by its timeout\n" {
		t.Errorf("timeout: %s", r)
	}
	r = e.run("vm", "exec", "box", "--", "sh", "-c", "unreachable")
	wantCode(t, r, 125)
	if !regexp.MustCompile(`^error: could not run the command in vm box: agent unreachable: connection reset \(task [0-9a-f-]{36}\)\n$`).MatchString(r.stderr) {
		t.Errorf("failed execution: %s", r)
	}

	e.srv.AddVM("off", "stopped")
	r = e.run("vm", "exec", "off", "--", "true")
	wantCode(t, r, 125)
	if r.stderr != "error: vm is stopped, not running (vm_not_running)\n" {
		t.Errorf("stopped vm: %s", r)
	}
}

// lastExecutionID is the execution id of the last POST .../execute answer, found through the executions list.
func (e *env) lastExecutionID(t *testing.T) string {
	t.Helper()
	req := e.lastRequest(http.MethodPost, "/api/v1/vms/")
	vmID := strings.TrimSuffix(strings.TrimPrefix(req.Path, "/api/v1/vms/"), "/execute")
	c, err := client.New(e.srv.URL, testKey)
	if err != nil {
		t.Fatal(err)
	}
	l, err := c.ListExecutions(context.Background(), vmID, client.ListOptions{})
	if err != nil || len(l.Executions) == 0 {
		t.Fatalf("list executions: %v", err)
	}
	return l.Executions[len(l.Executions)-1].ID
}

// TestVMExecStreamFallback: when the stream breaks or the server has none, vm exec waits for the command and prints
// the rest of its output from the stored copy, each byte once.
func TestVMExecStreamFallback(t *testing.T) {
	e := newEnv(t)
	e.srv.AddVM("box", "running")
	e.srv.SetSteps(1)

	// A server without the stream route.
	e.srv.SetBefore(func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.HasSuffix(r.URL.Path, "/stream") {
			return false
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"error":{"code":"not_found","message":"no route for GET"}}`))
		return true
	})
	r := e.run("vm", "exec", "box", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
	wantCode(t, r, 3)
	if r.stdout != "out\n" || r.stderr != "err\n" {
		t.Errorf("no stream route: %s", r)
	}

	// A stream cut after the first chunk (a proxy timeout, a server restart).
	e.srv.SetBefore(func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.HasSuffix(r.URL.Path, "/stream") {
			return false
		}
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = w.Write([]byte("event: stdout\ndata: {\"offset\":0,\"data\":\"one\\n\"}\n\n"))
		return true
	})
	r = e.run("vm", "exec", "box", "--", "sh", "-c", "echo one; echo two")
	wantCode(t, r, 0)
	if r.stdout != "one\ntwo\n" || r.stderr != "" {
		t.Errorf("broken stream: %s", r)
	}
}

func TestUsageErrors(t *testing.T) {
	e := newEnv(t)
	delete(e.vars, cli.EnvAPIKey) // usage errors come before the missing key
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"vm", "exec", "box"}, "error: want a VM and a command: vm exec VM -- COMMAND [ARGS...]\nRun 'aetherium vm exec --help' for usage.\n"},
		{[]string{"vm", "exec", "--", "ls"}, "error: the VM comes before --: vm exec VM -- COMMAND [ARGS...]\nRun 'aetherium vm exec --help' for usage.\n"},
		{[]string{"vm", "exec", "box", "ls", "--", "-l"}, "error: unexpected argument \"ls\" before --\nRun 'aetherium vm exec --help' for usage.\n"},
		{[]string{"vm", "exec", "box", "ls", "-la"}, "error: unknown shorthand flag: 'l' in -la (put the remote command after --)\nRun 'aetherium vm exec --help' for usage.\n"},
		{[]string{"vm", "exec", "--env", "NOEQUALS", "box", "--", "ls"}, "error: --env \"NOEQUALS\": want KEY=VALUE\nRun 'aetherium vm exec --help' for usage.\n"},
		{[]string{"vm", "create"}, "error: accepts 1 arg(s), received 0\nRun 'aetherium vm create --help' for usage.\n"},
		{[]string{"vm", "create", "x", "--vcpus", "many"}, "error: invalid argument \"many\" for \"--vcpus\" flag: strconv.ParseInt: parsing \"many\": invalid syntax\nRun 'aetherium vm create --help' for usage.\n"},
		{[]string{"vm", "frobnicate"}, "error: unknown command \"frobnicate\" for \"aetherium vm\"\nRun 'aetherium vm --help' for usage.\n"},
		{[]string{"job", "run", "--", "true"}, "error: give exactly one of --vm and --create\nRun 'aetherium job run --help' for usage.\n"},
		{[]string{"job", "run", "--vm", "a", "--create", "b", "--", "true"}, "error: give exactly one of --vm and --create\nRun 'aetherium job run --help' for usage.\n"},
		{[]string{"job", "run", "--vm", "a", "--memory", "256", "--", "true"}, "error: --memory only goes with --create\nRun 'aetherium job run --help' for usage.\n"},
		{[]string{"job", "run", "--vm", "a"}, "error: requires at least 1 arg(s), only received 0\nRun 'aetherium job run --help' for usage.\n"},
		{[]string{"vm", "list", "--api-key", "k", "--api-key-file", "f"}, "error: --api-key and --api-key-file are mutually exclusive\nRun 'aetherium vm list --help' for usage.\n"},
	} {
		r := e.run(tc.args...)
		if r.code != 2 || r.stderr != tc.want || r.stdout != "" {
			t.Errorf("%v: want exit 2 and %q, got %s", tc.args, tc.want, r)
		}
	}
	if n := len(e.srv.Requests()); n != 0 {
		t.Errorf("usage errors sent %d requests", n)
	}

	r := e.run("vm")
	wantCode(t, r, 0)
	if !strings.Contains(r.stdout, "Available Commands:") {
		t.Errorf("vm without a subcommand: %s", r)
	}
}

func TestTaskGet(t *testing.T) {
	e := newEnv(t)
	e.srv.SetSteps(2)
	r := e.run("vm", "create", "t", "--no-wait", "--json")
	var acc client.VMAccepted
	if err := json.Unmarshal([]byte(r.stdout), &acc); err != nil {
		t.Fatal(err, r)
	}
	r = e.run("task", "get", acc.TaskID)
	wantCode(t, r, 0)
	wantFields(t, r.stdout, "ID", acc.TaskID, "Type", "vm:create", "Status", "processing", "VM", acc.VM.ID, "Attempts", "1 (max retries 3)")
	r = e.run("task", "get", acc.TaskID, "--wait", "--json")
	wantCode(t, r, 0)
	var task client.Task
	if err := json.Unmarshal([]byte(r.stdout), &task); err != nil || task.Status != "completed" || string(task.Result) == "" {
		t.Errorf("--wait --json: %+v %v", task, err)
	}
	r = e.run("task", "get", "nope")
	wantCode(t, r, 1)
	if r.stderr != "error: task not found (not_found)\n" {
		t.Errorf("%s", r)
	}
}

func TestJobRun(t *testing.T) {
	e := newEnv(t)
	r := e.run("job", "run", "--create", "ci", "--vcpus", "2", "--delete-after", "--env", "K=v", "--", "echo one", "echo two >&2; exit 3", "echo three")
	wantCode(t, r, 3)
	want := regexp.MustCompile(`^==> \[1/3\] echo one \(exit 0, \d+\S*s\)
one
==> \[2/3\] echo two >&2; exit 3 \(exit 3, \d+\S*s\)
==> \[3/3\] echo three \(exit 0, \d+\S*s\)
three
==> job [0-9a-f-]{36} completed in vm ([0-9a-f-]{36})
$`)
	m := want.FindStringSubmatch(r.stdout)
	if m == nil || r.stderr != "two\n" {
		t.Fatalf("output: %s", r)
	}
	if vm, _ := e.srv.VM(m[1]); vm.Status != "deleted" || vm.Name != "ci" || vm.VCPUs != 2 {
		t.Errorf("--delete-after: vm = %+v", vm)
	}
	var body client.CreateJobRequest
	if err := json.Unmarshal(e.lastRequest(http.MethodPost, "/api/v1/jobs").Body, &body); err != nil {
		t.Fatal(err)
	}
	if body.VM == nil || body.VM.Name != "ci" || body.VMID != "" || !body.DeleteVMAfter || body.StopOnError || len(body.Commands) != 3 ||
		fmt.Sprint(body.Commands[1]) != fmt.Sprint(client.JobCommand{Command: "sh", Args: []string{"-c", "echo two >&2; exit 3"}, Env: map[string]string{"K": "v"}}) {
		t.Errorf("job request %+v", body)
	}

	e.srv.AddVM("box", "running")
	e.srv.SetSteps(2)
	r = e.run("job", "run", "--vm", "box", "--stop-on-error", "--", "echo a", "false", "echo never")
	wantCode(t, r, 1)
	if !strings.Contains(r.stdout, "==> [2/3] false (exit 1") || !strings.Contains(r.stdout, "==> [3/3] echo never (not run)\n") || strings.Contains(r.stdout, "never\n==>") {
		t.Errorf("stop on error: %s", r)
	}

	r = e.run("job", "run", "--vm", "box", "--json", "--", "echo a", "echo b")
	wantCode(t, r, 0)
	var job client.Job
	if err := json.Unmarshal([]byte(r.stdout), &job); err != nil || job.Status != "completed" || len(job.Executions) != 2 || job.Executions[1].Stdout != "b\n" {
		t.Errorf("--json: %+v %v", job, err)
	}

	r = e.run("job", "run", "--create", "fail-vm", "--", "true")
	wantCode(t, r, 125)
	if !regexp.MustCompile(`^error: job [0-9a-f-]{36} failed: create vm: boot failed: kernel panic \(task [0-9a-f-]{36}\)\n$`).MatchString(r.stderr) {
		t.Errorf("failed job: %s", r)
	}

	r = e.run("job", "run", "--vm", "box", "--", "hang")
	wantCode(t, r, 124)
	if !strings.Contains(r.stderr, "warning: [1/1] the command was killed by its timeout") {
		t.Errorf("%s", r)
	}
}

func TestSettingsAndConnectionErrors(t *testing.T) {
	e := newEnv(t)

	// The key from a file, whitespace trimmed; a file others can read is pointed out.
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "key")
	if err := os.WriteFile(keyFile, []byte(testKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	delete(e.vars, cli.EnvAPIKey)
	r := e.run("vm", "list", "--api-key-file", keyFile)
	wantCode(t, r, 0)
	if r.stderr != "no VMs found\n" {
		t.Errorf("%s", r)
	}
	if err := os.Chmod(keyFile, 0o644); err != nil {
		t.Fatal(err)
	}
	e.vars[cli.EnvAPIKeyFile] = keyFile
	r = e.run("vm", "list")
	wantCode(t, r, 0)
	if !strings.HasPrefix(r.stderr, "warning: API key file "+keyFile+" is readable by other users (mode 0644)") {
		t.Errorf("%s", r)
	}
	if got := e.lastRequest(http.MethodGet, "/api/v1/vms").Header.Get("Authorization"); got != "Bearer "+testKey {
		t.Errorf("Authorization %q", got)
	}

	// No key at all.
	delete(e.vars, cli.EnvAPIKeyFile)
	r = e.run("vm", "list")
	wantCode(t, r, 1)
	if r.stderr != "error: no API key: set AETHERIUM_API_KEY or pass --api-key-file FILE (ask the server's administrator for a key)\n" {
		t.Errorf("%s", r)
	}

	// A key the server rejects.
	r = e.run("vm", "list", "--api-key", "ae_wrongkey")
	wantCode(t, r, 1)
	if !strings.HasPrefix(r.stderr, "error: the server at "+e.srv.URL+" rejected the API key: missing or invalid api key (unauthorized); set AETHERIUM_API_KEY") {
		t.Errorf("%s", r)
	}

	// --server beats the environment; a server that is down is named, with what to do.
	e.vars[cli.EnvAPIKey] = testKey
	down := httptest.NewServer(http.NotFoundHandler())
	down.Close()
	r = e.run("vm", "list", "--server", down.URL)
	wantCode(t, r, 1)
	if r.stderr != "error: cannot reach the Aetherium server at "+down.URL+" (connection refused); is it running? Start one with `aetherium serve`, or point --server / AETHERIUM_SERVER at it\n" {
		t.Errorf("%s", r)
	}
	e.vars[cli.EnvServer] = down.URL
	r = e.run("vm", "list", "--server", e.srv.URL)
	wantCode(t, r, 0)

	r = e.run("vm", "list", "--server", "localhost:8080")
	wantCode(t, r, 2)
	if !strings.HasPrefix(r.stderr, "error: invalid server URL \"localhost:8080\": want http://host[:port] or https://host[:port]\n") {
		t.Errorf("%s", r)
	}

	// A proxy's error page.
	e.vars[cli.EnvServer] = e.srv.URL
	e.srv.SetBefore(func(w http.ResponseWriter, r *http.Request) bool {
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(http.StatusBadGateway)
		fmt.Fprint(w, "<html><h1>Bad Gateway</h1></html>")
		return true
	})
	r = e.run("vm", "list")
	wantCode(t, r, 1)
	if r.stderr != "error: unexpected answer from server: HTTP 502 Bad Gateway (text/html body; is a proxy in the way?)\n" {
		t.Errorf("%s", r)
	}
}

func TestExitCode(t *testing.T) {
	if cli.ExitCode(nil) != 0 || cli.ExitCode(fmt.Errorf("x")) != 1 || cli.ExitCode(fmt.Errorf("wrapped: %w", &cli.ExitError{Code: 7})) != 7 {
		t.Error("ExitCode")
	}
}

func BenchmarkVMList(b *testing.B) {
	srv := fakeapi.New(testKey)
	defer srv.Close()
	for i := range 50 {
		srv.AddVM(fmt.Sprintf("vm-%d", i), "running")
	}
	vars := map[string]string{cli.EnvServer: srv.URL, cli.EnvAPIKey: testKey}
	for b.Loop() {
		var out bytes.Buffer
		root := &cobra.Command{Use: "aetherium"}
		root.AddCommand(cli.NewClientCommands(cli.IOStreams{Out: &out, ErrOut: &out}, cli.WithGetenv(func(k string) string { return vars[k] }))...)
		root.SetArgs([]string{"vm", "list"})
		if err := root.Execute(); err != nil {
			b.Fatal(err)
		}
	}
}

// TestIdempotencyKeyFlag: --idempotency-key goes with the command's mutating call only.
func TestIdempotencyKeyFlag(t *testing.T) {
	e := newEnv(t)
	if r := e.run("vm", "create", "keyed", "--idempotency-key", "deploy-7"); r.code != 0 {
		t.Fatal(r)
	}
	if got := e.lastRequest("POST", "/api/v1/vms").Header.Get(client.IdempotencyKeyHeader); got != "deploy-7" {
		t.Fatalf("vm create sent Idempotency-Key %q", got)
	}
	for _, req := range e.srv.Requests() {
		if req.Method == http.MethodGet && req.Header.Get(client.IdempotencyKeyHeader) != "" {
			t.Errorf("GET %s carried the key", req.Path)
		}
	}
	if r := e.run("vm", "create", "plain"); r.code != 0 {
		t.Fatal(r)
	}
	if got := e.lastRequest("POST", "/api/v1/vms").Header.Get(client.IdempotencyKeyHeader); got != "" {
		t.Fatalf("vm create without the flag sent Idempotency-Key %q", got)
	}
}
