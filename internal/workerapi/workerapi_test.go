package workerapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/google/uuid"

	"github.com/aetherium/aetherium/internal/agent"
	agentclient "github.com/aetherium/aetherium/internal/agent/client"
	"github.com/aetherium/aetherium/internal/vmm"
	"github.com/aetherium/aetherium/internal/vmm/docker"
	"github.com/aetherium/aetherium/internal/workerapi"
	"github.com/aetherium/aetherium/pkg/client"
)

const testToken = "test-cluster-token-0123456789abcdef"

// vmRig is one real Docker VM shared by the tests of this package (made in TestMain when the engine is there).
var vmRig struct {
	backend *docker.Backend
	vmID    string
	why     string // why there is none
}

func TestMain(m *testing.M) {
	os.Exit(func() int {
		cleanup, err := setupVM()
		if err != nil {
			fmt.Fprintln(os.Stderr, "workerapi tests:", err)
			return 1
		}
		defer cleanup()
		return m.Run()
	}())
}

// setupVM builds the agent and starts one VM. Without a Docker engine it records why, and the tests that need the
// VM skip (or fail under AETHERIUM_REQUIRE_SERVICES=1).
func setupVM() (func(), error) {
	if out, err := exec.Command("docker", "version", "--format", "{{.Server.Version}}").CombinedOutput(); err != nil {
		vmRig.why = "Docker engine unavailable: " + strings.TrimSpace(string(out))
		return func() {}, nil
	}
	dir, err := os.MkdirTemp("", "aewa") // short: the agent socket path must fit in sun_path
	if err != nil {
		return nil, err
	}
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	agentBin := filepath.Join(dir, "aetherium-agent")
	build := exec.Command("go", "build", "-o", agentBin, "./cmd/aetherium-agent")
	build.Dir = filepath.Dir(strings.TrimSpace(string(gomod)))
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("build agent: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	workerID := "wa-" + uuid.NewString()[:8]
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	b, err := docker.New(ctx, docker.Config{DataDir: filepath.Join(dir, "d"), AgentBinary: agentBin, WorkerID: workerID, Logger: log})
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	id := uuid.NewString()
	cleanup := func() {
		dctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_ = b.DeleteVM(dctx, id)
		_ = b.Close()
		os.RemoveAll(dir)
	}
	if _, err := b.CreateVM(ctx, vmm.VMConfig{ID: id, Name: "workerapi-test", VCPUs: 1, MemoryMB: 256, WorkerID: workerID}); err != nil {
		cleanup()
		return nil, fmt.Errorf("create vm: %w", err)
	}
	if err := b.StartVM(ctx, id); err != nil {
		cleanup()
		return nil, fmt.Errorf("start vm: %w", err)
	}
	vmRig.backend, vmRig.vmID = b, id
	return cleanup, nil
}

func requireVM(t *testing.T) {
	t.Helper()
	if vmRig.backend != nil {
		return
	}
	if os.Getenv("AETHERIUM_REQUIRE_SERVICES") == "1" {
		t.Fatalf("Docker engine required (AETHERIUM_REQUIRE_SERVICES=1): %s", vmRig.why)
	}
	t.Skipf("SKIPPED: %s; run scripts/setup.sh services", vmRig.why)
}

// fakeSource is an agent source without VMs: every VM is unknown, or its agent unreachable.
type fakeSource struct{ err error }

func (f fakeSource) Agent(context.Context, string) (*agentclient.Client, error) { return nil, f.err }

// api is the worker API under test, with helpers that send the token.
type api struct {
	t   *testing.T
	srv *httptest.Server
}

func newAPI(t *testing.T, src workerapi.AgentSource) *api {
	t.Helper()
	h, err := workerapi.New(workerapi.Config{Agents: src, Token: testToken,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &api{t: t, srv: srv}
}

type answer struct {
	status int
	header http.Header
	body   []byte
}

func (a answer) code() string {
	var eb client.ErrorBody
	_ = json.Unmarshal(a.body, &eb)
	return eb.Error.Code
}

func (a *api) do(method, path, token string, body io.Reader, contentLength int64) answer {
	a.t.Helper()
	req, err := http.NewRequest(method, a.srv.URL+path, body)
	if err != nil {
		a.t.Fatal(err)
	}
	if contentLength > 0 {
		req.ContentLength = contentLength
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := a.srv.Client().Do(req)
	if err != nil {
		a.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		a.t.Fatalf("%s %s: read answer: %v", method, path, err)
	}
	return answer{status: resp.StatusCode, header: resp.Header, body: b}
}

// call sends a request with the token.
func (a *api) call(method, path string, body io.Reader) answer {
	a.t.Helper()
	return a.do(method, path, testToken, body, 0)
}

func vmPath(suffix string) string { return "/internal/v1/vms/" + vmRig.vmID + suffix }

func decode[T any](t *testing.T, a answer) T {
	t.Helper()
	var v T
	dec := json.NewDecoder(bytes.NewReader(a.body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("decode %T from %d %s: %v", v, a.status, a.body, err)
	}
	return v
}

func expect(t *testing.T, what string, a answer, status int, code string) {
	t.Helper()
	if a.status != status || (code != "" && a.code() != code) {
		t.Fatalf("%s: got %d %s, want %d %s", what, a.status, a.body, status, code)
	}
}

func TestTokenRequired(t *testing.T) {
	if _, err := workerapi.New(workerapi.Config{Agents: fakeSource{}, Token: "short"}); err == nil {
		t.Fatal("a short cluster token was accepted")
	}
	a := newAPI(t, fakeSource{err: vmm.ErrNotFound})
	id := uuid.NewString()
	path := "/internal/v1/vms/" + id + "/fs/stat?path=/etc"
	for _, c := range []struct {
		name, header string
	}{
		{"no header", ""},
		{"wrong token", "Bearer " + testToken + "x"},
		{"prefix of the token", "Bearer " + testToken[:len(testToken)-1]},
		{"basic scheme", "Basic " + testToken},
		{"bare token", testToken},
	} {
		req, _ := http.NewRequest("GET", a.srv.URL+path, nil)
		if c.header != "" {
			req.Header.Set("Authorization", c.header)
		}
		resp, err := a.srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(string(b), client.CodeUnauthorized) {
			t.Errorf("%s: got %d %s, want 401", c.name, resp.StatusCode, b)
		}
	}
	// Unknown routes are not revealed without the token either.
	expect(t, "unknown route without token", a.do("GET", "/internal/v1/nothing", "", nil, 0), 401, client.CodeUnauthorized)
	expect(t, "unknown route with token", a.do("GET", "/internal/v1/nothing", testToken, nil, 0), 404, client.CodeNotFound)
	// With the token, the request reaches the backend, which does not know the VM.
	expect(t, "unknown vm", a.call("GET", path, nil), 404, client.CodeNotFound)
	expect(t, "not a vm id", a.call("GET", "/internal/v1/vms/nope/fs/stat?path=/", nil), 404, client.CodeNotFound)

	// A VM that is not running, and an agent that cannot be reached, are told apart.
	stopped := newAPI(t, fakeSource{err: fmt.Errorf("%w: vm is stopped", vmm.ErrNotRunning)})
	expect(t, "stopped vm", stopped.call("GET", path, nil), 409, client.CodeVMNotRunning)
	gone := newAPI(t, fakeSource{err: fmt.Errorf("%w: dial: refused", agentclient.ErrUnavailable)})
	r := gone.call("GET", path, nil)
	expect(t, "unreachable agent", r, 503, client.CodeUnavailable)
	if r.header.Get("Retry-After") == "" {
		t.Error("503 without Retry-After")
	}
}

func TestFilesOnRealVM(t *testing.T) {
	requireVM(t)
	a := newAPI(t, vmRig.backend)
	content := bytes.Repeat([]byte("aetherium\x00\xff"), 100_000) // 1.1 MB, binary
	dir := "/tmp/wa-" + uuid.NewString()[:8]

	up := a.call("PUT", vmPath("/files?path="+url.QueryEscape(dir+"/sub/../f.bin")+"&mode=0750&mkdir_parents=true"), bytes.NewReader(content))
	expect(t, "upload", up, 200, "")
	info := decode[client.FileInfo](t, up)
	if info.Path != dir+"/f.bin" || info.Size != int64(len(content)) || info.Mode != "0750" || info.Type != client.FileTypeFile || info.UID != 0 {
		t.Fatalf("uploaded file: %+v", info)
	}

	down := a.call("GET", vmPath("/files?path="+url.QueryEscape(dir+"/f.bin")), nil)
	expect(t, "download", down, 200, "")
	if !bytes.Equal(down.body, content) {
		t.Fatalf("downloaded %d bytes, not the %d uploaded", len(down.body), len(content))
	}
	if down.header.Get("Content-Length") != fmt.Sprint(len(content)) || down.header.Get(client.HeaderFileMode) != "0750" ||
		down.header.Get(client.HeaderFileUID) != "0" || down.header.Get("Last-Modified") == "" {
		t.Fatalf("download headers: %v", down.header)
	}

	st := a.call("GET", vmPath("/fs/stat?path="+url.QueryEscape(dir)), nil)
	expect(t, "stat", st, 200, "")
	if fi := decode[client.FileInfo](t, st); fi.Type != client.FileTypeDirectory || fi.Name != filepath.Base(dir) {
		t.Fatalf("stat dir: %+v", fi)
	}

	mk := a.call("POST", vmPath("/fs/mkdir"), strings.NewReader(`{"path":"`+dir+`/d/e","parents":true,"mode":"0700"}`))
	expect(t, "mkdir -p", mk, 201, "")
	if fi := decode[client.FileInfo](t, mk); fi.Mode != "0700" || fi.Type != client.FileTypeDirectory {
		t.Fatalf("mkdir: %+v", fi)
	}
	expect(t, "mkdir existing", a.call("POST", vmPath("/fs/mkdir"), strings.NewReader(`{"path":"`+dir+`/d/e"}`)), 409, client.CodeAlreadyExists)
	expect(t, "mkdir under a file", a.call("POST", vmPath("/fs/mkdir"), strings.NewReader(`{"path":"`+dir+`/f.bin/x"}`)), 409, client.CodeNotADirectory)

	ls := a.call("GET", vmPath("/fs/list?path="+url.QueryEscape(dir)), nil)
	expect(t, "list", ls, 200, "")
	list := decode[client.FileList](t, ls)
	var names []string
	for _, e := range list.Entries {
		names = append(names, e.Name+":"+e.Type)
	}
	if strings.Join(names, ",") != "d:directory,f.bin:file" {
		t.Fatalf("list: %v", names)
	}

	expect(t, "no overwrite", a.call("PUT", vmPath("/files?overwrite=false&path="+url.QueryEscape(dir+"/f.bin")), strings.NewReader("x")), 409, client.CodeAlreadyExists)
	expect(t, "download a directory", a.call("GET", vmPath("/files?path="+url.QueryEscape(dir)), nil), 409, client.CodeIsADirectory)
	expect(t, "download a device", a.call("GET", vmPath("/files?path=/dev/null"), nil), 409, client.CodeNotARegularFile)
	// A FIFO is refused at once, not waited on for a writer; a /proc file (stat says 0 bytes) is sent whole,
	// chunked, without a Content-Length of 0.
	fag, err := vmRig.backend.Agent(context.Background(), vmRig.vmID)
	if err != nil {
		t.Fatal(err)
	}
	if res, err := fag.Exec(context.Background(), agent.ExecRequest{Argv: []string{"mkfifo", dir + "/fifo"}}); err != nil || res.ExitCode != 0 {
		t.Fatalf("mkfifo: %+v %v", res, err)
	}
	expect(t, "download a fifo", a.call("GET", vmPath("/files?path="+url.QueryEscape(dir+"/fifo")), nil), 409, client.CodeNotARegularFile)
	proc := a.call("GET", vmPath("/files?path=/proc/self/status"), nil)
	expect(t, "download a /proc file", proc, 200, "")
	if !bytes.Contains(proc.body, []byte("Pid:")) || proc.header.Get("Content-Length") != "" {
		t.Fatalf("/proc/self/status: Content-Length %q, %d bytes", proc.header.Get("Content-Length"), len(proc.body))
	}
	_, _ = fag.Exec(context.Background(), agent.ExecRequest{Argv: []string{"rm", dir + "/fifo"}})
	expect(t, "remove non-empty", a.call("DELETE", vmPath("/fs?path="+url.QueryEscape(dir)), nil), 409, client.CodeDirectoryNotEmpty)
	expect(t, "unknown owner", a.call("PUT", vmPath("/files?owner=nosuchuser&path="+url.QueryEscape(dir+"/o")), strings.NewReader("x")), 422, client.CodeUnknownUser)

	// Path validation: the same rules as the gateway's.
	expect(t, "relative path", a.call("GET", vmPath("/fs/stat?path=etc"), nil), 422, client.CodeValidation)
	expect(t, "no path", a.call("GET", vmPath("/fs/stat"), nil), 422, client.CodeValidation)
	expect(t, "NUL in path", a.call("GET", vmPath("/fs/stat?path=%2Fa%00b"), nil), 422, client.CodeValidation)
	expect(t, "bad mode", a.call("PUT", vmPath("/files?path=/tmp/m&mode=9"), strings.NewReader("x")), 400, client.CodeBadRequest)
	expect(t, "remove /", a.call("DELETE", vmPath("/fs?path=/&recursive=true"), nil), 422, client.CodeValidation)

	// An upload cut short writes nothing: the body announces more than it sends, then the connection closes.
	cut := dir + "/cut.bin"
	conn, err := net.Dial("tcp", a.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "PUT %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: 1000000\r\n\r\n%s",
		vmPath("/files?path="+url.QueryEscape(cut)), testToken, strings.Repeat("y", 5000))
	conn.Close()
	deadline := time.Now().Add(10 * time.Second)
	for quiet := 0; quiet < 5; {
		// The worker notices the cut asynchronously; until then the file must not exist either. The upload may not
		// even have reached the agent at the first look, so only several quiet looks in a row end the wait.
		expect(t, "stat of a cut upload", a.call("GET", vmPath("/fs/stat?path="+url.QueryEscape(cut)), nil), 404, client.CodePathNotFound)
		ls := decode[client.FileList](t, a.call("GET", vmPath("/fs/list?path="+url.QueryEscape(dir)), nil))
		temp := false
		for _, e := range ls.Entries {
			temp = temp || strings.HasPrefix(e.Name, ".aetherium-upload-")
		}
		if !temp {
			quiet++
			time.Sleep(20 * time.Millisecond)
			continue
		}
		quiet = 0
		if time.Now().After(deadline) {
			t.Fatalf("the temporary file of a cut upload is still there: %+v", ls.Entries)
		}
		time.Sleep(20 * time.Millisecond)
	}

	expect(t, "remove -r", a.call("DELETE", vmPath("/fs?recursive=true&path="+url.QueryEscape(dir)), nil), 204, "")
	expect(t, "stat removed", a.call("GET", vmPath("/fs/stat?path="+url.QueryEscape(dir)), nil), 404, client.CodePathNotFound)
	expect(t, "download missing", a.call("GET", vmPath("/files?path="+url.QueryEscape(dir+"/f.bin")), nil), 404, client.CodePathNotFound)
}

func TestProcessesOnRealVM(t *testing.T) {
	requireVM(t)
	a := newAPI(t, vmRig.backend)
	id := "p-" + uuid.NewString()[:8]
	start := a.call("POST", vmPath("/processes"), strings.NewReader(`{"shell":"echo out; echo err >&2; exit 4","id":"`+id+`"}`))
	expect(t, "start", start, 201, "")
	if p := decode[client.Process](t, start); p.ID != id || p.PID == 0 {
		t.Fatalf("started: %+v", p)
	}
	w := a.call("POST", vmPath("/processes/"+id+"/wait?timeout=30s"), nil)
	expect(t, "wait", w, 200, "")
	p := decode[client.Process](t, w)
	if p.State != "exited" || p.ExitCode == nil || *p.ExitCode != 4 || p.DurationMS == nil {
		t.Fatalf("waited: %+v", p)
	}
	for stream, want := range map[string]string{"stdout": "out\n", "stderr": "err\n"} {
		o := decode[client.ProcessOutput](t, a.call("GET", vmPath("/processes/"+id+"/output?stream="+stream), nil))
		if o.Data != want || !o.EOF || o.NextOffset != int64(len(want)) {
			t.Fatalf("%s: %+v", stream, o)
		}
	}
	list := decode[client.ProcessList](t, a.call("GET", vmPath("/processes"), nil))
	found := false
	for _, q := range list.Processes {
		found = found || q.ID == id
	}
	if !found {
		t.Fatalf("process %s not listed: %+v", id, list)
	}
	expect(t, "start duplicate id", a.call("POST", vmPath("/processes"), strings.NewReader(`{"command":"true","id":"`+id+`"}`)), 409, client.CodeAlreadyExists)
	expect(t, "signal exited", a.call("POST", vmPath("/processes/"+id+"/signal"), strings.NewReader(`{"signal":"TERM"}`)), 409, client.CodeProcessExited)
	expect(t, "remove", a.call("DELETE", vmPath("/processes/"+id), nil), 204, "")
	expect(t, "remove again", a.call("DELETE", vmPath("/processes/"+id), nil), 404, client.CodeProcessNotFound)
	expect(t, "invalid id", a.call("GET", vmPath("/processes/a%20b/output"), nil), 404, client.CodeProcessNotFound)

	// A long-running process: still running at the end of a short wait, then signalled.
	sl := decode[client.Process](t, a.call("POST", vmPath("/processes"), strings.NewReader(`{"command":"sleep","args":["600"]}`)))
	if p := decode[client.Process](t, a.call("POST", vmPath("/processes/"+sl.ID+"/wait?timeout=50ms"), nil)); p.State != "running" || p.ExitCode != nil {
		t.Fatalf("sleep after a short wait: %+v", p)
	}
	expect(t, "remove running", a.call("DELETE", vmPath("/processes/"+sl.ID), nil), 409, client.CodeProcessRunning)
	expect(t, "signal", a.call("POST", vmPath("/processes/"+sl.ID+"/signal"), strings.NewReader(`{"signal":"KILL"}`)), 204, "")
	if p := decode[client.Process](t, a.call("POST", vmPath("/processes/"+sl.ID+"/wait"), nil)); p.State != "exited" || p.Signal != "SIGKILL" {
		t.Fatalf("sleep after SIGKILL: %+v", p)
	}
	expect(t, "start without command", a.call("POST", vmPath("/processes"), strings.NewReader(`{}`)), 422, client.CodeValidation)
	expect(t, "bad wait", a.call("POST", vmPath("/processes/"+sl.ID+"/wait?timeout=forever"), nil), 400, client.CodeBadRequest)
}

// dialShell opens the shell WebSocket of the test VM with the token.
func (a *api) dialShell(ctx context.Context, query string) *websocket.Conn {
	a.t.Helper()
	u := "ws" + strings.TrimPrefix(a.srv.URL, "http") + vmPath("/shell?"+query)
	c, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + testToken}}})
	if err != nil {
		a.t.Fatalf("dial shell: %v (%v)", err, resp)
	}
	c.SetReadLimit(4 << 20)
	return c
}

// session reads a shell's messages until its end, gathering its output.
type session struct {
	stdout, stderr bytes.Buffer
	started        string
	exit           *client.ShellMessage
}

func readSession(t *testing.T, ctx context.Context, c *websocket.Conn, onOutput func(string)) session {
	t.Helper()
	var s session
	for {
		typ, data, err := c.Read(ctx)
		if err != nil {
			t.Fatalf("shell ended without an exit message: %v; stdout %q", err, s.stdout.String())
		}
		if typ == websocket.MessageBinary {
			s.stdout.Write(data)
			if onOutput != nil {
				onOutput(s.stdout.String())
			}
			continue
		}
		var m client.ShellMessage
		if err := json.Unmarshal(data, &m); err != nil {
			t.Fatalf("malformed message %s: %v", data, err)
		}
		switch m.Type {
		case client.ShellMsgStarted:
			s.started = m.ID
		case client.ShellMsgStderr:
			s.stderr.Write(m.Data)
		case client.ShellMsgExit, client.ShellMsgError:
			s.exit = &m
			// The server closes after the last message.
			if _, _, err := c.Read(ctx); websocket.CloseStatus(err) != websocket.StatusNormalClosure && m.Type == client.ShellMsgExit {
				t.Fatalf("after exit: %v, want a normal close", err)
			}
			return s
		}
	}
}

func TestShellPTYOnRealVM(t *testing.T) {
	requireVM(t)
	a := newAPI(t, vmRig.backend)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	c := a.dialShell(ctx, "rows=33&cols=101")
	defer c.CloseNow()
	if err := c.Write(ctx, websocket.MessageBinary, []byte("stty size; exit 7\n")); err != nil {
		t.Fatal(err)
	}
	s := readSession(t, ctx, c, nil)
	if s.started == "" || s.exit.Type != client.ShellMsgExit || *s.exit.ExitCode != 7 {
		t.Fatalf("session: started %q, end %+v, output %q", s.started, s.exit, s.stdout.String())
	}
	if !strings.Contains(s.stdout.String(), "33 101") {
		t.Fatalf("stty size printed %q, want 33 101", s.stdout.String())
	}

	// A resize reaches the terminal.
	c2 := a.dialShell(ctx, "rows=10&cols=20&command=sh")
	defer c2.CloseNow()
	resize, _ := json.Marshal(client.ShellMessage{Type: client.ShellMsgResize, Rows: 40, Cols: 120})
	if err := c2.Write(ctx, websocket.MessageText, resize); err != nil {
		t.Fatal(err)
	}
	// Controls and stdin are handled in the order they were sent: the resize is done before the shell reads the
	// line. The quotes keep the terminal's echo of the line from matching.
	if err := c2.Write(ctx, websocket.MessageBinary, []byte("echo \"S\"\"IZE=$(stty size)\"; exit 0\n")); err != nil {
		t.Fatal(err)
	}
	s2 := readSession(t, ctx, c2, nil)
	if *s2.exit.ExitCode != 0 || !strings.Contains(s2.stdout.String(), "SIZE=40 120") {
		t.Fatalf("after resize: %q %+v", s2.stdout.String(), s2.exit)
	}
}

func TestShellWithoutTTYOnRealVM(t *testing.T) {
	requireVM(t)
	a := newAPI(t, vmRig.backend)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := a.dialShell(ctx, "tty=false&command=sh&command=-c&command="+url.QueryEscape("cat; echo done >&2; exit 3"))
	defer c.CloseNow()
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<14) // 256 KiB: several messages each way
	if err := c.Write(ctx, websocket.MessageBinary, big); err != nil {
		t.Fatal(err)
	}
	eof, _ := json.Marshal(client.ShellMessage{Type: client.ShellMsgEOF})
	if err := c.Write(ctx, websocket.MessageText, eof); err != nil {
		t.Fatal(err)
	}
	s := readSession(t, ctx, c, nil)
	if *s.exit.ExitCode != 3 || !bytes.Equal(s.stdout.Bytes(), big) || s.stderr.String() != "done\n" {
		t.Fatalf("session: exit %+v, stdout %d bytes (want %d), stderr %q", s.exit, s.stdout.Len(), len(big), s.stderr.String())
	}

	// A command that cannot run ends the session with an error message.
	c2 := a.dialShell(ctx, "tty=false&command=/no/such/program")
	defer c2.CloseNow()
	s2 := readSession(t, ctx, c2, nil)
	if s2.exit.Type == client.ShellMsgExit && (s2.exit.ExitCode == nil || *s2.exit.ExitCode == 0) {
		t.Fatalf("a missing program: %+v", s2.exit)
	}
}

