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

// ProxyEnvFunc returns the environment that points VM vm at the worker's credential proxy.
type ProxyEnvFunc func(ctx context.Context, vm *model.VM) (map[string]string, error)

var errNoProxy = errors.New("this worker has no credential proxy (it needs a microVM backend with network on and " +
	"credproxy_port set)")

// execEnv is the environment an execution of vm runs with: env, with the proxy's settings when it asks for them.
func (w *Worker) execEnv(ctx context.Context, vm *model.VM, env map[string]string) (map[string]string, error) {
	v, ok := env[ModelProxyEnv]
	if !ok {
		return env, nil
	}
	out := make(map[string]string, len(env)+8)
	for k, x := range env {
		if k != ModelProxyEnv {
			out[k] = x
		}
	}
	switch strings.ToLower(v) {
	case "1", "true":
	case "", "0", "false":
		return out, nil
	default:
		return nil, fmt.Errorf("%s=%q: want 1 or 0", ModelProxyEnv, v)
	}
	if w.cfg.ProxyEnv == nil {
		return nil, errNoProxy
	}
	penv, err := w.cfg.ProxyEnv(ctx, vm)
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
