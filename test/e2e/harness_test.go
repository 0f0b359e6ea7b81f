// Package e2e runs the built aetherium binaries as a user would: serve on embedded defaults, and a gateway with
// several workers on PostgreSQL and Redis, against the real Docker engine.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/aetherium/aetherium/pkg/client"
)

var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "aetherium-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := func() int {
		defer os.RemoveAll(dir)
		root, err := moduleRoot()
		if err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			return 1
		}
		for _, b := range []struct{ out, pkg string }{{"aetherium", "./cmd/aetherium"}, {"aetherium-agent", "./cmd/aetherium-agent"}} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(dir, b.out), b.pkg)
			cmd.Dir = root
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "e2e: build %s: %v\n%s", b.pkg, err, out)
				return 1
			}
		}
		return m.Run()
	}()
	os.Exit(code)
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	return filepath.Dir(strings.TrimSpace(string(out))), nil
}

// requireService skips, loudly, when a service is absent, unless CI demands it.
func requireService(t testing.TB, name string, ok bool, why string) {
	t.Helper()
	if ok {
		return
	}
	if os.Getenv("AETHERIUM_REQUIRE_SERVICES") == "1" {
		t.Fatalf("%s is required (AETHERIUM_REQUIRE_SERVICES=1) but unavailable: %s", name, why)
	}
	t.Skipf("SKIPPED: %s unavailable (%s); run scripts/setup.sh services", name, why)
}

func requireDocker(t testing.TB) {
	out, err := exec.Command("docker", "version", "--format", "{{.Server.Version}}").CombinedOutput()
	requireService(t, "Docker engine", err == nil, strings.TrimSpace(string(out)))
}

func freePort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// proc is one running aetherium process.
type proc struct {
	t    testing.TB
	name string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
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

func start(t testing.TB, name string, env []string, args ...string) *proc {
	t.Helper()
	return startCmd(t, name, exec.Command(filepath.Join(binDir, "aetherium"), args...), env)
}

// startCmd starts cmd (an aetherium process, possibly through a wrapper such as nsenter that execs it) with env
// added to this process's, and stops it when the test ends.
func startCmd(t testing.TB, name string, cmd *exec.Cmd, env []string) *proc {
	t.Helper()
	// Metrics are off unless a test asks for them: processes started side by side would all want the default
	// metrics port (a later AETHERIUM_METRICS_LISTEN in env wins).
	cmd.Env = append(append(os.Environ(), "AETHERIUM_METRICS_LISTEN=off"), env...)
	seedKVMVerdict(t, cmd.Env)
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{t: t, name: name, cmd: cmd, out: out, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.stop(syscall.SIGTERM, 30*time.Second)
		if t.Failed() {
			t.Logf("--- output of %s ---\n%s", name, out.String())
		}
	})
	return p
}

// stop signals the process and waits for it to exit, killing it after grace.
func (p *proc) stop(sig syscall.Signal, grace time.Duration) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *proc) kill() { p.stop(syscall.SIGKILL, 10*time.Second) }

// waitHTTP waits until the API answers its health check.
func waitHTTP(t testing.TB, addr string, p *proc) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			t.Fatalf("%s exited early:\n%s", p.name, p.out.String())
		default:
		}
		resp, err := http.Get("http://" + addr + "/api/v1/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s did not answer on %s within 60s:\n%s", p.name, addr, p.out.String())
}

// waitReady waits until /ready says every check passes and /status that a worker is live (readiness alone does
// not wait for workers). c must carry an API key.
func waitReady(t testing.TB, c *client.Client) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var last string
	for ctx.Err() == nil {
		r, err := c.Ready(ctx)
		if err == nil && r.Status == "ready" {
			st, err := c.Status(ctx)
			if err == nil && st.Workers.Live > 0 {
				return
			}
			last = fmt.Sprintf("ready, status %+v %v", st, err)
		} else {
			last = fmt.Sprintf("%+v %v", r, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("server not ready within 60s: %s", last)
}

func newClient(t testing.TB, addr, key string) *client.Client {
	t.Helper()
	c, err := client.New("http://"+addr, key)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// runCLI runs the aetherium client binary and returns its stdout, stderr and exit code.
func runCLI(t testing.TB, env []string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "aetherium"), args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run cli: %v", err)
	}
	return stdout.String(), stderr.String(), code
}

// containersOf lists the containers labelled with a VM id.
func containersOf(t testing.TB, vmID string) []string {
	t.Helper()
	out, err := exec.Command("docker", "ps", "-aq", "--filter", "label=aetherium.vm-id="+vmID).Output()
	if err != nil {
		t.Fatalf("docker ps: %v", err)
	}
	return strings.Fields(string(out))
}

// removeWorkerContainers removes what a test's workers left, so a failed test does not leak containers.
func removeWorkerContainers(t testing.TB, workerIDs ...string) {
	t.Cleanup(func() {
		for _, id := range workerIDs {
			out, _ := exec.Command("docker", "ps", "-aq", "--filter", "label=aetherium.worker-id="+id).Output()
			if ids := strings.Fields(string(out)); len(ids) > 0 {
				_ = exec.Command("docker", append([]string{"rm", "-f"}, ids...)...).Run()
			}
		}
	})
}

func readLine(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	s.Scan()
	return strings.TrimSpace(s.Text())
}

// newPostgresDB creates a throwaway database and returns its URL.
func newPostgresDB(t testing.TB) string {
	t.Helper()
	admin := os.Getenv("AETHERIUM_TEST_POSTGRES_URL")
	if admin == "" {
		admin = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
	}
	db, err := sql.Open("pgx", admin)
	if err == nil {
		err = db.Ping()
	}
	requireService(t, "PostgreSQL", err == nil, fmt.Sprint(err))
	name := fmt.Sprintf("aetherium_e2e_%d", time.Now().UnixNano())
	if _, err := db.Exec("CREATE DATABASE " + name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = db.Exec("DROP DATABASE IF EXISTS " + name + " WITH (FORCE)")
		db.Close()
	})
	return strings.Replace(admin, "/postgres?", "/"+name+"?", 1)
}

func drain(r io.Reader) { _, _ = io.Copy(io.Discard, r) }
