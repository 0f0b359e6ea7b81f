package worker

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/aetherium/aetherium/internal/model"
)

// ModelProxyEnv is the environment variable an execution sets to "1" (or "true") to be given the credential
// proxy's settings: the worker removes it and adds what Config.ProxyEnv returns for the VM (ANTHROPIC_BASE_URL,
// ANTHROPIC_AUTH_TOKEN with the VM's proxy token, git's proxy header, see credproxy.GuestEnv). The token is
// added at the moment the command starts, never stored with the execution; variables the request sets itself
// win, and a request that configures git itself (GIT_CONFIG_COUNT) keeps its git configuration.
const ModelProxyEnv = "AETHERIUM_MODEL_PROXY"

// With ModelProxyEnv, GitReposEnv lists the repositories (comma-separated "github.com/org/repo") the execution's
// token may fetch through the proxy, and GitPushEnv=1 lets it push to them. The owner grants its own VM access
// with its own credential; the guest cannot widen the grant (the token is signed). Both are removed too.
const (
	GitReposEnv = "AETHERIUM_GIT_REPOS"
	GitPushEnv  = "AETHERIUM_GIT_PUSH"
)

// maxGitRepos bounds a grant (the token carries it).
const maxGitRepos = 64

// ProxyRequest is what an execution asks of the credential proxy: its usage is attributed to RunID (the
// execution's id for a plain execution), and its token allows GitRepos (and pushes to them with GitPush).
type ProxyRequest struct {
	RunID    string
	GitRepos []string
	GitPush  bool
	// GitSecret names the owner's secret for git requests instead of the host's own (a run's credentials_secret).
	GitSecret string
	// PushRefs, with GitPush, are the only refs a push may update (a run's own branch); empty: any.
	PushRefs []string
}

// ProxyEnvFunc returns the environment that points VM vm at the worker's credential proxy with a token for req.
type ProxyEnvFunc func(ctx context.Context, vm *model.VM, req ProxyRequest) (map[string]string, error)

var errNoProxy = errors.New("this worker has no credential proxy (it needs a microVM backend with network on and " +
	"credproxy_port set)")

// execEnv is the environment execution e of vm runs with: env (its own, with its secrets), with the proxy's settings
// when it asks for them.
func (w *Worker) execEnv(ctx context.Context, vm *model.VM, e *model.Execution, env map[string]string) (map[string]string, error) {
	v, ok := env[ModelProxyEnv]
	if !ok {
		return env, nil
	}
	out := make(map[string]string, len(env)+8)
	for k, x := range env {
		if k != ModelProxyEnv && k != GitReposEnv && k != GitPushEnv {
			out[k] = x
		}
	}
	on, err := flag(ModelProxyEnv, v)
	if err != nil {
		return nil, err
	}
	if !on {
		return out, nil
	}
	req := ProxyRequest{RunID: e.ID}
	for _, r := range strings.Split(env[GitReposEnv], ",") {
		if r = strings.TrimSpace(r); r == "" {
			continue
		}
		if strings.Count(strings.Trim(r, "/"), "/") < 2 || strings.ContainsAny(r, " @?#") {
			return nil, fmt.Errorf("%s: %q is not a repository like github.com/org/repo", GitReposEnv, r)
		}
		req.GitRepos = append(req.GitRepos, r)
	}
	if len(req.GitRepos) > maxGitRepos {
		return nil, fmt.Errorf("%s: more than %d repositories", GitReposEnv, maxGitRepos)
	}
	if req.GitPush, err = flag(GitPushEnv, env[GitPushEnv]); err != nil {
		return nil, err
	}
	if w.cfg.ProxyEnv == nil {
		return nil, errNoProxy
	}
	penv, err := w.cfg.ProxyEnv(ctx, vm, req)
	if err != nil {
		return nil, fmt.Errorf("credential proxy settings: %w", err)
	}
	_, ownGit := env["GIT_CONFIG_COUNT"]
	for k, x := range penv {
		if _, set := out[k]; set || (ownGit && strings.HasPrefix(k, "GIT_CONFIG_")) {
			continue
		}
		out[k] = x
	}
	return out, nil
}

// flag reads an on/off variable: 1 or true, 0, false or empty.
func flag(name, v string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "1", "true":
		return true, nil
	case "", "0", "false":
		return false, nil
	}
	return false, fmt.Errorf("%s=%q: want 1 or 0", name, v)
}
