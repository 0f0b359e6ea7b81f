package e2e

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aetherium/aetherium/pkg/client"
)

// e2eRedisDB is the Redis database these tests own; they flush it before use.
const e2eRedisDB = "15"

func serveEnv(dataDir, addr string, extra ...string) []string {
	return append([]string{
		"AETHERIUM_DATA_DIR=" + dataDir,
		"AETHERIUM_LISTEN=" + addr,
		"AETHERIUM_AGENT_BINARY=" + filepath.Join(binDir, "aetherium-agent"),
		"AETHERIUM_LOG_LEVEL=debug",
		"AETHERIUM_BACKEND=docker", // the microVM tests override it
		// Host networking would change this machine's own interfaces and firewall: internal/network and
		// internal/vmm/qemu test it inside network namespaces instead.
		"AETHERIUM_NETWORK=off",
		// The rate limits stay on, but above what these tests fire (100 creates at once, polling waits); their
		// behaviour at the defaults is internal/ratelimit's and internal/api's to test.
		"AETHERIUM_RATE_LIMIT_EXPENSIVE_RATE=100", "AETHERIUM_RATE_LIMIT_EXPENSIVE_BURST=500",
		"AETHERIUM_RATE_LIMIT_KEY_RATE=1000", "AETHERIUM_RATE_LIMIT_KEY_BURST=2000",
	}, extra...)
}

