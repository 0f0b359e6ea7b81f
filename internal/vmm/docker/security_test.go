//go:build linux

package docker

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/aetherium/aetherium/internal/agent"
	agentclient "github.com/aetherium/aetherium/internal/agent/client"
	"github.com/aetherium/aetherium/internal/vmm"
)

// The guest can write its /run/aetherium, which is the host directory DataDir/vms/<id> (and /proc/self/mountinfo
// tells it that path). These tests are the hostile guest of issue 10: it replaces its agent.sock, and the host
// must never end up talking to anything but that VM's own agent.

func shell(t testing.TB, ctx context.Context, b *Backend, id, script string) *agent.ExecResult {
	t.Helper()
	res := run(t, ctx, b, id, "sh", "-c", script)
	if res.ExitCode != 0 {
		t.Fatalf("sh -c %q: exit %d: %s%s", script, res.ExitCode, res.Stdout, res.Stderr)
	}
	return res
}

func TestGuestCannotRedirectAgentSocket(t *testing.T) {
	e := newEnv(t, nil)
	ctx := ctxFor(t, 4*time.Minute)

	// Owner B's VM, with a file of B's.
	victim := uuid.NewString()
	e.createStart(t, ctx, vmm.VMConfig{ID: victim, Name: "victim", MemoryMB: 64})
	shell(t, ctx, e.b, victim, "echo b-secret > /secret")

	// Owner A's VMs, each replacing its socket another way. The hijack runs over the connection made before it.
	victimSock := filepath.Join(e.dataDir, "vms", victim, socketName)
	cases := []struct {
		name, script, want string
	}{
		{"symlink to another vm's socket, renamed over",
			"ln -s " + victimSock + " /run/aetherium/x && mv -f /run/aetherium/x /run/aetherium/agent.sock",
			"symbolic link"},
		{"symlink to the engine's socket",
			"ln -sf /var/run/docker.sock /run/aetherium/agent.sock", "symbolic link"},
		{"a fifo", "rm /run/aetherium/agent.sock && mkfifo /run/aetherium/agent.sock", "fifo"},
		// A second agent of the guest's own, not PID 1, renamed over the real one's socket.
		{"a socket of another process of the guest",
			"(setsid " + guestAgentPath + " --listen unix:/run/aetherium/y </dev/null >/dev/null 2>&1 &) ; " +
				"for i in $(seq 100); do [ -S /run/aetherium/y ] && break; sleep 0.05; done; " +
				"mv -f /run/aetherium/y /run/aetherium/agent.sock",
			"not the vm's agent"},
	}
	attackers := make([]string, len(cases))
	for i, c := range cases {
		attackers[i] = uuid.NewString()
		e.createStart(t, ctx, vmm.VMConfig{ID: attackers[i], Name: "atk", MemoryMB: 64})
		shell(t, ctx, e.b, attackers[i], c.script)
	}

	// The worker restarts: every agent is dialled again, through whatever the guests left at agent.sock.
	e.restart(t)
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			id := attackers[i]
			res, err := e.b.ExecuteCommand(ctx, id, agent.ExecRequest{Argv: []string{"sh", "-c", "hostname; cat /secret; echo pwned > /pwned"}})
			if err == nil {
				t.Fatalf("exec in the attacker's vm reached an agent: %q %q", res.Stdout, res.Stderr)
			}
			if !errors.Is(err, agentclient.ErrUnavailable) || !strings.Contains(err.Error(), "refusing the agent socket") ||
				!strings.Contains(err.Error(), c.want) {
				t.Fatalf("exec error %v; want the agent socket refused (%s)", err, c.want)
			}
			t.Logf("refused, as wanted: %v", err)
			ac, err := e.b.Agent(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			var got bytes.Buffer
			if _, err := ac.Download(ctx, "/secret", &got); err == nil || got.Len() > 0 {
				t.Fatalf("download through the attacker's socket: %q, %v", got.String(), err)
			}
		})
	}
	// The victim is untouched and still reachable.
	res := shell(t, ctx, e.b, victim, "hostname; cat /secret; ls /pwned 2>&1 || true")
	if out := string(res.Stdout); !strings.Contains(out, "victim\nb-secret\n") || !strings.Contains(out, "No such file") {
		t.Fatalf("victim vm: %q", out)
	}
}

