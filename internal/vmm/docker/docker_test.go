package docker

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/image"
	"github.com/google/uuid"

	"github.com/aetherium/aetherium/internal/agent"
	agentclient "github.com/aetherium/aetherium/internal/agent/client"
	"github.com/aetherium/aetherium/internal/vmm"
)

// createStart creates and starts a VM and checks that it reports running.
func (e *testEnv) createStart(t testing.TB, ctx context.Context, cfg vmm.VMConfig) *vmm.Instance {
	t.Helper()
	if cfg.ID == "" {
		cfg.ID = uuid.NewString()
	}
	inst, err := e.b.CreateVM(ctx, cfg)
	if err != nil {
		t.Fatalf("CreateVM: %v", err)
	}
	if err := e.b.StartVM(ctx, cfg.ID); err != nil {
		t.Fatalf("StartVM: %v", err)
	}
	return inst
}

func run(t testing.TB, ctx context.Context, b *Backend, id string, argv ...string) *agent.ExecResult {
	t.Helper()
	res, err := b.ExecuteCommand(ctx, id, agent.ExecRequest{Argv: argv})
	if err != nil {
		t.Fatalf("ExecuteCommand(%q): %v", argv, err)
	}
	return res
}

func TestLifecycle(t *testing.T) {
	e := newEnv(t, nil)
	ctx := ctxFor(t, 3*time.Minute)
	id := uuid.NewString()
	cfg := vmm.VMConfig{ID: id, Name: "Lifecycle Test_VM", VCPUs: 1, MemoryMB: 256}

	inst, err := e.b.CreateVM(ctx, cfg)
	if err != nil {
		t.Fatalf("CreateVM: %v", err)
	}
	if inst.ID != id || inst.State != vmm.StateCreated || inst.WorkerID != e.workerID || inst.Name != cfg.Name {
		t.Fatalf("CreateVM returned %+v", inst)
	}
	if want := filepath.Join(e.dataDir, "vms", id, "agent.sock"); inst.SocketPath != want {
		t.Errorf("SocketPath = %q, want %q", inst.SocketPath, want)
	}
	st, err := os.Stat(filepath.Join(e.dataDir, "vms", id))
	if err != nil {
		t.Fatalf("per-VM directory: %v", err)
	}
	if st.Mode().Perm() != 0o700 {
		t.Errorf("per-VM directory mode = %v, want 0700", st.Mode().Perm())
	}
	again, err := e.b.CreateVM(ctx, cfg)
	if err != nil {
		t.Fatalf("second CreateVM: %v", err)
	}
	if again.ID != id || again.State != vmm.StateCreated {
		t.Fatalf("second CreateVM returned %+v", again)
	}

	if err := e.b.StartVM(ctx, id); err != nil {
		t.Fatalf("StartVM: %v", err)
	}
	if inst, err = e.b.GetVMStatus(ctx, id); err != nil || inst.State != vmm.StateRunning {
		t.Fatalf("GetVMStatus after start = %+v, %v", inst, err)
	}
	// The agent answers on the socket the instance names, on its own (not only through the backend's client).
	cl := agentclient.New(agent.UnixDialer(inst.SocketPath))
	info, err := cl.Health(ctx)
	_ = cl.Close()
	if err != nil {
		t.Fatalf("agent Health on %s: %v", inst.SocketPath, err)
	}
	if !info.PID1 {
		t.Errorf("agent is not PID 1: %+v", info)
	}
	if info.Hostname != "lifecycle-test-vm" {
		t.Errorf("guest hostname = %q, want the sanitized VM name", info.Hostname)
	}
	// Starting a running VM (a retried task) succeeds.
	if err := e.b.StartVM(ctx, id); err != nil {
		t.Fatalf("StartVM on a running VM: %v", err)
	}

	res := run(t, ctx, e.b, id, "echo", "hello")
	if res.ExitCode != 0 || string(res.Stdout) != "hello\n" {
		t.Errorf("echo hello = exit %d, stdout %q, stderr %q", res.ExitCode, res.Stdout, res.Stderr)
	}
	res = run(t, ctx, e.b, id, "sh", "-c", "exit 3")
	if res.ExitCode != 3 {
		t.Errorf("sh -c 'exit 3' = exit %d, want 3", res.ExitCode)
	}
	// The base image's layout: PATH, writable sticky /tmp, root's home.
	res = run(t, ctx, e.b, id, "sh", "-c", `echo "$PATH"; stat -c %a /tmp; cd && pwd; id -u; cat /etc/hostname`)
	if got, want := string(res.Stdout), basePath+"\n1777\n/root\n0\nlifecycle-test-vm\n"; got != want {
		t.Errorf("guest layout = %q (stderr %q), want %q", got, res.Stderr, want)
	}

	if err := e.b.StopVM(ctx, id); err != nil {
		t.Fatalf("StopVM: %v", err)
	}
	if inst, err = e.b.GetVMStatus(ctx, id); err != nil || inst.State != vmm.StateStopped {
		t.Fatalf("GetVMStatus after stop = %+v, %v", inst, err)
	}
	if !strings.Contains(inst.Detail, "exit code") {
		t.Errorf("stopped VM's Detail = %q, want an exit code", inst.Detail)
	}
	if err := e.b.StopVM(ctx, id); err != nil {
		t.Errorf("StopVM on a stopped VM: %v", err)
	}
	if _, err := e.b.ExecuteCommand(ctx, id, agent.ExecRequest{Argv: []string{"true"}}); !errors.Is(err, vmm.ErrNotRunning) {
		t.Errorf("exec on a stopped VM: err = %v, want ErrNotRunning", err)
	}

	// A restart finds a stale socket from the previous run and must still wait for the new agent.
	if err := e.b.StartVM(ctx, id); err != nil {
		t.Fatalf("StartVM after stop: %v", err)
	}
	if res := run(t, ctx, e.b, id, "echo", "again"); string(res.Stdout) != "again\n" {
		t.Errorf("echo after restart = %q", res.Stdout)
	}

	if err := e.b.DeleteVM(ctx, id); err != nil {
		t.Fatalf("DeleteVM: %v", err)
	}
	if _, err := engine.ContainerInspect(ctx, containerName(id)); !cerrdefs.IsNotFound(err) {
		t.Errorf("container after DeleteVM: err = %v, want not found", err)
	}
	if _, err := os.Stat(filepath.Join(e.dataDir, "vms", id)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("per-VM directory after DeleteVM: %v, want it gone", err)
	}
	if err := e.b.DeleteVM(ctx, id); err != nil {
		t.Errorf("second DeleteVM: %v", err)
	}
	if _, err := e.b.GetVMStatus(ctx, id); !errors.Is(err, vmm.ErrNotFound) {
		t.Errorf("GetVMStatus after delete: err = %v, want ErrNotFound", err)
	}
	if _, err := e.b.ExecuteCommand(ctx, id, agent.ExecRequest{Argv: []string{"true"}}); !errors.Is(err, vmm.ErrNotFound) {
		t.Errorf("exec on a deleted VM: err = %v, want ErrNotFound", err)
	}
	if err := e.b.StartVM(ctx, id); !errors.Is(err, vmm.ErrNotFound) {
		t.Errorf("StartVM on a deleted VM: err = %v, want ErrNotFound", err)
	}
	if err := e.b.StopVM(ctx, id); !errors.Is(err, vmm.ErrNotFound) {
		t.Errorf("StopVM on a deleted VM: err = %v, want ErrNotFound", err)
	}
}

