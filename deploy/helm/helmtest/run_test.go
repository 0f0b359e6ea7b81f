package helmtest

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/aetherium/aetherium/internal/config"
	"github.com/aetherium/aetherium/internal/store/storetest"
)

// sampleSecret stands in for the Secret an operator creates: the required keys and the metrics token. Optional
// keys are absent unless a test adds them, as in a real installation that does not use those integrations.
func sampleSecret(databaseURL string) map[string]string {
	return map[string]string{
		"database-url":  databaseURL,
		"redis-url":     "redis://127.0.0.1:6379/0",
		"cluster-token": "0123456789abcdef0123456789abcdef",
		"secrets-key":   "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
		"metrics-token": "fedcba9876543210fedcba9876543210",
		"uri":           databaseURL,                // examples/external-services.yaml: the database's own Secret
		"url":           "redis://127.0.0.1:6379/0", // and Redis's
		"password":      "loki-password",            // and Loki's
	}
}

var envRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// resolveEnv computes a container's environment the way the kubelet does: literals with $(VAR) expanded from the
// variables before them, the downward API fields the chart uses, and secretKeyRefs from secret (a missing key of a
// required reference is an error: the pod would not start).
func resolveEnv(c corev1.Container, secret map[string]string, node, podIP string) (map[string]string, error) {
	env := map[string]string{}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			env[e.Name] = envRef.ReplaceAllStringFunc(e.Value, func(m string) string {
				if v, ok := env[m[2:len(m)-1]]; ok {
					return v
				}
				return m
			})
		case e.ValueFrom.FieldRef != nil:
			switch e.ValueFrom.FieldRef.FieldPath {
			case "spec.nodeName":
				env[e.Name] = node
			case "status.podIP":
				env[e.Name] = podIP
			default:
				return nil, fmt.Errorf("%s: field %s is not simulated", e.Name, e.ValueFrom.FieldRef.FieldPath)
			}
		case e.ValueFrom.SecretKeyRef != nil:
			ref := e.ValueFrom.SecretKeyRef
			v, ok := secret[ref.Key]
			if !ok {
				if ref.Optional != nil && *ref.Optional {
					continue
				}
				return nil, fmt.Errorf("%s: required key %q is not in the Secret", e.Name, ref.Key)
			}
			env[e.Name] = v
		default:
			return nil, fmt.Errorf("%s: unexpected env source %+v", e.Name, e.ValueFrom)
		}
	}
	return env, nil
}

// Every container the chart renders, for every values set, gets an environment that internal/config accepts, and
// the values the chart means to set arrive as such (worker id = node name, worker API URL = pod address).
func TestRenderedEnvironmentLoads(t *testing.T) {
	dec := strictDecoder(newScheme(t))
	for name, args := range valueSets(t) {
		t.Run(name, func(t *testing.T) {
			objs := decodeAll(t, dec, render(t, args...))
			pods := podSpecs(objs)
			if len(pods) == 0 {
				t.Fatal("no pods rendered")
			}
			for where, pod := range pods {
				for _, c := range pod.Spec.Containers {
					env, err := resolveEnv(c, sampleSecret("postgres://u:p@db.example:5432/aetherium"), "vm-host-1", "10.1.2.3")
					if err != nil {
						t.Fatalf("%s: %v", where, err)
					}
					fs := pflag.NewFlagSet(c.Name, pflag.ContinueOnError)
					config.Flags(fs)
					cfg, err := config.Load(fs, func(k string) string { return env[k] })
					if err != nil {
						t.Fatalf("%s: internal/config refuses the rendered environment:\n%v", where, err)
					}
					if c.Name == "worker" {
						if cfg.WorkerID != "vm-host-1" || cfg.WorkerAPIURL != "http://10.1.2.3:8081" || cfg.WorkerAPIListen != ":8081" {
							t.Errorf("worker id %q, API %q on %q", cfg.WorkerID, cfg.WorkerAPIURL, cfg.WorkerAPIListen)
						}
						if cfg.ShutdownFor < 5*time.Minute {
							t.Errorf("worker shutdown_timeout %v", cfg.ShutdownFor)
						}
					}
					if cfg.ClusterToken == "" && c.Name != "migrate" {
						t.Errorf("%s: no cluster token", where)
					}
				}
			}
		})
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// buildAetherium builds the server binary from this checkout (Go's build cache makes it a link after `make build`).
func buildAetherium(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "aetherium")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "github.com/aetherium/aetherium/cmd/aetherium")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build aetherium: %v\n%s", err, b)
	}
	return out
}