// TestShellClientGoneKillsCommand: closing the WebSocket kills the command in the VM.
func TestShellClientGoneKillsCommand(t *testing.T) {
	requireVM(t)
	// With unread input pending, the worker must still notice the client leaving: the command never reads stdin.
	for _, unread := range []int{0, 4 << 20} {
		t.Run(fmt.Sprintf("unread=%d", unread), func(t *testing.T) { testShellClientGone(t, unread) })
	}
}

func testShellClientGone(t *testing.T, unread int) {
	a := newAPI(t, vmRig.backend)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// A unique duration marks the sleep in ps (busybox sleep takes no extra arguments).
	marker := fmt.Sprintf("%d", 6_000_000+time.Now().UnixNano()%1_000_000)
	c := a.dialShell(ctx, "tty=false&command=sh&command=-c&command="+url.QueryEscape("echo ready; exec sleep "+marker))
	_, data, err := c.Read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var started client.ShellMessage
	_ = json.Unmarshal(data, &started)
	for { // wait for "ready": the command runs
		typ, data, err := c.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if typ == websocket.MessageBinary && strings.Contains(string(data), "ready") {
			break
		}
	}
	chunk := bytes.Repeat([]byte("x"), 32<<10)
	for sent := 0; sent < unread; sent += len(chunk) {
		if err := c.Write(ctx, websocket.MessageBinary, chunk); err != nil {
			t.Fatal(err)
		}
	}
	c.CloseNow()
	ag, err := vmRig.backend.Agent(ctx, vmRig.vmID)
	if err != nil {
		t.Fatal(err)
	}
	for {
		procs, err := ag.ListProcesses(ctx)
		if err != nil {
			t.Fatal(err)
		}
		running := false
		for _, p := range procs {
			running = running || (p.ID == started.ID && p.State == "running")
		}
		if !running {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("the shell's command %s still runs after the client left", started.ID)
		}
		time.Sleep(20 * time.Millisecond)
	}
	var out bytes.Buffer
	if ps, err := ag.ExecStream(ctx, agent.ExecRequest{Argv: []string{"ps", "-o", "pid,args"}}, &out, nil); err != nil || ps.ExitCode != 0 {
		t.Fatalf("ps: %+v %v", ps, err)
	}
	if strings.Contains(out.String(), marker) {
		t.Fatalf("the sleep of a closed shell still runs:\n%s", out.String())
	}
}