func TestResourceLimits(t *testing.T) {
	e := newEnv(t, nil)
	ctx := ctxFor(t, 2*time.Minute)
	id := uuid.NewString()
	e.createStart(t, ctx, vmm.VMConfig{ID: id, Name: "limits", VCPUs: 1, MemoryMB: 128})

	c, err := engine.ContainerInspect(ctx, containerName(id))
	if err != nil {
		t.Fatal(err)
	}
	hc := c.HostConfig
	if hc.NanoCPUs != 1e9 {
		t.Errorf("NanoCPUs = %d, want 1e9", hc.NanoCPUs)
	}
	if hc.Memory != 128<<20 || hc.MemorySwap != 128<<20 {
		t.Errorf("Memory, MemorySwap = %d, %d, want both %d", hc.Memory, hc.MemorySwap, 128<<20)
	}
	if hc.PidsLimit == nil || *hc.PidsLimit != DefaultPidsLimit {
		t.Errorf("PidsLimit = %v, want %d", hc.PidsLimit, DefaultPidsLimit)
	}
	if string(hc.NetworkMode) != "none" || hc.AutoRemove || hc.RestartPolicy.Name != "no" {
		t.Errorf("NetworkMode %q, AutoRemove %v, RestartPolicy %q", hc.NetworkMode, hc.AutoRemove, hc.RestartPolicy.Name)
	}
	if l := c.Config.Labels; l[LabelVMID] != id || l[LabelWorkerID] != e.workerID || l[LabelManaged] != "true" {
		t.Errorf("labels = %v", l)
	}
	// The limits are the ones the guest lives under: its cgroup (v1 or v2) says so.
	res := run(t, ctx, e.b, id, "sh", "-c",
		"cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max")
	if got := strings.TrimSpace(string(res.Stdout)); got != "134217728" {
		t.Errorf("guest memory limit = %q (stderr %q), want 134217728", got, res.Stderr)
	}

	// More vCPUs than the engine has cores: capped rather than refused.
	big := uuid.NewString()
	if _, err := e.b.CreateVM(ctx, vmm.VMConfig{ID: big, VCPUs: 1024, MemoryMB: 64}); err != nil {
		t.Fatalf("CreateVM with 1024 vcpus: %v", err)
	}
	c, err = engine.ContainerInspect(ctx, containerName(big))
	if err != nil {
		t.Fatal(err)
	}
	if want := int64(e.b.maxCPUs) * 1e9; c.HostConfig.NanoCPUs != want {
		t.Errorf("NanoCPUs for 1024 vcpus = %d, want the host's %d", c.HostConfig.NanoCPUs, want)
	}
}

