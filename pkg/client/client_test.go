package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/cli/fakeapi"
	"github.com/aetherium/aetherium/pkg/client"
)

const testKey = "ae_testtest_secretsecretsecretsecretsecretsecretsec"

// newClient returns a client of a fresh fake API, polling fast so the wait loop tests stay quick.
func newClient(t *testing.T, opts ...client.Option) (*client.Client, *fakeapi.Server) {
	t.Helper()
	srv := fakeapi.New(testKey)
	t.Cleanup(srv.Close)
	opts = append([]client.Option{client.WithMaxPollInterval(5 * time.Millisecond)}, opts...)
	c, err := client.New(srv.URL, testKey, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return c, srv
}

func TestNewValidatesURLAndKey(t *testing.T) {
	for _, u := range []string{"", "127.0.0.1:8080", "localhost:8080", "ftp://host", "http://", "http://host/?a=b", "http://host/#x", "http://host:bad"} {
		if _, err := client.New(u, ""); err == nil {
			t.Errorf("New(%q) accepted an invalid URL", u)
		}
	}
	_, err := client.New("http://host", "ae_secret\nX-Evil: 1")
	if err == nil {
		t.Fatal("New accepted a key with a newline")
	}
	if strings.Contains(err.Error(), "secret") {
		t.Errorf("error echoes the key: %v", err)
	}
	c, err := client.New("https://u:pw@example.com:8443/prefix/api/v1/", testKey)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := c.BaseURL(), "https://example.com:8443/prefix"; got != want {
		t.Errorf("BaseURL = %q, want %q", got, want)
	}
	for _, s := range []string{fmt.Sprint(c), fmt.Sprintf("%v %+v %#v %s %v %+v", c, c, c, c, *c, *c)} {
		if strings.Contains(s, "secret") || strings.Contains(s, "pw") {
			t.Errorf("printing the client leaks a credential: %s", s)
		}
	}
}

func TestRequestEncodingAndAuth(t *testing.T) {
	c, srv := newClient(t, client.WithUserAgent("test-agent/9"))
	ctx := context.Background()
	acc, err := c.CreateVM(ctx, client.CreateVMRequest{Name: "alpha", VCPUs: 2, MemoryMB: 1024, Image: "ubuntu", Priority: "high"})
	if err != nil {
		t.Fatal(err)
	}
	if acc.TaskID == "" || acc.VM.ID == "" || acc.VM.Name != "alpha" || acc.VM.Status != "creating" {
		t.Errorf("unexpected answer %+v", acc)
	}
	reqs := srv.Requests()
	r := reqs[len(reqs)-1]
	if r.Method != http.MethodPost || r.Path != "/api/v1/vms" || len(r.Query) != 0 {
		t.Errorf("request %s %s?%v", r.Method, r.Path, r.Query)
	}
	if got := r.Header.Get("Authorization"); got != "Bearer "+testKey {
		t.Errorf("Authorization = %q", got)
	}
	if got := r.Header.Get("Content-Type"); got != "application/json" {
		t.Errorf("Content-Type = %q", got)
	}
	if got := r.Header.Get("User-Agent"); got != "test-agent/9" {
		t.Errorf("User-Agent = %q", got)
	}
	var body map[string]any
	if err := json.Unmarshal(r.Body, &body); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"name": "alpha", "vcpus": 2.0, "memory_mb": 1024.0, "image": "ubuntu", "priority": "high"}
	if fmt.Sprint(body) != fmt.Sprint(want) {
		t.Errorf("body = %v, want %v", body, want)
	}

	// Ids are path-escaped, list filters become the documented query.
	if _, err := c.GetVM(ctx, "a/b c"); !client.IsNotFound(err) {
		t.Errorf("GetVM of an unknown id: %v", err)
	}
	reqs = srv.Requests()
	if p := reqs[len(reqs)-1].EscapedPath; p != "/api/v1/vms/a%2Fb%20c" {
		t.Errorf("escaped path = %q", p)
	}
	if _, err := c.ListVMs(ctx, client.ListVMsOptions{Status: []string{"running", "failed"}, Limit: 5, Cursor: "0"}); err != nil {
		t.Fatal(err)
	}
	reqs = srv.Requests()
	if q := reqs[len(reqs)-1].Query; q.Get("status") != "running,failed" || q.Get("limit") != "5" || q.Get("cursor") != "0" {
		t.Errorf("list query = %v", q)
	}
}

