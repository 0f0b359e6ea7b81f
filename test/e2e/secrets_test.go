package e2e

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aetherium/aetherium/pkg/client"
)

// secretsRedisDB is the Redis database TestSecretsAcrossGatewayAndWorker owns.
const secretsRedisDB = "14"

func newSecretsKey(t *testing.T) string {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(b)
}

// TestSecretsAcrossGatewayAndWorker: on PostgreSQL and Redis, a gateway and a worker share AETHERIUM_SECRETS_KEY; a
// worker started with another key stops at once saying so; a secret injected with --secret-env reaches the
// command and shows as *** in the output streamed through Redis to the CLI and in the stored copy.
func TestSecretsAcrossGatewayAndWorker(t *testing.T) {
	requireDocker(t)
	dbURL := newPostgresDB(t)
	// A Redis database of its own (not e2eRedisDB): other e2e runs on this Redis may flush that one.
	flushed, err := exec.Command("redis-cli", "-n", secretsRedisDB, "flushdb").CombinedOutput()
	requireService(t, "Redis", err == nil, strings.TrimSpace(string(flushed)))
	redisURL := "redis://127.0.0.1:6379/" + secretsRedisDB
	secretsKey := newSecretsKey(t)
	common := []string{
		"AETHERIUM_DATABASE_URL=" + dbURL, "AETHERIUM_REDIS_URL=" + redisURL,
		"AETHERIUM_AGENT_BINARY=" + filepath.Join(binDir, "aetherium-agent"), "AETHERIUM_LOG_LEVEL=info",
		"AETHERIUM_CLUSTER_TOKEN=" + e2eClusterToken, "AETHERIUM_BACKEND=docker", "AETHERIUM_NETWORK=off",
	}
	key, errOut, code := runCLI(t, append(common, "AETHERIUM_DATA_DIR="+t.TempDir()), "apikey", "create", "--name", "e2e")
	if code != 0 {
		t.Fatalf("apikey create: %s", errOut)
	}
	key = strings.TrimSpace(key)
	addr := freePort(t)
	gw := start(t, "gateway", append(common, "AETHERIUM_DATA_DIR="+t.TempDir(), "AETHERIUM_LISTEN="+addr,
		"AETHERIUM_SECRETS_KEY="+secretsKey), "gateway")
	waitHTTP(t, addr, gw)

	const workerID = "e2e-secrets-w1"
	removeWorkerContainers(t, workerID)
	wrong := start(t, "worker (wrong key)", append(common, "AETHERIUM_DATA_DIR="+t.TempDir(), "AETHERIUM_WORKER_ID="+workerID,
		"AETHERIUM_SECRETS_KEY="+newSecretsKey(t)), "worker")
	select {
	case <-wrong.done:
	case <-time.After(60 * time.Second):
		t.Fatal("a worker with the wrong secrets key is still running after 60 s")
	}
	if out := wrong.out.String(); !strings.Contains(out, "wrong secrets key") || wrong.cmd.ProcessState.ExitCode() == 0 {
		t.Fatalf("worker with the wrong key: exit %d\n%s", wrong.cmd.ProcessState.ExitCode(), out)
	}
	start(t, "worker", append(common, "AETHERIUM_DATA_DIR="+t.TempDir(), "AETHERIUM_WORKER_ID="+workerID,
		"AETHERIUM_SECRETS_KEY="+secretsKey), "worker")

	c := newClient(t, addr, key)
	waitReady(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	value := "e2e-token-" + hex.EncodeToString([]byte(time.Now().String()))[:20]
	if _, created, err := c.PutSecret(ctx, "GH", value); err != nil || !created {
		t.Fatalf("put secret: %v, %v", created, err)
	}
	vm, err := c.CreateVMAndWait(ctx, client.CreateVMRequest{Name: "secrets"})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _, _ = c.DeleteVMAndWait(context.WithoutCancel(ctx), vm.ID) }()

	cliEnv := append(common, "AETHERIUM_SERVER=http://"+addr, "AETHERIUM_API_KEY="+key)
	out, errOut, code := runCLI(t, cliEnv, "vm", "exec", "--secret-env", "T=GH", "secrets", "--",
		"sh", "-c", `echo "t=$T"; echo $T | base64; printf %s "$T" | sha256sum`)
	sum := sha256.Sum256([]byte(value))
	if code != 0 || !strings.HasPrefix(out, "t=***\n***") || !strings.Contains(out, hex.EncodeToString(sum[:])) ||
		strings.Contains(out, value) {
		t.Fatalf("vm exec: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	list, err := c.ListExecutions(ctx, vm.ID, client.ListOptions{})
	if err != nil || len(list.Executions) != 1 {
		t.Fatalf("executions: %+v, %v", list, err)
	}
	if e := list.Executions[0]; e.Stdout != out || e.SecretEnv["T"] != "GH" || len(e.Env) != 0 {
		t.Fatalf("stored execution: stdout %q (streamed %q), secret_env %v, env %v", e.Stdout, out, e.SecretEnv, e.Env)
	}
	secrets, err := c.ListSecrets(ctx)
	if err != nil || len(secrets.Secrets) != 1 || secrets.Secrets[0].LastUsedAt == nil {
		t.Fatalf("secrets: %+v, %v", secrets, err)
	}
}
