package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"

	"github.com/aetherium/aetherium/internal/config"
	"github.com/aetherium/aetherium/internal/credproxy"
	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/network"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/worker"
)

// credProxy is a worker's credential proxy, serving on its bridge's gateway address.
type credProxy struct {
	proxy *credproxy.Proxy
	ln    net.Listener
	base  string // http://<gateway>:<port>
}

// errNoSecretStore is what the proxy gets for every secret on a worker without the secrets key: its answer says it
// cannot read the secret (502) and the log says why.
var errNoSecretStore = errors.New("this worker has no secrets key (secrets_key or secrets_key_file), so its credential proxy cannot read secrets")

type noSecrets struct{}

func (noSecrets) Secret(context.Context, string, string) (string, error) { return "", errNoSecretStore }

// openCredProxy opens the credential proxy of a worker whose VMs have a network (net), listening on the gateway
// address; nil when the worker has none (no network, or credproxy_port 0). secrets is nil on a worker without the
// secrets key: every request that needs a secret then gets a clear 502.
func openCredProxy(cfg config.Config, st store.Store, net_ *network.Manager, secrets credproxy.SecretSource,
	gitHosts map[string]credproxy.GitHost, log *slog.Logger) (*credProxy, error) {
	if net_ == nil || cfg.CredProxyPort == 0 {
		return nil, nil
	}
	key, err := credproxy.LoadKey(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	if secrets == nil {
		secrets = noSecrets{}
	}
	// Usage is logged per response ("model usage") and added to the run it is for (runUsage).
	p, err := credproxy.New(credproxy.Config{Key: key, VMs: credproxy.StoreVMs(st.VMs(), cfg.WorkerID),
		Secrets: secrets, AnthropicUpstream: cfg.ModelUpstreamURL, OpenAIUpstream: cfg.OpenAIUpstreamURL,
		GitHosts: gitHosts, Usage: runUsage{runs: st.Runs(), log: log}, Logger: log})
	if err != nil {
		return nil, err
	}
	ln, err := credproxy.Listen(net_.Gateway(), cfg.CredProxyPort)
	if err != nil {
		return nil, fmt.Errorf("%w (credproxy_port: 0 turns the proxy off)", err)
	}
	base := "http://" + net.JoinHostPort(net_.Gateway().String(), strconv.Itoa(cfg.CredProxyPort))
	return &credProxy{proxy: p, ln: ln, base: base}, nil
}

// env is the worker's ProxyEnv: the settings and token (for vm and req) an execution gets when it asks for them.
func (c *credProxy) env(_ context.Context, vm *model.VM, req worker.ProxyRequest) (map[string]string, error) {
	tok, err := c.proxy.Token(credproxy.Grant{VMID: vm.ID, RunID: req.RunID, GitRepos: req.GitRepos, GitPush: req.GitPush,
		GitSecret: req.GitSecret, PushRefs: req.PushRefs})
	if err != nil {
		return nil, err
	}
	return credproxy.GuestEnv(c.base, tok), nil
}

// proxyEnv is c.env, or nil for a worker without a proxy.
func (c *credProxy) proxyEnv() worker.ProxyEnvFunc {
	if c == nil {
		return nil
	}
	return c.env
}

// backendNetwork is the network manager of a microVM backend, nil for one without a network.
func backendNetwork(b vmBackend) *network.Manager {
	switch w := b.(type) {
	case *withNetwork:
		return w.net
	case withNetworkEvents: // the same, for a backend that reports VM events (qemu, firecracker)
		return w.net
	}
	return nil
}

// serve runs the proxy until its server is shut down.
func (c *credProxy) serve(srv *http.Server, errs chan<- error) {
	go func() { errs <- fmt.Errorf("credential proxy: %w", srv.Serve(c.ln)) }()
}

// gitHostsOf is the credential proxy's git hosts: github.com and gitlab.com, and those of git_hosts.
func gitHostsOf(cfg config.Config) (map[string]credproxy.GitHost, error) {
	extra, err := cfg.GitHostList()
	if err != nil {
		return nil, fmt.Errorf("git_hosts: %w", err)
	}
	hosts := credproxy.DefaultGitHosts()
	for _, h := range extra {
		hosts[h.Name] = credproxy.GitHost{URL: h.URL, Secret: h.Secret, Username: h.Username}
	}
	return hosts, nil
}

// gitHostSecrets maps each git host to the secret it uses by default, for the task layer's checks.
func gitHostSecrets(hosts map[string]credproxy.GitHost) map[string]string {
	out := make(map[string]string, len(hosts))
	for name, h := range hosts {
		out[name] = h.Secret
	}
	return out
}

// runUsage adds the usage of each model response to the run its token was issued for (a plain execution's
// token names the execution, which is no run: its usage is only logged).
type runUsage struct {
	runs store.RunStore
	log  *slog.Logger
}

func (u runUsage) Record(ctx context.Context, x credproxy.Usage) {
	if x.RunID == "" {
		return
	}
	_, err := u.runs.Update(context.WithoutCancel(ctx), x.RunID, func(r *model.Run) error {
		if r.VMID != x.VMID || r.OwnerID != x.OwnerID {
			return errNotThisRun // a token of another VM cannot bill this run
		}
		r.Usage.Requests++
		r.Usage.InputTokens += x.InputTokens
		r.Usage.OutputTokens += x.OutputTokens
		r.Usage.CacheCreationInputTokens += x.CacheCreationInputTokens
		r.Usage.CacheReadInputTokens += x.CacheReadInputTokens
		if cost, ok := credproxy.CostUSD(x); ok {
			total := cost
			if r.Usage.CostUSD != nil {
				total += *r.Usage.CostUSD
			}
			r.Usage.CostUSD = &total
		}
		return nil
	})
	if err != nil && !errors.Is(err, model.ErrNotFound) && !errors.Is(err, errNotThisRun) {
		u.log.Warn("could not add model usage to its run", "run_id", x.RunID, "err", err)
	}
}

var errNotThisRun = errors.New("usage is not of this run")
