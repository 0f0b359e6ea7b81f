package docker

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	dockerclient "github.com/docker/docker/client"
	"github.com/google/uuid"
)

// Package-level test fixtures, set once by TestMain.
var (
	// dockerSkip is why tests that need the engine skip ("" when it answers).
	dockerSkip string
	// agentBinary is a static aetherium-agent built for these tests.
	agentBinary string
	// hostileAgent is testdata/hostileagent built statically: an agent a hostile guest controls.
	hostileAgent string
	// engine is a raw engine client for assertions and clean-up sweeps.
	engine *dockerclient.Client
)

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	tmp, err := os.MkdirTemp("", "aedk-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "temp dir:", err)
		return 1
	}
	defer os.RemoveAll(tmp)

	dockerSkip = probeDocker()
	if dockerSkip != "" {
		if os.Getenv("AETHERIUM_REQUIRE_SERVICES") == "1" {
			fmt.Fprintln(os.Stderr, "AETHERIUM_REQUIRE_SERVICES=1 but the Docker engine is unusable:", dockerSkip)
			return 1
		}
		fmt.Fprintln(os.Stderr, "WARNING: Docker engine tests will be SKIPPED:", dockerSkip)
	} else {
		if agentBinary, err = buildAgent(tmp); err != nil {
			fmt.Fprintln(os.Stderr, "build the agent for the docker backend tests:", err)
			return 1
		}
		if hostileAgent, err = buildStatic(tmp, "./internal/vmm/docker/testdata/hostileagent"); err != nil {
			fmt.Fprintln(os.Stderr, "build the hostile agent for the docker backend tests:", err)
			return 1
		}
		defer engine.Close()
	}
	return m.Run()
}

func probeDocker() string {
	cli, err := dockerclient.NewClientWithOpts(dockerclient.FromEnv, dockerclient.WithAPIVersionNegotiation())
	if err != nil {
		return "cannot create a Docker client: " + err.Error()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Ping(ctx); err != nil {
		_ = cli.Close()
		return fmt.Sprintf("Docker engine at %s does not answer: %v", cli.DaemonHost(), err)
	}
	engine = cli
	return ""
}

// buildAgent builds cmd/aetherium-agent statically, as a deployment would. AETHERIUM_AGENT_BINARY names a
// prebuilt one instead (CI may build it once for several packages).
func buildAgent(dir string) (string, error) {
	if p := os.Getenv("AETHERIUM_AGENT_BINARY"); p != "" {
		return p, nil
	}
	return buildStatic(dir, "./cmd/aetherium-agent")
}

// buildStatic builds the main package pkg (relative to the module's root) with CGO_ENABLED=0 into dir.
func buildStatic(dir, pkg string) (string, error) {
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(gomod)))
	out := filepath.Join(dir, filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if msg, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %w\n%s", pkg, err, msg)
	}
	return out, nil
}

func requireDocker(t testing.TB) {
	t.Helper()
	if dockerSkip != "" {
		t.Skip("SKIPPED: needs a Docker engine: " + dockerSkip)
	}
}

// testEnv is one test's backend with its own worker id and data directory, both swept at clean-up.
type testEnv struct {
	b        *Backend
	cfg      Config
	workerID string
	dataDir  string
}

// newEnv makes a backend for a fresh worker id. mod may adjust the config before New.
func newEnv(t testing.TB, mod func(*Config)) *testEnv {
	t.Helper()
	requireDocker(t)
	// os.MkdirTemp rather than t.TempDir: test names would make socket paths long.
	dataDir, err := os.MkdirTemp("", "aedk-")
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		DataDir:      dataDir,
		AgentBinary:  agentBinary,
		WorkerID:     "test-" + uuid.NewString()[:8],
		ReadyTimeout: 60 * time.Second,
		Logger:       slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if mod != nil {
		mod(&cfg)
	}
	workerID := cfg.WorkerID
	// Registered before New so that it runs last, after the backend is closed.
	t.Cleanup(func() { sweep(t, workerID, dataDir) })
	e := &testEnv{cfg: cfg, workerID: workerID, dataDir: dataDir}
	e.b = e.open(t)
	return e
}

// open makes another Backend of the env's config (a restarted worker), closed at clean-up.
func (e *testEnv) open(t testing.TB) *Backend {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b, err := New(ctx, e.cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil { // a no-op for a backend restart closed already
			t.Errorf("Close: %v", err)
		}
	})
	return b
}

// restart closes the env's backend and opens a new one on the same data directory, as a restarted worker does:
// every agent connection is made again.
func (e *testEnv) restart(t testing.TB) {
	t.Helper()
	if err := e.b.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	e.b = e.open(t)
}

// sweep force-removes every container labelled with workerID and the data directory, whatever the test did.
func sweep(t testing.TB, workerID, dataDir string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	list, err := engine.ContainerList(ctx, container.ListOptions{
		All: true, Filters: filters.NewArgs(filters.Arg("label", LabelWorkerID+"="+workerID)),
	})
	if err != nil {
		t.Errorf("sweep: list containers: %v", err)
	}
	for _, c := range list {
		if err := engine.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true, RemoveVolumes: true}); err != nil {
			t.Errorf("sweep: remove container %s: %v", c.ID, err)
		}
	}
	if err := os.RemoveAll(dataDir); err != nil {
		t.Errorf("sweep: remove %s: %v", dataDir, err)
	}
}

// testWriter sends backend logs to the test log. The backend logs only inside its calls, never after them.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func ctxFor(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