func TestConcurrentVMs(t *testing.T) {
	e := newEnv(t, nil)
	ctx := ctxFor(t, 3*time.Minute)
	ids := make([]string, 4)
	var wg sync.WaitGroup
	errs := make([]error, len(ids))
	for i := range ids {
		ids[i] = uuid.NewString()
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if _, err := e.b.CreateVM(ctx, vmm.VMConfig{ID: ids[i], Name: "c", VCPUs: 1, MemoryMB: 64}); err != nil {
				errs[i] = err
				return
			}
			errs[i] = e.b.StartVM(ctx, ids[i])
		}(i)
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("vm %d: %v", i, err)
		}
	}
	// Each VM answers through its own agent, concurrently.
	outs := make([]string, len(ids))
	for i := range ids {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			res, err := e.b.ExecuteCommand(ctx, ids[i], agent.ExecRequest{Argv: []string{"cat", "/etc/hostname"}})
			if err != nil {
				outs[i] = err.Error()
				return
			}
			outs[i] = string(res.Stdout)
		}(i)
	}
	wg.Wait()
	for i, out := range outs {
		if out != "c\n" {
			t.Errorf("vm %d: hostname %q", i, out)
		}
	}
	list, err := e.b.ListVMs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != len(ids) {
		t.Errorf("ListVMs returned %d VMs, want %d", len(list), len(ids))
	}
	for _, inst := range list {
		if inst.State != vmm.StateRunning {
			t.Errorf("vm %s: state %s", inst.ID, inst.State)
		}
	}
}