func TestHostileAgentCannotHoldExecPastTimeout(t *testing.T) {
	// The agent itself is hostile (PID 1 of the container, so the peer check passes): it handshakes, answers
	// health so that the VM starts, and then never answers an exec, or later connections at all.
	e := newEnv(t, func(c *Config) { c.AgentBinary = hostileAgent })
	ctx := ctxFor(t, 4*time.Minute)
	stall, silent := uuid.NewString(), uuid.NewString()
	e.createStart(t, ctx, vmm.VMConfig{ID: stall, Name: "stall-exec", MemoryMB: 64})
	e.createStart(t, ctx, vmm.VMConfig{ID: silent, Name: "silent-later", MemoryMB: 64})
	e.restart(t) // the silent one now accepts and says nothing

	const timeout = 5 * time.Second
	limit := timeout + agentclient.DefaultExecGrace
	for _, id := range []string{stall, silent} {
		start := time.Now()
		// No deadline of the caller's (the test's is minutes): the command's timeout must hold by itself.
		_, err := e.b.ExecuteCommand(ctx, id, agent.ExecRequest{Argv: []string{"sleep", "1000"}, Timeout: timeout})
		took := time.Since(start)
		if !errors.Is(err, agentclient.ErrTimeout) || !errors.Is(err, agentclient.ErrUnavailable) {
			t.Fatalf("exec on a hostile agent: %v; want ErrTimeout", err)
		}
		// Liveness bound, generous: the client's own deadline is timeout + grace.
		if took > limit+10*time.Second {
			t.Fatalf("exec with a %s timeout held on for %s", timeout, took)
		}
		t.Logf("exec with a %s timeout ended after %s: %v", timeout, took.Round(time.Millisecond), err)
	}

	// An exec with no timeout at all is bounded by the VM's life: deleting the VM ends it.
	errc := make(chan error, 1)
	go func() {
		_, err := e.b.ExecuteCommand(ctx, stall, agent.ExecRequest{Argv: []string{"sleep", "1000"}})
		errc <- err
	}()
	time.Sleep(500 * time.Millisecond)
	if err := e.b.DeleteVM(ctx, stall); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("exec on a deleted vm succeeded")
		}
		t.Logf("exec in flight ended by the vm's deletion: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("an exec survived the deletion of its vm")
	}
}

func TestTwoInstallationsOnOneEngine(t *testing.T) {
	// Two installations (two data directories, two installation ids) on one engine, with the same worker id
	// (the host name, by default): neither may list, adopt or remove the other's VMs.
	worker := "dup-" + uuid.NewString()[:8]
	one := newEnv(t, func(c *Config) { c.WorkerID, c.InstallationID = worker, "inst1"+uuid.NewString()[:8] })
	two := newEnv(t, func(c *Config) { c.WorkerID, c.InstallationID = worker, "inst2"+uuid.NewString()[:8] })
	ctx := ctxFor(t, 4*time.Minute)
	ids := map[*testEnv][]string{}
	for _, e := range []*testEnv{one, two} {
		for range 2 {
			id := uuid.NewString()
			e.createStart(t, ctx, vmm.VMConfig{ID: id, Name: "vm", WorkerID: worker, MemoryMB: 64})
			ids[e] = append(ids[e], id)
		}
	}
	// A container of installation one made before installation ids existed: no installation label.
	legacyEnv := &testEnv{cfg: one.cfg, workerID: worker, dataDir: one.dataDir}
	legacyEnv.cfg.InstallationID = ""
	legacyEnv.b = legacyEnv.open(t)
	legacy := uuid.NewString()
	legacyEnv.createStart(t, ctx, vmm.VMConfig{ID: legacy, Name: "legacy", WorkerID: worker, MemoryMB: 64})
	if err := legacyEnv.b.Close(); err != nil {
		t.Fatal(err)
	}
	ids[one] = append(ids[one], legacy)

	listed := func(e *testEnv) map[string]bool {
		t.Helper()
		list, err := e.b.ListVMs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]bool{}
		for _, in := range list {
			m[in.ID] = true
		}
		return m
	}
	for round := range 2 {
		for _, e := range []*testEnv{one, two} {
			e.restart(t)
			got := listed(e)
			if len(got) != len(ids[e]) {
				t.Fatalf("round %d: installation %s lists %v, want exactly %v", round, e.cfg.InstallationID, got, ids[e])
			}
			for _, id := range ids[e] {
				if !got[id] {
					t.Fatalf("round %d: installation %s does not list its vm %s", round, e.cfg.InstallationID, id)
				}
			}
			// What a worker with an empty store does at start: remove every listed VM as an orphan. It may only
			// ever hit its own, so here it removes nothing (it "knows" them all) but tries the other's by id.
			other := two
			if e == two {
				other = one
			}
			for _, id := range ids[other] {
				if err := e.b.DeleteVM(ctx, id); err != nil {
					t.Fatalf("DeleteVM of the other installation's vm: %v", err)
				}
				if _, err := e.b.GetVMStatus(ctx, id); !errors.Is(err, vmm.ErrNotFound) {
					t.Fatalf("installation %s sees the other's vm %s: %v", e.cfg.InstallationID, id, err)
				}
			}
		}
	}
	// Every VM of both is still running and answers.
	for _, e := range []*testEnv{one, two} {
		for _, id := range ids[e] {
			inst, err := e.b.GetVMStatus(ctx, id)
			if err != nil || inst.State != vmm.StateRunning {
				t.Fatalf("vm %s after both restarts: %+v, %v", id, inst, err)
			}
			run(t, ctx, e.b, id, "true")
		}
	}
	c, err := engine.ContainerInspect(ctx, containerName(ids[two][0]))
	if err != nil || c.Config.Labels[LabelInstallationID] != two.cfg.InstallationID {
		t.Fatalf("container labels %v, %v", c.Config.Labels, err)
	}
}