func TestErrorDecoding(t *testing.T) {
	c, srv := newClient(t)
	ctx := context.Background()

	_, err := c.GetVM(ctx, "nope")
	var ae *client.APIError
	if !errors.As(err, &ae) {
		t.Fatalf("want *APIError, got %T %v", err, err)
	}
	if ae.Status != 404 || ae.Code != client.CodeNotFound || ae.Message != "vm not found" {
		t.Errorf("APIError = %+v", ae)
	}
	if got := err.Error(); got != "vm not found (not_found)" {
		t.Errorf("Error() = %q", got)
	}

	_, err = c.CreateVM(ctx, client.CreateVMRequest{VCPUs: 1})
	if !client.IsCode(err, client.CodeValidation) {
		t.Errorf("missing name: %v", err)
	}

	bad, err := client.New(srv.URL, "ae_wrong")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bad.GetTask(ctx, "x"); !client.IsCode(err, client.CodeUnauthorized) {
		t.Errorf("wrong key: %v", err)
	}

	// A proxy in front of the API answers with HTML, or plain text: the error says so without the markup.
	srv.SetBefore(func(w http.ResponseWriter, r *http.Request) bool {
		switch r.URL.Path {
		case "/api/v1/vms/html":
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(http.StatusBadGateway)
			fmt.Fprint(w, "<html><body><h1>502 Bad Gateway</h1></body></html>")
		case "/api/v1/vms/text":
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprint(w, "upstream connect error\nsecond line")
		case "/api/v1/vms/html200":
			w.Header().Set("Content-Type", "text/html")
			fmt.Fprint(w, "<html>login page</html>")
		default:
			return false
		}
		return true
	})
	_, err = c.GetVM(ctx, "html")
	if !errors.As(err, &ae) || ae.Status != 502 || ae.Code != "" || strings.Contains(ae.Message, "<") || !strings.Contains(ae.Message, "502") {
		t.Errorf("HTML 502: %#v", err)
	}
	_, err = c.GetVM(ctx, "text")
	if !errors.As(err, &ae) || ae.Status != 503 || !strings.HasSuffix(ae.Message, ": upstream connect error") {
		t.Errorf("text 503: %#v", err)
	}
	_, err = c.GetVM(ctx, "html200")
	if !errors.As(err, &ae) || ae.Status != 200 || strings.Contains(ae.Message, "<") {
		t.Errorf("HTML 200: %#v", err)
	}
}

func TestHealthAndReady(t *testing.T) {
	c, srv := newClient(t)
	ctx := context.Background()
	h, err := c.Health(ctx)
	if err != nil || h.Status != "ok" {
		t.Fatalf("Health = %+v, %v", h, err)
	}
	r, err := c.Ready(ctx)
	if err != nil || r.Status != "ready" {
		t.Fatalf("Ready = %+v, %v", r, err)
	}
	srv.SetNotReady(true)
	r, err = c.Ready(ctx)
	if err != nil || r.Status != "not_ready" || r.Checks["queue"] == "ok" {
		t.Fatalf("Ready (503) = %+v, %v", r, err)
	}
}

func TestCreateVMAndWaitInOneRequest(t *testing.T) {
	c, srv := newClient(t)
	vm, err := c.CreateVMAndWait(context.Background(), client.CreateVMRequest{Name: "quick"})
	if err != nil {
		t.Fatal(err)
	}
	if vm.Status != "running" || vm.Name != "quick" {
		t.Errorf("vm = %+v", vm)
	}
	if n := srv.Count(http.MethodGet, "/api/v1/tasks/"); n != 0 {
		t.Errorf("polled %d times", n)
	}
	reqs := srv.Requests()
	if w := reqs[0].Query.Get("wait"); w != client.DefaultWaitChunk.String() {
		t.Errorf("wait = %q, want %q", w, client.DefaultWaitChunk)
	}
}

func TestCreateVMAndWaitPollsAfterServerWait(t *testing.T) {
	c, srv := newClient(t)
	srv.SetSteps(3)
	vm, err := c.CreateVMAndWait(context.Background(), client.CreateVMRequest{Name: "slow"})
	if err != nil {
		t.Fatal(err)
	}
	if vm.Status != "running" {
		t.Errorf("vm = %+v", vm)
	}
	polls := 0
	for _, r := range srv.Requests() {
		if strings.HasPrefix(r.Path, "/api/v1/tasks/") {
			polls++
		}
	}
	if polls != 4 {
		t.Errorf("polled %d times, want 4", polls)
	}
	if n := srv.Count(http.MethodPost, "/api/v1/vms"); n != 1 {
		t.Errorf("created %d times: the wait must not repeat the POST", n)
	}
}

