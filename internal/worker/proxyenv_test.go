package worker_test

import (
	"context"
	"strings"
	"testing"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/worker"
	"github.com/aetherium/aetherium/pkg/client"
)

// TestModelProxyEnv: an execution that asks for the credential proxy (AETHERIUM_MODEL_PROXY=1) runs with the
// settings ProxyEnv gives its VM, which are not stored with the execution; the request's own variables win; without
// the marker nothing is added; on a worker without a proxy such an execution fails, not run, with the reason.
func TestModelProxyEnv(t *testing.T) {
	var asked []worker.ProxyRequest
	r := newRigWith(t, func(c *worker.Config) {
		c.ProxyEnv = func(_ context.Context, vm *model.VM, req worker.ProxyRequest) (map[string]string, error) {
			asked = append(asked, req)
			return map[string]string{"ANTHROPIC_AUTH_TOKEN": "tok-" + vm.ID, "ANTHROPIC_BASE_URL": "http://gw/anthropic"}, nil
		}
	})
	vm := r.createVM("proxyenv")
	ctx := context.Background()
	run := func(env map[string]string) *model.Execution {
		t.Helper()
		e, tk, err := r.svc.Execute(ctx, r.owner, vm.ID, client.ExecuteRequest{Command: "sh", Env: env, Args: []string{"-c",
			`echo "token=$ANTHROPIC_AUTH_TOKEN url=$ANTHROPIC_BASE_URL marker=${AETHERIUM_MODEL_PROXY-unset}${AETHERIUM_GIT_REPOS-}${AETHERIUM_GIT_PUSH-}"`}})
		if err != nil {
			t.Fatal(err)
		}
		r.wait(tk.ID)
		if e, err = r.st.Executions().Get(ctx, e.ID); err != nil {
			t.Fatal(err)
		}
		return e
	}
	e := run(map[string]string{worker.ModelProxyEnv: "1"})
	if want := "token=tok-" + vm.ID + " url=http://gw/anthropic marker=unset\n"; e.Stdout != want {
		t.Fatalf("stdout %q, want %q (error %q)", e.Stdout, want, e.Error)
	}
	for k, v := range e.Env {
		if strings.Contains(v, "tok-") || k == "ANTHROPIC_AUTH_TOKEN" {
			t.Fatalf("the proxy token was stored with the execution: %v", e.Env)
		}
	}
	e = run(map[string]string{worker.ModelProxyEnv: "1", "ANTHROPIC_BASE_URL": "http://mine"})
	if want := "token=tok-" + vm.ID + " url=http://mine marker=unset\n"; e.Stdout != want {
		t.Fatalf("stdout %q, want %q", e.Stdout, want)
	}
	if e = run(nil); e.Stdout != "token= url= marker=unset\n" {
		t.Fatalf("without the marker: stdout %q", e.Stdout)
	}
	e = run(map[string]string{worker.ModelProxyEnv: "1", worker.GitReposEnv: "github.com/org/a, github.com/org/b",
		worker.GitPushEnv: "1"})
	if want := "token=tok-" + vm.ID + " url=http://gw/anthropic marker=unset\n"; e.Stdout != want {
		t.Fatalf("with git: stdout %q, want %q (error %q)", e.Stdout, want, e.Error)
	}
	if len(asked) != 3 || asked[0].RunID == "" || asked[0].GitRepos != nil || asked[0].GitPush ||
		asked[2].RunID != e.ID || !asked[2].GitPush || strings.Join(asked[2].GitRepos, " ") != "github.com/org/a github.com/org/b" {
		t.Fatalf("ProxyEnv asked %+v", asked)
	}
	if e = run(map[string]string{worker.ModelProxyEnv: "1", worker.GitReposEnv: "org/repo"}); e.Status != model.ExecutionFailed ||
		!strings.Contains(e.Error, "not a repository") || e.StartedAt != nil {
		t.Fatalf("a bad repository: %s %q", e.Status, e.Error)
	}

	plain := newRig(t)
	vm2 := plain.createVM("noproxy")
	e2, tk, err := plain.svc.Execute(ctx, plain.owner, vm2.ID, client.ExecuteRequest{Command: "true",
		Env: map[string]string{worker.ModelProxyEnv: "1"}})
	if err != nil {
		t.Fatal(err)
	}
	plain.wait(tk.ID)
	if e2, err = plain.st.Executions().Get(ctx, e2.ID); err != nil {
		t.Fatal(err)
	}
	if e2.Status != model.ExecutionFailed || !strings.Contains(e2.Error, "no credential proxy") || e2.StartedAt != nil {
		t.Fatalf("on a worker without a proxy: %s %q started=%v", e2.Status, e2.Error, e2.StartedAt)
	}
}