// The default release's migrations Job and gateway pod, run for real with the environment the chart gives them
// (against PostgreSQL and Redis on this host): the Job migrates an empty database and exits 0, and the gateway
// answers its readiness and liveness probes at the rendered paths and serves /metrics with the token
// (metrics.token.enabled). The gateway starts with auto_migrate off, so it relies on the Job's migrations.
func TestRenderedGatewayAndMigrationsRun(t *testing.T) {
	dec := strictDecoder(newScheme(t))
	objs := decodeAll(t, dec, render(t, "--set", "metrics.token.enabled=true"))
	if out, err := exec.Command("redis-cli", "-h", "127.0.0.1", "ping").CombinedOutput(); err != nil ||
		strings.TrimSpace(string(out)) != "PONG" {
		if os.Getenv("AETHERIUM_REQUIRE_SERVICES") == "1" {
			t.Fatalf("Redis at 127.0.0.1:6379 is required (AETHERIUM_REQUIRE_SERVICES=1): %v %s", err, out)
		}
		t.Skipf("SKIPPED: Redis at 127.0.0.1:6379 unavailable (%v); run scripts/setup.sh services", err)
	}
	dbURL := storetest.PostgresDatabase(t)
	secret := sampleSecret(dbURL)
	bin := buildAetherium(t)

	job := find[*batchv1.Job](t, objs, "Job", release+"-aetherium-migrate").Spec.Template.Spec.Containers[0]
	env, err := resolveEnv(job, secret, "", "")
	if err != nil {
		t.Fatal(err)
	}
	env["AETHERIUM_DATA_DIR"] = t.TempDir() // the pod's emptyDir
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	mig := exec.CommandContext(ctx, bin, job.Args...)
	mig.Env = environ(env)
	if out, err := mig.CombinedOutput(); err != nil {
		t.Fatalf("migrations Job (%v): %v\n%s", job.Args, err, out)
	}

	gw := find[*appsv1.Deployment](t, objs, "Deployment", release+"-aetherium-gateway").Spec.Template.Spec.Containers[0]
	env, err = resolveEnv(gw, secret, "", "")
	if err != nil {
		t.Fatal(err)
	}
	// The pod's ports, mapped to free ports of this host (other servers may run here); the rest as rendered.
	ports := map[string]int{}
	for _, p := range gw.Ports {
		ports[p.Name] = freePort(t)
	}
	if env["AETHERIUM_LISTEN"] != ":8080" || env["AETHERIUM_METRICS_LISTEN"] != ":9464" {
		t.Fatalf("gateway listens on %q, metrics on %q", env["AETHERIUM_LISTEN"], env["AETHERIUM_METRICS_LISTEN"])
	}
	env["AETHERIUM_LISTEN"] = fmt.Sprintf("127.0.0.1:%d", ports["http"])
	env["AETHERIUM_METRICS_LISTEN"] = fmt.Sprintf("127.0.0.1:%d", ports["metrics"])
	env["AETHERIUM_DATA_DIR"] = t.TempDir()
	srv := exec.Command(bin, gw.Args...)
	srv.Env = environ(env)
	logf, err := os.Create(filepath.Join(t.TempDir(), "gateway.log"))
	if err != nil {
		t.Fatal(err)
	}
	srv.Stdout, srv.Stderr = logf, logf
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Wait() }()
	t.Cleanup(func() {
		_ = srv.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(time.Duration(*podGrace(objs)) * time.Second):
			_ = srv.Process.Kill()
			<-done
		}
	})
	logs := func() string { b, _ := os.ReadFile(logf.Name()); return string(b) }

	get := func(port int, path, token string) (int, error) {
		req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d%s", port, path), nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := (&http.Client{Timeout: 3 * time.Second}).Do(req)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	readiness := gw.ReadinessProbe.HTTPGet.Path
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, err := get(ports["http"], readiness, "")
		if err == nil && code == http.StatusOK {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("gateway exited before it was ready: %v\n%s", err, logs())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("readiness probe %s: %d %v\n%s", readiness, code, err, logs())
		}
		time.Sleep(200 * time.Millisecond)
	}
	if code, err := get(ports["http"], gw.LivenessProbe.HTTPGet.Path, ""); err != nil || code != http.StatusOK {
		t.Errorf("liveness probe %s: %d %v", gw.LivenessProbe.HTTPGet.Path, code, err)
	}
	if code, err := get(ports["metrics"], "/metrics", ""); err != nil || code != http.StatusUnauthorized {
		t.Errorf("/metrics without the token: %d %v, want 401", code, err)
	}
	if code, err := get(ports["metrics"], "/metrics", secret["metrics-token"]); err != nil || code != http.StatusOK {
		t.Errorf("/metrics with the token: %d %v", code, err)
	}
	if strings.Contains(logs(), secret["cluster-token"]) || strings.Contains(logs(), secret["secrets-key"]) ||
		strings.Contains(logs(), secret["metrics-token"]) {
		t.Errorf("the gateway logged a secret:\n%s", logs())
	}
}

func podGrace(objs []object) *int64 {
	for _, o := range objs {
		if d, ok := o.obj.(*appsv1.Deployment); ok && d.Spec.Template.Spec.TerminationGracePeriodSeconds != nil {
			return d.Spec.Template.Spec.TerminationGracePeriodSeconds
		}
	}
	g := int64(30)
	return &g
}

// environ is env as os/exec wants it, with PATH and HOME so the binary finds nothing of the user's.
func environ(env map[string]string) []string {
	out := []string{"PATH=/usr/bin:/bin", "HOME=/nonexistent"}
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	return out
}