func TestCreateVMAndWaitFailure(t *testing.T) {
	for _, steps := range []int{0, 2} {
		t.Run(fmt.Sprint("steps=", steps), func(t *testing.T) {
			c, srv := newClient(t)
			srv.SetSteps(steps)
			vm, err := c.CreateVMAndWait(context.Background(), client.CreateVMRequest{Name: "fail-boot"})
			var te *client.TaskError
			if !errors.As(err, &te) {
				t.Fatalf("want *TaskError, got %v", err)
			}
			if !strings.Contains(te.Message, "kernel panic") || te.TaskID == "" {
				t.Errorf("TaskError = %+v", te)
			}
			if vm == nil || vm.Status != "failed" {
				t.Errorf("vm = %+v", vm)
			}
		})
	}
}

func TestWaitTaskDeadline(t *testing.T) {
	c, srv := newClient(t)
	srv.SetSteps(1 << 30)
	acc, err := c.CreateVM(context.Background(), client.CreateVMRequest{Name: "forever"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	task, err := c.WaitTask(ctx, acc.TaskID, 10*time.Millisecond)
	var we *client.WaitError
	if !errors.As(err, &we) || we.TaskID != acc.TaskID || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("want *WaitError wrapping DeadlineExceeded, got %v", err)
	}
	if task == nil || task.Status != "processing" {
		t.Errorf("last task = %+v", task)
	}
}

func TestAndWaitRespectsContextDeadline(t *testing.T) {
	c, srv := newClient(t)
	srv.SetSteps(1 << 30)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	vm, err := c.CreateVMAndWait(ctx, client.CreateVMRequest{Name: "bounded"})
	var we *client.WaitError
	if !errors.As(err, &we) || vm == nil || vm.ID == "" {
		t.Fatalf("want *WaitError and the pending VM, got %+v, %v", vm, err)
	}
	// The server-side wait must end before the caller's deadline, or the answer (and the task id) would be lost.
	w, perr := time.ParseDuration(srv.Requests()[0].Query.Get("wait"))
	if perr != nil || w <= 0 || w >= time.Second {
		t.Errorf("wait = %v (%v), want within the 1s deadline", w, perr)
	}
}

func TestWaitTaskRetriesTransientFailures(t *testing.T) {
	c, srv := newClient(t)
	srv.SetSteps(1)
	acc, err := c.CreateVM(context.Background(), client.CreateVMRequest{Name: "flaky"})
	if err != nil {
		t.Fatal(err)
	}
	failures := 3
	srv.SetBefore(func(w http.ResponseWriter, r *http.Request) bool {
		if strings.HasPrefix(r.URL.Path, "/api/v1/tasks/") && failures > 0 {
			failures--
			w.WriteHeader(http.StatusServiceUnavailable)
			return true
		}
		return false
	})
	task, err := c.WaitTask(context.Background(), acc.TaskID, 5*time.Millisecond)
	if err != nil || task.Status != "completed" {
		t.Fatalf("WaitTask = %+v, %v", task, err)
	}

	// A permanent error ends the wait at once.
	if _, err := c.WaitTask(context.Background(), "unknown", 5*time.Millisecond); !client.IsNotFound(err) {
		t.Errorf("unknown task: %v", err)
	}
}

func TestExecAndWait(t *testing.T) {
	for _, steps := range []int{0, 2} {
		t.Run(fmt.Sprint("steps=", steps), func(t *testing.T) {
			c, srv := newClient(t)
			vm := srv.AddVM("box", "running")
			srv.SetSteps(steps)
			ctx := context.Background()
			e, err := c.ExecAndWait(ctx, vm.ID, client.ExecuteRequest{Command: "sh", Args: []string{"-c", "echo hi; echo oops >&2; exit 3"}, Env: map[string]string{"A": "1"}, WorkingDir: "/tmp", TimeoutSeconds: 5})
			if err != nil {
				t.Fatal(err)
			}
			if e.Stdout != "hi\n" || e.Stderr != "oops\n" || e.ExitCode == nil || *e.ExitCode != 3 {
				t.Errorf("execution = %+v", e)
			}
			var body client.ExecuteRequest
			if err := json.Unmarshal(srv.Requests()[0].Body, &body); err != nil || body.Env["A"] != "1" || body.WorkingDir != "/tmp" || body.TimeoutSeconds != 5 {
				t.Errorf("request body = %+v (%v)", body, err)
			}

			e, err = c.ExecAndWait(ctx, vm.ID, client.ExecuteRequest{Command: "sh", Args: []string{"-c", "unreachable"}})
			var te *client.TaskError
			if !errors.As(err, &te) || e == nil || e.Status != "failed" || !strings.Contains(te.Message, "agent unreachable") {
				t.Errorf("failed execution: %+v, %v", e, err)
			}
		})
	}
}

func TestExecOnStoppedVM(t *testing.T) {
	c, srv := newClient(t)
	vm := srv.AddVM("off", "stopped")
	_, err := c.ExecAndWait(context.Background(), vm.ID, client.ExecuteRequest{Command: "true"})
	var ae *client.APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusConflict || ae.Code != client.CodeVMNotRunning {
		t.Errorf("want 409 vm_not_running, got %v", err)
	}
}

func TestDeleteVMAndWait(t *testing.T) {
	for _, steps := range []int{0, 2} {
		t.Run(fmt.Sprint("steps=", steps), func(t *testing.T) {
			c, srv := newClient(t)
			vm := srv.AddVM("gone", "running")
			srv.SetSteps(steps)
			task, err := c.DeleteVMAndWait(context.Background(), vm.ID)
			if err != nil || task.Status != "completed" || task.Type != "vm:delete" {
				t.Fatalf("DeleteVMAndWait = %+v, %v", task, err)
			}
			if got, _ := srv.VM(vm.ID); got.Status != "deleted" {
				t.Errorf("vm status %q", got.Status)
			}
		})
	}
}

func TestRunJobAndWait(t *testing.T) {
	for _, steps := range []int{0, 2} {
		t.Run(fmt.Sprint("steps=", steps), func(t *testing.T) {
			c, srv := newClient(t)
			srv.SetSteps(steps)
			job, err := c.RunJobAndWait(context.Background(), client.CreateJobRequest{
				VM:          &client.CreateVMRequest{Name: "jobvm"},
				Commands:    []client.JobCommand{{Command: "echo", Args: []string{"one"}}, {Command: "false"}, {Command: "echo", Args: []string{"three"}}},
				StopOnError: true,
			})
			if err != nil {
				t.Fatal(err)
			}
			if job.Status != "failed" || len(job.Executions) != 2 || job.Executions[0].Stdout != "one\n" || *job.Executions[1].ExitCode != 1 {
				t.Errorf("job = %+v", job)
			}
		})
	}
}

func TestListExecutionsAndGetters(t *testing.T) {
	c, srv := newClient(t)
	vm := srv.AddVM("box", "running")
	ctx := context.Background()
	e, err := c.ExecAndWait(ctx, vm.ID, client.ExecuteRequest{Command: "echo", Args: []string{"x"}})
	if err != nil {
		t.Fatal(err)
	}
	l, err := c.ListExecutions(ctx, vm.ID, client.ListOptions{})
	if err != nil || len(l.Executions) != 1 || l.Executions[0].ID != e.ID {
		t.Fatalf("ListExecutions = %+v, %v", l, err)
	}
	got, err := c.GetExecution(ctx, e.ID)
	if err != nil || got.Stdout != "x\n" {
		t.Fatalf("GetExecution = %+v, %v", got, err)
	}
	task, err := c.GetTask(ctx, e.TaskID)
	if err != nil || task.Type != "vm:execute" {
		t.Fatalf("GetTask = %+v, %v", task, err)
	}
	if _, err := c.GetJob(ctx, "nope"); !client.IsNotFound(err) {
		t.Errorf("GetJob unknown: %v", err)
	}
}

func TestTransportErrorsDoNotLeakKey(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	c, err := client.New(url, testKey)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.GetVM(context.Background(), "x")
	if err == nil {
		t.Fatal("request to a closed server succeeded")
	}
	if strings.Contains(err.Error(), "secret") {
		t.Errorf("error leaks the key: %v", err)
	}
}

func BenchmarkGetVM(b *testing.B) {
	srv := fakeapi.New(testKey)
	defer srv.Close()
	vm := srv.AddVM("bench", "running")
	c, err := client.New(srv.URL, testKey)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.ResetTimer()
	for b.Loop() {
		if _, err := c.GetVM(ctx, vm.ID); err != nil {
			b.Fatal(err)
		}
	}
}
