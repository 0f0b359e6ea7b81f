package worker_test

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/secrets"
	"github.com/aetherium/aetherium/internal/task"
	"github.com/aetherium/aetherium/internal/worker"
	"github.com/aetherium/aetherium/pkg/client"
)

// newSecretsRig is a rig whose worker and service share a secrets manager under a new key.
func newSecretsRig(t *testing.T, workerHasKey bool) (*rig, *secrets.Manager) {
	t.Helper()
	key, err := secrets.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	kr, err := secrets.NewKeyring(key)
	if err != nil {
		t.Fatal(err)
	}
	var m *secrets.Manager
	r := newRigWith(t, func(c *worker.Config) {
		m = secrets.NewManager(c.Store.Secrets(), kr, nil)
		if workerHasKey {
			c.Secrets = m
		}
	})
	r.svc = task.New(r.st, r.q, r.bus, task.DefaultLimits(), task.WithSecrets(m))
	return r, m
}

// leaks returns the forms of value that must not appear in output: the value, its base64 and the base64 of it with
// a newline (echo | base64), and the longest runs of those encodings that depend on the value alone.
func leaks(value string) []string {
	out := []string{value, base64.StdEncoding.EncodeToString([]byte(value)),
		base64.StdEncoding.EncodeToString([]byte(value + "\n"))}
	whole := base64.StdEncoding.EncodeToString([]byte(value))
	return append(out, whole[:len(value)/3*4-4]) // any 3-aligned prefix of the encoding, minus a group
}

// TestSecretEnvIsInjectedAndScrubbed runs `echo $SECRET` and `echo $SECRET | base64` (and more) in a real
// container with secret_env: the command gets the value, the stored and the streamed output show the mask, and
// the value is in no row.
func TestSecretEnvIsInjectedAndScrubbed(t *testing.T) {
	r, m := newSecretsRig(t, true)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	value := "s3cr3t-" + uuid.NewString()
	if _, _, err := m.Put(ctx, r.owner, "GH", value); err != nil {
		t.Fatal(err)
	}
	other := "another-secret-" + uuid.NewString()[:8] // not injected, scrubbed all the same
	if _, _, err := m.Put(ctx, r.owner, "OTHER", other); err != nil {
		t.Fatal(err)
	}
	vm := r.createVM("secrets")
	script := strings.Join([]string{
		`echo "token=$GH_TOKEN"`,
		`echo $GH_TOKEN | base64`,
		`printf %s "$GH_TOKEN" | base64 -w0; echo`,
		`printf %s "$GH_TOKEN" | sha256sum`,
		`echo "len=${#GH_TOKEN}"`,
		`echo "api=$API_KEY"`,
		`printf %s "$API_KEY" | sha256sum`, // the command got the real value, not the stored mask
		`echo "` + other + `"`,
		// One character at a time: the value straddles many writes, and live chunks.
		`s="$GH_TOKEN"; while [ -n "$s" ]; do printf %s "${s%"${s#?}"}"; s="${s#?}"; sleep 0.01; done; echo`,
		`echo "err=$GH_TOKEN" >&2`,
	}, "\n")
	plainCred := "plain-credential-" + uuid.NewString()[:8]
	e, tk, err := r.svc.Execute(ctx, r.owner, vm.ID, client.ExecuteRequest{Command: "sh", Args: []string{"-c", script},
		Env: map[string]string{"API_KEY": plainCred}, SecretEnv: map[string]string{"GH_TOKEN": "GH"}})
	if err != nil {
		t.Fatal(err)
	}
	items := r.follow(ctx, e.ID)
	if tk = r.wait(tk.ID); tk.Status != model.TaskCompleted {
		t.Fatalf("task %s: %s", tk.Status, tk.Error)
	}
	var streamed [2]strings.Builder
	for _, g := range <-items {
		if g.item.Kind == task.ItemOutput {
			streamed[map[string]int{task.StreamStdout: 0, task.StreamStderr: 1}[g.item.Stream]].Write(g.item.Data)
		}
	}
	row, err := r.st.Executions().Get(ctx, e.ID)
	if err != nil {
		t.Fatal(err)
	}
	if row.ExitCode == nil || *row.ExitCode != 0 {
		t.Fatalf("execution: %+v", row)
	}
	sum := sha256.Sum256([]byte(value))
	credSum := sha256.Sum256([]byte(plainCred))
	for what, out := range map[string]string{"stored stdout": row.Stdout, "streamed stdout": streamed[0].String()} {
		for _, want := range []string{"token=***\n", hex.EncodeToString(sum[:]), hex.EncodeToString(credSum[:]), "len=" + itoa(len(value)), "api=***\n", "\n***\n"} {
			if !strings.Contains(out, want) {
				t.Errorf("%s lacks %q:\n%s", what, want, out)
			}
		}
		for _, leak := range append(leaks(value), leaks(other)[0], plainCred) {
			if strings.Contains(out, leak) {
				t.Errorf("%s shows %q:\n%s", what, leak, out)
			}
		}
		if lines := strings.Split(out, "\n"); len(lines) < 3 || !strings.Contains(lines[1], "***") || !strings.Contains(lines[2], "***") {
			t.Errorf("%s: the base64 lines are not masked: %q", what, lines)
		}
	}
	t.Logf("stdout:\n%s", row.Stdout)
	if row.Stdout != streamed[0].String() {
		t.Errorf("stored and streamed stdout differ:\n%q\n%q", row.Stdout, streamed[0].String())
	}
	for what, out := range map[string]string{"stored stderr": row.Stderr, "streamed stderr": streamed[1].String()} {
		if out != "err=***\n" {
			t.Errorf("%s = %q", what, out)
		}
	}
	// No row holds the value: the execution keeps the name only, the task its ids.
	rowJSON, _ := json.Marshal(row)
	tkJSON, _ := json.Marshal(tk)
	for _, b := range [][]byte{rowJSON, tkJSON} {
		if strings.Contains(string(b), value) {
			t.Fatalf("a stored row holds the value: %s", b)
		}
	}
	if row.SecretEnv["GH_TOKEN"] != "GH" {
		t.Fatalf("secret_env as stored: %v", row.SecretEnv)
	}
	// Once the command started, the row keeps credential-like env values masked.
	if row.Env["API_KEY"] != secrets.Mask || strings.Contains(string(rowJSON), plainCred) {
		t.Fatalf("env as stored after the run: %v", row.Env)
	}
	sec, err := r.st.Secrets().Get(ctx, r.owner, "GH")
	if err != nil || sec.LastUsedAt == nil {
		t.Fatalf("last use not recorded: %+v, %v", sec, err)
	}
	if o, _ := r.st.Secrets().Get(ctx, r.owner, "OTHER"); o.LastUsedAt != nil {
		t.Fatal("a secret that was only scrubbed is marked used")
	}
}