func TestListVMsPerWorker(t *testing.T) {
	a := newEnv(t, nil)
	b := newEnv(t, nil)
	ctx := ctxFor(t, 2*time.Minute)
	idA1, idA2, idB := uuid.NewString(), uuid.NewString(), uuid.NewString()
	a.createStart(t, ctx, vmm.VMConfig{ID: idA1, Name: "a1", MemoryMB: 64})
	if _, err := a.b.CreateVM(ctx, vmm.VMConfig{ID: idA2, Name: "a2", MemoryMB: 64}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.b.CreateVM(ctx, vmm.VMConfig{ID: idB, Name: "b", WorkerID: b.workerID, MemoryMB: 64}); err != nil {
		t.Fatal(err)
	}

	got := func(e *testEnv) map[string]vmm.State {
		list, err := e.b.ListVMs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		m := make(map[string]vmm.State)
		for _, inst := range list {
			if inst.WorkerID != e.workerID {
				t.Errorf("ListVMs of %s returned a VM of %s", e.workerID, inst.WorkerID)
			}
			m[inst.ID] = inst.State
		}
		return m
	}
	if m := got(a); len(m) != 2 || m[idA1] != vmm.StateRunning || m[idA2] != vmm.StateCreated {
		t.Errorf("worker A lists %v, want %s running and %s created", m, idA1, idA2)
	}
	if m := got(b); len(m) != 1 || m[idB] != vmm.StateCreated {
		t.Errorf("worker B lists %v, want only %s", m, idB)
	}
	// A created, never started VM has no agent yet.
	if _, err := a.b.ExecuteCommand(ctx, idA2, agent.ExecRequest{Argv: []string{"true"}}); !errors.Is(err, vmm.ErrNotRunning) {
		t.Errorf("exec on a created VM: err = %v, want ErrNotRunning", err)
	}
	// A VM routed to the wrong worker is refused, not silently adopted.
	if _, err := a.b.CreateVM(ctx, vmm.VMConfig{ID: uuid.NewString(), WorkerID: b.workerID}); err == nil {
		t.Error("CreateVM with another worker's id succeeded")
	}
}

func TestStartFailsFastWithLogs(t *testing.T) {
	// busybox is static, so it passes New's checks, but run as "aetherium-agent" it knows no such applet and exits
	// 127 at once, writing why: an entrypoint that cannot start.
	e := newEnv(t, func(c *Config) {
		c.AgentBinary = DefaultBusyboxPath
		c.ReadyTimeout = 5 * time.Minute // far longer than the test: failing fast must not rely on it
	})
	ctx := ctxFor(t, 2*time.Minute)
	id := uuid.NewString()
	if _, err := e.b.CreateVM(ctx, vmm.VMConfig{ID: id, MemoryMB: 64}); err != nil {
		t.Fatal(err)
	}
	err := e.b.StartVM(ctx, id)
	if err == nil {
		t.Fatal("StartVM succeeded with an agent that cannot start")
	}
	t.Logf("StartVM error, as wanted: %v", err)
	for _, want := range []string{"exit code 127", "aetherium-agent: applet not found"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("StartVM error lacks %q:\n%v", want, err)
		}
	}
	inst, err := e.b.GetVMStatus(ctx, id)
	if err != nil || inst.State != vmm.StateStopped || !strings.Contains(inst.Detail, "127") {
		t.Errorf("GetVMStatus after failed start = %+v, %v", inst, err)
	}
}

func TestStartTimesOutAndStops(t *testing.T) {
	// A ready timeout too short for any agent: StartVM must give up with a readiness error, not hang, and leave
	// the VM stopped rather than half-started.
	e := newEnv(t, func(c *Config) { c.ReadyTimeout = time.Nanosecond })
	ctx := ctxFor(t, 2*time.Minute)
	id := uuid.NewString()
	if _, err := e.b.CreateVM(ctx, vmm.VMConfig{ID: id, MemoryMB: 64}); err != nil {
		t.Fatal(err)
	}
	err := e.b.StartVM(ctx, id)
	if err == nil || !strings.Contains(err.Error(), "not ready within") {
		t.Fatalf("StartVM with a 1ns ready timeout: err = %v, want a readiness timeout", err)
	}
	t.Logf("StartVM error, as wanted: %v", err)
	// The half-started container is stopped again, so that a retry starts clean.
	inst, err := e.b.GetVMStatus(ctx, id)
	if err != nil || inst.State != vmm.StateStopped {
		t.Errorf("GetVMStatus after timed-out start = %+v, %v", inst, err)
	}
}

func TestCreateErrors(t *testing.T) {
	e := newEnv(t, nil)
	ctx := ctxFor(t, time.Minute)
	_, err := e.b.CreateVM(ctx, vmm.VMConfig{ID: uuid.NewString(), Image: "aetherium/no-such-image:" + uuid.NewString()[:8]})
	if !errors.Is(err, ErrImageNotFound) {
		t.Errorf("CreateVM with a missing image: err = %v, want ErrImageNotFound", err)
	}
	for _, bad := range []string{"", "../x", "a/b", "-x", strings.Repeat("x", 200)} {
		if _, err := e.b.CreateVM(ctx, vmm.VMConfig{ID: bad}); err == nil {
			t.Errorf("CreateVM with id %q succeeded", bad)
		}
	}
	if _, err := e.b.CreateVM(ctx, vmm.VMConfig{ID: uuid.NewString(), MemoryMB: 1}); err == nil {
		t.Error("CreateVM with 1 MiB of memory succeeded")
	}
	egress := &vmm.EgressPolicy{AllowDomains: []string{"github.com"}}
	if _, err := e.b.CreateVM(ctx, vmm.VMConfig{ID: uuid.NewString(), Egress: egress}); !errors.Is(err, vmm.ErrInvalidConfig) {
		t.Errorf("CreateVM with an egress policy docker cannot enforce: err = %v, want ErrInvalidConfig", err)
	}
	if err := e.b.Health(ctx); err != nil {
		t.Errorf("Health: %v", err)
	}
}