// TestAdvertisedURL derives the URL gateways use from the listener.
func TestAdvertisedURL(t *testing.T) {
	ln, err := workerapi.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	u, err := workerapi.AdvertisedURL(ln, "")
	if err != nil || u != "http://"+ln.Addr().String() {
		t.Fatalf("derived %q %v", u, err)
	}
	if u, err := workerapi.AdvertisedURL(ln, "http://worker-7:8081/"); err != nil || u != "http://worker-7:8081" {
		t.Fatalf("configured: %q %v", u, err)
	}
	if _, err := workerapi.AdvertisedURL(ln, "worker-7:8081"); err == nil {
		t.Fatal("a URL without scheme was accepted")
	}
	all, err := workerapi.Listen(":0")
	if err != nil {
		t.Fatal(err)
	}
	defer all.Close()
	host, _ := os.Hostname()
	if u, err := workerapi.AdvertisedURL(all, ""); err != nil || !strings.HasPrefix(u, "http://"+host+":") {
		t.Fatalf("every interface: %q %v (host %s)", u, err, host)
	}
}

// TestShellRefusesInvalidControls: a control message the protocol does not have gets an error message naming
// the problem and a close with 1008 (policy violation), never silence.
func TestShellRefusesInvalidControls(t *testing.T) {
	requireVM(t)
	a := newAPI(t, vmRig.backend)
	for name, msg := range map[string]string{
		"not json":      `{"type":`,
		"unknown type":  `{"type":"reboot"}`,
		"zero rows":     `{"type":"resize","rows":0,"cols":80}`,
		"huge cols":     `{"type":"resize","rows":24,"cols":20000}`,
		"rows overflow": `{"type":"resize","rows":99999,"cols":80}`,
		"bad signal":    `{"type":"signal","signal":"KILL 1"}`,
	} {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			c := a.dialShell(ctx, "tty=false&command=sh&command=-c&command="+url.QueryEscape("sleep 30"))
			defer c.CloseNow()
			if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
				t.Fatal(err)
			}
			var got client.ShellMessage
			for got.Type != client.ShellMsgError {
				typ, data, err := c.Read(ctx)
				if err != nil {
					t.Fatalf("the session ended without an error message: %v", err)
				}
				if typ == websocket.MessageText {
					_ = json.Unmarshal(data, &got)
				}
			}
			if got.Code != client.CodeBadRequest || got.Message == "" {
				t.Fatalf("error message %+v", got)
			}
			_, _, err := c.Read(ctx)
			if st := websocket.CloseStatus(err); st != websocket.StatusPolicyViolation {
				t.Fatalf("after the error: %v (close status %d), want a close with 1008", err, st)
			}
		})
	}
}