// TestSecretEnvNeedsTheWorkersKey: a worker without the secrets key fails such an execution without running it,
// and says why.
func TestSecretEnvNeedsTheWorkersKey(t *testing.T) {
	r, m := newSecretsRig(t, false)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, _, err := m.Put(ctx, r.owner, "GH", "s3cr3t-value"); err != nil {
		t.Fatal(err)
	}
	vm := r.createVM("nokey")
	e, tk, err := r.svc.Execute(ctx, r.owner, vm.ID, client.ExecuteRequest{Command: "sh", Args: []string{"-c", "echo ran > /tmp/ran"},
		SecretEnv: map[string]string{"T": "GH"}})
	if err != nil {
		t.Fatal(err)
	}
	r.wait(tk.ID)
	row, err := r.st.Executions().Get(ctx, e.ID)
	if err != nil {
		t.Fatal(err)
	}
	if row.Status != model.ExecutionFailed || row.StartedAt != nil || !strings.Contains(row.Error, "secrets_key") {
		t.Fatalf("execution: status %s, started %v, error %q", row.Status, row.StartedAt, row.Error)
	}
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

// TestJobCommandsGetTheirSecrets: each job command gets its own secret_env, its output is scrubbed, and the job's
// stored commands hold the names only.
func TestJobCommandsGetTheirSecrets(t *testing.T) {
	r, m := newSecretsRig(t, true)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	value := "job-s3cr3t-" + uuid.NewString()[:12]
	if _, _, err := m.Put(ctx, r.owner, "DEPLOY", value); err != nil {
		t.Fatal(err)
	}
	job, tk, err := r.svc.CreateJob(ctx, r.owner, client.CreateJobRequest{
		VM: &client.CreateVMRequest{Name: "jobsecrets"},
		Commands: []client.JobCommand{
			{Command: "sh", Args: []string{"-c", `echo "a=$D $API_TOKEN"`}, SecretEnv: map[string]string{"D": "DEPLOY"},
				Env: map[string]string{"API_TOKEN": "plain-job-credential"}},
			{Command: "sh", Args: []string{"-c", `echo "b=${D:-unset}"; echo $E | base64`}, SecretEnv: map[string]string{"E": "DEPLOY"}},
		},
		DeleteVMAfter: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	if tk = r.wait(tk.ID); tk.Status != model.TaskCompleted {
		t.Fatalf("job task: %s %s", tk.Status, tk.Error)
	}
	job, es, err := r.svc.GetJob(ctx, r.owner, job.ID)
	if err != nil {
		t.Fatal(err)
	}
	if job.Status != model.JobCompleted || len(es) != 2 {
		t.Fatalf("job %s (%s), %d executions", job.Status, job.Error, len(es))
	}
	if es[0].Stdout != "a=*** ***\n" || es[1].Stdout != "b=unset\n***\n" {
		t.Fatalf("outputs %q, %q", es[0].Stdout, es[1].Stdout)
	}
	b, _ := json.Marshal(job)
	if strings.Contains(string(b), value) || strings.Contains(string(b), "plain-job-credential") ||
		job.Commands[1].SecretEnv["E"] != "DEPLOY" || job.Commands[0].Env["API_TOKEN"] != secrets.Mask {
		t.Fatalf("stored job: %s", b)
	}
}