// countingHandler counts "built base image" records, to check that concurrent first creates build once.
type countingHandler struct {
	slog.Handler
	builds *atomic.Int32
}

func (h countingHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "built base image" {
		h.builds.Add(1)
	}
	return h.Handler.Handle(ctx, r)
}

func (h countingHandler) WithAttrs(a []slog.Attr) slog.Handler {
	return countingHandler{h.Handler.WithAttrs(a), h.builds}
}

func TestBaseImageBuiltOnce(t *testing.T) {
	requireDocker(t)
	// A busybox with one extra trailing byte (harmless to an ELF file) hashes differently, so this test builds
	// its own base image from scratch, whatever other runs left in the engine.
	bb, err := os.ReadFile(DefaultBusyboxPath)
	if err != nil {
		t.Fatal(err)
	}
	bbPath := filepath.Join(t.TempDir(), "busybox")
	if err := os.WriteFile(bbPath, append(bb, []byte(uuid.NewString())...), 0o755); err != nil {
		t.Fatal(err)
	}
	// Registered before newEnv, so that it runs after the sweep has removed the containers using the image.
	var ref string
	t.Cleanup(func() {
		if ref == "" {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := engine.ImageRemove(ctx, ref, image.RemoveOptions{Force: true, PruneChildren: true}); err != nil {
			t.Errorf("remove test base image %s: %v", ref, err)
		}
	})
	var builds atomic.Int32
	e := newEnv(t, func(c *Config) {
		c.BusyboxPath = bbPath
		c.Logger = slog.New(countingHandler{slog.NewTextHandler(io.Discard, nil), &builds})
	})
	ctx := ctxFor(t, 3*time.Minute)

	const n = 3
	var wg sync.WaitGroup
	refs := make([]string, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			inst, err := e.b.CreateVM(ctx, vmm.VMConfig{ID: uuid.NewString(), MemoryMB: 64})
			if err != nil {
				errs[i] = err
				return
			}
			refs[i] = inst.Image
		}(i)
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("CreateVM %d: %v", i, errs[i])
		}
	}
	ref = refs[0]
	if !strings.HasPrefix(ref, baseRepo+":") || refs[1] != ref || refs[2] != ref {
		t.Errorf("images = %q, want one %s:<hash>", refs, baseRepo)
	}
	if got := builds.Load(); got != 1 {
		t.Errorf("base image built %d times, want 1", got)
	}
	img, err := engine.ImageInspect(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	if !containsString(img.Config.Env, "PATH="+basePath) {
		t.Errorf("base image Env = %q, want PATH=%s", img.Config.Env, basePath)
	}
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestNewValidation(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "agent.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	notExec := filepath.Join(dir, "agent-noexec")
	if err := os.WriteFile(notExec, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	dynamic := "/bin/ls" // dynamically linked on Debian; the case skips where it is not
	cases := []struct {
		name string
		cfg  Config
		want []string
	}{
		{"no data dir", Config{AgentBinary: DefaultBusyboxPath}, []string{"DataDir"}},
		{"no agent", Config{DataDir: dir}, []string{"AgentBinary", "go build"}},
		{"missing agent", Config{DataDir: dir, AgentBinary: filepath.Join(dir, "nope")}, []string{"nope", "go build"}},
		{"not executable", Config{DataDir: dir, AgentBinary: notExec}, []string{notExec, "not executable"}},
		{"script", Config{DataDir: dir, AgentBinary: script}, []string{script, "not an ELF"}},
		{"dynamic", Config{DataDir: dir, AgentBinary: dynamic}, []string{dynamic, "dynamically linked", "CGO_ENABLED=0"}},
		{"deep data dir", Config{DataDir: filepath.Join(dir, strings.Repeat("d", 80)), AgentBinary: DefaultBusyboxPath},
			[]string{"Unix socket limit"}},
		{"network", Config{DataDir: dir, AgentBinary: DefaultBusyboxPath, NetworkMode: "host"}, []string{"NetworkMode"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "dynamic" {
				if err := checkStaticExecutable(dynamic); err == nil {
					t.Skip(dynamic + " is static on this machine")
				}
			}
			_, err := New(context.Background(), tc.cfg)
			if err == nil {
				t.Fatal("New succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestHostname(t *testing.T) {
	for _, tc := range []struct{ name, id, want string }{
		{"web", "x", "web"},
		{"My VM_1", "x", "my-vm-1"},
		{"--a..b--", "x", "a-b"},
		{"", "3F2504E0-4F89", "vm-3f2504e0"},
		{"ünï", "abc", "n"},
		{"***", "...", "vm"},
		{strings.Repeat("a", 70), "x", strings.Repeat("a", 63)},
	} {
		if got := hostname(tc.name, tc.id); got != tc.want {
			t.Errorf("hostname(%q, %q) = %q, want %q", tc.name, tc.id, got, tc.want)
		}
	}
}

func TestBaseRootfs(t *testing.T) {
	busybox := []byte("\x7fELF fake busybox")
	applets, err := busyboxApplets(context.Background(), DefaultBusyboxPath)
	if err != nil {
		t.Skip("SKIPPED: no busybox on this machine: " + err.Error())
	}
	data, err := baseRootfs(busybox, applets)
	if err != nil {
		t.Fatal(err)
	}
	entries := make(map[string]*tar.Header)
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if _, dup := entries[h.Name]; dup {
			t.Errorf("duplicate entry %s", h.Name)
		}
		entries[h.Name] = h
		if h.Name == "bin/busybox" {
			body, _ := io.ReadAll(tr)
			if !bytes.Equal(body, busybox) {
				t.Error("bin/busybox content differs")
			}
		}
	}
	checks := []struct {
		name string
		typ  byte
		mode int64
		link string
	}{
		{"bin/busybox", tar.TypeReg, 0o755, ""},
		{"bin/sh", tar.TypeSymlink, 0o777, "/bin/busybox"},
		{"usr/bin/env", tar.TypeSymlink, 0o777, "/bin/busybox"},
		{"tmp/", tar.TypeDir, 0o1777, ""},
		{"root/", tar.TypeDir, 0o700, ""},
		{"run/aetherium/", tar.TypeDir, 0o755, ""},
		{"etc/passwd", tar.TypeReg, 0o644, ""},
		{"etc/group", tar.TypeReg, 0o644, ""},
		{"etc/hostname", tar.TypeReg, 0o644, ""},
	}
	for _, c := range checks {
		h, ok := entries[c.name]
		if !ok {
			t.Errorf("missing %s", c.name)
			continue
		}
		if h.Typeflag != c.typ || h.Mode != c.mode || h.Linkname != c.link || h.Uid != 0 || h.Gid != 0 {
			t.Errorf("%s: type %c mode %o link %q uid %d, want type %c mode %o link %q uid 0",
				c.name, h.Typeflag, h.Mode, h.Linkname, h.Uid, c.typ, c.mode, c.link)
		}
	}
	if len(entries) < len(applets) {
		t.Errorf("%d entries for %d applets", len(entries), len(applets))
	}
	again, err := baseRootfs(busybox, applets)
	if err != nil || !bytes.Equal(again, data) {
		t.Error("baseRootfs is not deterministic")
	}
}

// TestUserImage checks that any local image works: the agent comes from the host and runs as root, whatever the
// image's ENTRYPOINT, CMD and USER say (an ENTRYPOINT of /bin/false or an agent running as nobody would never
// become ready). Commands get the agent's own environment and working directory, not the image's ENV and WORKDIR:
// that is the agent's contract on every backend.
func TestUserImage(t *testing.T) {
	requireDocker(t)
	ctx := ctxFor(t, 2*time.Minute)
	bb, err := os.ReadFile(DefaultBusyboxPath)
	if err != nil {
		t.Fatal(err)
	}
	applets, err := busyboxApplets(ctx, DefaultBusyboxPath)
	if err != nil {
		t.Fatal(err)
	}
	rootfs, err := baseRootfs(bb, applets)
	if err != nil {
		t.Fatal(err)
	}
	ref := "aetherium-test/user:" + uuid.NewString()[:8]
	rc, err := engine.ImageImport(ctx, image.ImportSource{Source: bytes.NewReader(rootfs), SourceName: "-"}, ref,
		image.ImportOptions{Changes: []string{
			`ENTRYPOINT ["/bin/false"]`, `CMD ["ignored"]`, "USER nobody", "WORKDIR /tmp", "ENV FOO=bar",
		}})
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, rc)
	_ = rc.Close()
	// Registered before newEnv, so that it runs after the sweep has removed the container using the image.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := engine.ImageRemove(ctx, ref, image.RemoveOptions{Force: true}); err != nil {
			t.Errorf("remove %s: %v", ref, err)
		}
	})

	e := newEnv(t, nil)
	id := uuid.NewString()
	inst := e.createStart(t, ctx, vmm.VMConfig{ID: id, Name: "user-image", Image: ref, MemoryMB: 64})
	if inst.Image != ref {
		t.Errorf("Instance.Image = %q, want %q", inst.Image, ref)
	}
	res := run(t, ctx, e.b, id, "id", "-u")
	if got := string(res.Stdout); got != "0\n" {
		t.Errorf("uid = %q (stderr %q), want 0", got, res.Stderr)
	}
	c, err := engine.ContainerInspect(ctx, containerName(id))
	if err != nil {
		t.Fatal(err)
	}
	if !containsString(c.Config.Env, "FOO=bar") {
		t.Errorf("container Env = %q, want the image's FOO=bar", c.Config.Env)
	}
}

// TestAgentStagedInDataDir: containers mount a copy of the agent in DataDir/bin, named by its content, so that a
// worker in a container (whose own files the engine cannot see) can hand its image's agent to its VMs.
func TestAgentStagedInDataDir(t *testing.T) {
	e := newEnv(t, nil)
	ctx := ctxFor(t, 2*time.Minute)
	want, err := os.ReadFile(agentBinary)
	if err != nil {
		t.Fatal(err)
	}
	staged, err := filepath.Glob(filepath.Join(e.dataDir, "bin", "aetherium-agent-*"))
	if err != nil || len(staged) != 1 {
		t.Fatalf("staged agents in DataDir/bin: %v (%v), want one", staged, err)
	}
	if got, err := os.ReadFile(staged[0]); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("staged agent %s differs from %s (%v)", staged[0], agentBinary, err)
	}
	before, err := os.Stat(staged[0])
	if err != nil {
		t.Fatal(err)
	}
	if before.Mode().Perm() != 0o755 {
		t.Errorf("staged agent mode %v, want 0755", before.Mode().Perm())
	}

	id := uuid.NewString()
	e.createStart(t, ctx, vmm.VMConfig{ID: id, Name: "staged", MemoryMB: 64})
	c, err := engine.ContainerInspect(ctx, containerName(id))
	if err != nil {
		t.Fatal(err)
	}
	var source string
	for _, m := range c.Mounts {
		if m.Destination == guestAgentPath {
			source = m.Source
		}
	}
	if source != staged[0] {
		t.Errorf("the container mounts the agent from %q, want the staged copy %q", source, staged[0])
	}
	if res := run(t, ctx, e.b, id, "echo", "staged"); strings.TrimSpace(string(res.Stdout)) != "staged" {
		t.Errorf("exec through the staged agent: %+v", res)
	}

	// A restarted worker with the same agent reuses the copy; another agent gets a copy of its own beside it.
	e.restart(t)
	after, err := os.Stat(staged[0])
	if err != nil || !os.SameFile(before, after) {
		t.Errorf("the staged agent was replaced on restart (%v)", err)
	}
	other := filepath.Join(t.TempDir(), "agent")
	if err := os.WriteFile(other, append(append([]byte{}, want...), 0), 0o755); err != nil {
		t.Fatal(err)
	}
	p, err := stageAgent(other, filepath.Join(e.dataDir, "bin"))
	if err != nil || p == staged[0] {
		t.Fatalf("stageAgent of a different binary: %q, %v", p, err)
	}
	if all, _ := filepath.Glob(filepath.Join(e.dataDir, "bin", "*")); len(all) != 2 {
		t.Errorf("DataDir/bin holds %v, want the two copies and no temporary file", all)
	}
}