// healthySource is an agent source that can also be asked whether its backend answers.
type healthySource struct {
	fakeSource
	health error
}

func (h healthySource) Health(context.Context) error { return h.health }

func TestHealth(t *testing.T) {
	expect(t, "health without token", newAPI(t, fakeSource{}).do("GET", "/internal/v1/health", "", nil, 0), 401,
		client.CodeUnauthorized)
	// A source that cannot be asked: the worker serves, so it is healthy.
	r := newAPI(t, fakeSource{}).call("GET", "/internal/v1/health", nil)
	expect(t, "health of a plain source", r, 200, "")
	if got := decode[map[string]string](t, r); got["status"] != "ok" {
		t.Errorf("health: got %v, want status ok", got)
	}
	expect(t, "healthy backend", newAPI(t, healthySource{}).call("GET", "/internal/v1/health", nil), 200, "")
	r = newAPI(t, healthySource{health: fmt.Errorf("engine ping: dial unix /var/run/docker.sock: refused")}).
		call("GET", "/internal/v1/health", nil)
	expect(t, "backend that does not answer", r, 503, client.CodeUnavailable)
	if strings.Contains(string(r.body), "docker.sock") {
		t.Errorf("the health answer leaks the backend's error: %s", r.body)
	}
	if vmRig.backend != nil {
		// The real Docker backend, whose engine answers.
		expect(t, "real docker backend", newAPI(t, vmRig.backend).call("GET", "/internal/v1/health", nil), 200, "")
	}
	expect(t, "health is GET only", newAPI(t, fakeSource{}).call("POST", "/internal/v1/health", nil), 405, "")
}