// TestServeFlow is the README's promise: serve on embedded defaults, create a VM, run commands, delete it, and
// nothing is left behind.
func TestServeFlow(t *testing.T) {
	requireDocker(t)
	dataDir := t.TempDir()
	addr := freePort(t)
	workerID := "e2e-serve-" + strings.ReplaceAll(t.Name(), "/", "-")
	removeWorkerContainers(t, workerID)
	p := start(t, "serve", serveEnv(dataDir, addr, "AETHERIUM_WORKER_ID="+workerID), "serve")
	waitHTTP(t, addr, p)

	keyFile := filepath.Join(dataDir, "admin-api-key")
	st, err := os.Stat(keyFile)
	if err != nil {
		t.Fatalf("serve did not write the admin key file: %v", err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("admin key file mode = %v, want 0600", st.Mode().Perm())
	}
	key := readLine(t, keyFile)
	if !strings.Contains(p.out.String(), key) {
		t.Fatalf("serve did not print the admin key")
	}
	c := newClient(t, addr, key)
	waitReady(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	vm, err := c.CreateVMAndWait(ctx, client.CreateVMRequest{Name: "e2e-vm", VCPUs: 1, MemoryMB: 256})
	if err != nil {
		t.Fatalf("create vm: %v", err)
	}
	if vm.Status != "running" {
		t.Fatalf("vm status = %s (%s), want running", vm.Status, vm.Error)
	}
	if vm.WorkerID != workerID {
		t.Fatalf("vm worker = %q, want %q", vm.WorkerID, workerID)
	}

	hello, err := c.ExecAndWait(ctx, vm.ID, client.ExecuteRequest{Command: "echo", Args: []string{"hello"}})
	if err != nil {
		t.Fatalf("exec echo: %v", err)
	}
	if hello.ExitCode == nil || *hello.ExitCode != 0 || hello.Stdout != "hello\n" || hello.Status != "completed" {
		t.Fatalf("echo hello: status=%s exit=%v stdout=%q stderr=%q", hello.Status, hello.ExitCode, hello.Stdout, hello.Stderr)
	}

	three, err := c.ExecAndWait(ctx, vm.ID, client.ExecuteRequest{Command: "sh", Args: []string{"-c", "echo once >> /tmp/runs; exit 3"}})
	if err != nil {
		t.Fatalf("exec exit 3: %v", err)
	}
	if three.ExitCode == nil || *three.ExitCode != 3 {
		t.Fatalf("exit 3: got %v", three.ExitCode)
	}
	tk, err := c.GetTask(ctx, three.TaskID)
	if err != nil {
		t.Fatal(err)
	}
	if tk.Status != "completed" || tk.Attempts != 1 {
		t.Fatalf("exit 3 task: status=%s attempts=%d error=%q, want completed after 1 attempt", tk.Status, tk.Attempts, tk.Error)
	}
	runs, err := c.ExecAndWait(ctx, vm.ID, client.ExecuteRequest{Command: "cat", Args: []string{"/tmp/runs"}})
	if err != nil {
		t.Fatal(err)
	}
	if runs.Stdout != "once\n" {
		t.Fatalf("the failing command ran %d times, want once", strings.Count(runs.Stdout, "once"))
	}

	// The CLI prints the command's output and exits with its exit code.
	env := []string{"AETHERIUM_SERVER=http://" + addr, "AETHERIUM_API_KEY=" + key}
	out, _, code := runCLI(t, env, "vm", "exec", "e2e-vm", "--", "sh", "-c", "echo from-cli; exit 3")
	if code != 3 || !strings.Contains(out, "from-cli") {
		t.Fatalf("cli vm exec: exit %d, stdout %q; want 3 and from-cli", code, out)
	}

	list, err := c.ListExecutions(ctx, vm.ID, client.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Executions) != 4 {
		t.Fatalf("executions listed = %d, want 4", len(list.Executions))
	}

	if _, err := c.DeleteVMAndWait(ctx, vm.ID); err != nil {
		t.Fatalf("delete vm: %v", err)
	}
	got, err := c.GetVM(ctx, vm.ID)
	if err != nil || got.Status != "deleted" {
		t.Fatalf("vm after delete: %+v %v", got, err)
	}
	if ids := containersOf(t, vm.ID); len(ids) != 0 {
		t.Fatalf("containers left after delete: %v", ids)
	}
	if _, err := os.Stat(filepath.Join(dataDir, "vms", vm.ID)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("per-VM directory left after delete (stat err %v)", err)
	}
	// Exec on a deleted VM is refused and changes nothing.
	_, err = c.Execute(ctx, vm.ID, client.ExecuteRequest{Command: "true"})
	if !client.IsCode(err, client.CodeVMNotRunning) {
		t.Fatalf("exec on deleted vm: %v, want %s", err, client.CodeVMNotRunning)
	}
}

// TestServeResumesAfterKill: serve killed with SIGKILL while tasks are pending finishes them after a restart.
func TestServeResumesAfterKill(t *testing.T) {
	requireDocker(t)
	dataDir := t.TempDir()
	addr := freePort(t)
	workerID := "e2e-kill-serve"
	removeWorkerContainers(t, workerID)
	env := serveEnv(dataDir, addr, "AETHERIUM_WORKER_ID="+workerID, "AETHERIUM_CONCURRENCY=1")
	p := start(t, "serve#1", env, "serve")
	waitHTTP(t, addr, p)
	key := readLine(t, filepath.Join(dataDir, "admin-api-key"))
	c := newClient(t, addr, key)
	waitReady(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	vm, err := c.CreateVMAndWait(ctx, client.CreateVMRequest{Name: "survivor"})
	if err != nil {
		t.Fatal(err)
	}
	// One worker slot: the first command occupies it, the others wait in the queue when serve is killed.
	var taskIDs []string
	for i := 0; i < 4; i++ {
		acc, err := c.Execute(ctx, vm.ID, client.ExecuteRequest{Command: "sh", Args: []string{"-c", "sleep 1; echo done"}})
		if err != nil {
			t.Fatal(err)
		}
		taskIDs = append(taskIDs, acc.TaskID)
	}
	p.kill()

	p2 := start(t, "serve#2", env, "serve")
	waitHTTP(t, addr, p2)
	if strings.Contains(p2.out.String(), "Created an admin API key") {
		t.Fatal("a restarted serve must not create a second admin key")
	}
	completed := 0
	for _, id := range taskIDs {
		tk, err := c.WaitTask(ctx, id, 0)
		if err != nil {
			t.Fatalf("wait task %s: %v", id, err)
		}
		switch tk.Status {
		case "completed":
			completed++
		case "failed":
			if !strings.Contains(tk.Error, "interrupted") {
				t.Fatalf("task %s failed without an interruption reason: %q", id, tk.Error)
			}
		default:
			t.Fatalf("task %s is %s after restart", id, tk.Status)
		}
	}
	if completed < 3 {
		t.Fatalf("only %d of 4 tasks completed after restart; the pending ones must resume", completed)
	}
	got, err := c.GetVM(ctx, vm.ID)
	if err != nil || got.Status != "running" {
		t.Fatalf("vm after restart: %+v %v (the container survives a serve restart and is adopted)", got, err)
	}
	if _, err := c.DeleteVMAndWait(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
}

func flushRedis(t testing.TB) string {
	t.Helper()
	out, err := exec.Command("redis-cli", "-n", e2eRedisDB, "flushdb").CombinedOutput()
	requireService(t, "Redis", err == nil, strings.TrimSpace(string(out)))
	return "redis://127.0.0.1:6379/" + e2eRedisDB
}

// TestProductionTopology: one gateway and two workers on PostgreSQL and Redis; executions run on the worker that
// hosts their VM; a worker killed mid-command leaves its task failed with a reason, not processing forever.
func TestProductionTopology(t *testing.T) {
	requireDocker(t)
	dbURL := newPostgresDB(t)
	redisURL := flushRedis(t)
	common := []string{
		"AETHERIUM_DATABASE_URL=" + dbURL, "AETHERIUM_REDIS_URL=" + redisURL,
		"AETHERIUM_AGENT_BINARY=" + filepath.Join(binDir, "aetherium-agent"), "AETHERIUM_LOG_LEVEL=debug",
		"AETHERIUM_CLUSTER_TOKEN=" + e2eClusterToken, "AETHERIUM_BACKEND=docker", "AETHERIUM_NETWORK=off",
	}
	if _, errOut, code := runCLI(t, append(common, "AETHERIUM_DATA_DIR="+t.TempDir()), "migrate"); code != 0 {
		t.Fatalf("migrate: %s", errOut)
	}
	key, errOut, code := runCLI(t, append(common, "AETHERIUM_DATA_DIR="+t.TempDir()), "apikey", "create", "--name", "e2e")
	if code != 0 {
		t.Fatalf("apikey create: %s", errOut)
	}
	key = strings.TrimSpace(key)

	addr := freePort(t)
	gw := start(t, "gateway", append(common, "AETHERIUM_DATA_DIR="+t.TempDir(), "AETHERIUM_LISTEN="+addr), "gateway")
	workers := map[string]*proc{}
	dirs := map[string]string{}
	for _, id := range []string{"e2e-w1", "e2e-w2"} {
		removeWorkerContainers(t, id)
		dirs[id] = t.TempDir()
		workers[id] = start(t, id, append(common, "AETHERIUM_DATA_DIR="+dirs[id], "AETHERIUM_WORKER_ID="+id), "worker")
	}
	waitHTTP(t, addr, gw)
	c := newClient(t, addr, key)
	waitReady(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	// Four VMs created at once land on the workers; every execution runs where its VM lives.
	type made struct {
		vm  *client.VM
		err error
	}
	results := make(chan made, 4)
	for i := 0; i < 4; i++ {
		go func(i int) {
			vm, err := c.CreateVMAndWait(ctx, client.CreateVMRequest{Name: "prod-" + string(rune('a'+i))})
			results <- made{vm, err}
		}(i)
	}
	var vms []*client.VM
	for i := 0; i < 4; i++ {
		r := <-results
		if r.err != nil {
			t.Fatalf("create vm: %v", r.err)
		}
		if r.vm.Status != "running" {
			t.Fatalf("vm %s is %s: %s", r.vm.Name, r.vm.Status, r.vm.Error)
		}
		vms = append(vms, r.vm)
	}
	for _, vm := range vms {
		for _, cmd := range [][]string{{"echo", "hello"}, {"sh", "-c", "exit 3"}} {
			e, err := c.ExecAndWait(ctx, vm.ID, client.ExecuteRequest{Command: cmd[0], Args: cmd[1:]})
			if err != nil {
				t.Fatalf("exec on %s: %v", vm.Name, err)
			}
			if e.WorkerID != vm.WorkerID {
				t.Fatalf("execution on vm %s ran on worker %q, but the vm lives on %q", vm.Name, e.WorkerID, vm.WorkerID)
			}
			want := 0
			if cmd[0] == "sh" {
				want = 3
			}
			if e.ExitCode == nil || *e.ExitCode != want {
				t.Fatalf("exec %v on %s: exit %v, want %d", cmd, vm.Name, e.ExitCode, want)
			}
		}
	}

	// Live output crosses processes on Redis pub/sub (worker -> gateway -> client); the end's byte counts show that
	// the end came as an event, not from the store.
	sacc, err := c.Execute(ctx, vms[1].ID, client.ExecuteRequest{Command: "sh", Args: []string{"-c", waitFor("/tmp/go") + "echo a; echo b >&2; exit 2"}})
	if err != nil {
		t.Fatal(err)
	}
	open, opened := gate(ctx, c, vms[1].ID, "/tmp/go")
	var streamed [2]strings.Builder
	end, err := c.StreamExecutionFrom(ctx, sacc.ExecutionID, client.StreamOptions{OnOpen: open}, func(ch client.Chunk) error {
		streamed[map[string]int{"stdout": 0, "stderr": 1}[ch.Stream]].Write(ch.Data)
		return nil
	})
	if err != nil || <-opened != nil {
		t.Fatalf("stream over the gateway: %v", err)
	}
	if streamed[0].String() != "a\n" || streamed[1].String() != "b\n" || end.ExitCode == nil || *end.ExitCode != 2 || end.StdoutBytes == nil {
		t.Fatalf("stream over the gateway: %q %q %+v", streamed[0].String(), streamed[1].String(), end)
	}

	// Files and shells cross processes too: the gateway proxies them to the worker that hosts the VM.
	for _, vm := range vms[:2] {
		payload := bytes.Repeat([]byte(vm.ID), 50_000)
		if _, err := c.Upload(ctx, vm.ID, "/tmp/payload", bytes.NewReader(payload), client.UploadOptions{Size: int64(len(payload))}); err != nil {
			t.Fatalf("upload to %s over the gateway: %v", vm.Name, err)
		}
		d, err := c.Download(ctx, vm.ID, "/tmp/payload")
		if err != nil {
			t.Fatal(err)
		}
		back, err := io.ReadAll(d)
		d.Close()
		if err != nil || !bytes.Equal(back, payload) {
			t.Fatalf("download from %s over the gateway: %d bytes, %v", vm.Name, len(back), err)
		}
		sh, err := c.OpenShell(ctx, vm.ID, client.ShellOptions{Command: []string{"sh", "-c", "cat /tmp/payload | wc -c; exit 4"}})
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		exit, err := sh.Wait(&out, nil)
		if err != nil || exit.ExitCode != 4 || strings.TrimSpace(out.String()) != strconv.Itoa(len(payload)) {
			t.Fatalf("shell on %s over the gateway: %+v %v %q", vm.Name, exit, err, out.String())
		}
	}

	// Kill the worker that hosts the first VM while a command runs on it.
	victim := vms[0]
	acc, err := c.Execute(ctx, victim.ID, client.ExecuteRequest{Command: "sleep", Args: []string{"60"}})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		e, err := c.GetExecution(ctx, acc.ExecutionID)
		if err != nil {
			t.Fatal(err)
		}
		if e.Status == "running" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("execution never started: %+v", e)
		}
		time.Sleep(50 * time.Millisecond)
	}
	workers[victim.WorkerID].kill()
	restarted := start(t, victim.WorkerID+"#2", append(common, "AETHERIUM_DATA_DIR="+dirs[victim.WorkerID], "AETHERIUM_WORKER_ID="+victim.WorkerID), "worker")
	_ = restarted
	tk, err := c.WaitTask(ctx, acc.TaskID, 0)
	if err != nil {
		t.Fatal(err)
	}
	if tk.Status != "failed" || !strings.Contains(tk.Error, "interrupted") {
		t.Fatalf("task of the killed worker: status=%s error=%q; want failed with an interruption reason", tk.Status, tk.Error)
	}
	e, err := c.GetExecution(ctx, acc.ExecutionID)
	if err != nil || e.Status != "failed" || e.Error == "" {
		t.Fatalf("execution of the killed worker: %+v %v", e, err)
	}
	// The VM survived (its container kept running) and takes commands again.
	again, err := c.ExecAndWait(ctx, victim.ID, client.ExecuteRequest{Command: "echo", Args: []string{"back"}})
	if err != nil || again.Stdout != "back\n" {
		t.Fatalf("exec after worker restart: %+v %v", again, err)
	}
	for _, vm := range vms {
		if _, err := c.DeleteVMAndWait(ctx, vm.ID); err != nil {
			t.Fatalf("delete %s: %v", vm.Name, err)
		}
		if ids := containersOf(t, vm.ID); len(ids) != 0 {
			t.Fatalf("containers left for %s: %v", vm.Name, ids)
		}
	}
}
