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
	log *slog.Logger) (*credProxy, error) {
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
	// Usage is logged per response ("model usage"); a store-backed UsageSink comes with runs.
	p, err := credproxy.New(credproxy.Config{Key: key, VMs: credproxy.StoreVMs(st.VMs(), cfg.WorkerID),
		Secrets: secrets, AnthropicUpstream: cfg.ModelUpstreamURL, OpenAIUpstream: cfg.OpenAIUpstreamURL,
		Logger: log})
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
	tok, err := c.proxy.Token(credproxy.Grant{VMID: vm.ID, RunID: req.RunID, GitRepos: req.GitRepos, GitPush: req.GitPush})
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

// backendNetwork is the network manager of a microVM backend, nil for one without a network. QEMU and
// Firecracker report VM events, so theirs is wrapped as withNetworkEvents.
func backendNetwork(b vmBackend) *network.Manager {
	switch w := b.(type) {
	case *withNetwork:
		return w.net
	case withNetworkEvents:
		return w.net
	}
	return nil
}

// serve runs the proxy until its server is shut down.
func (c *credProxy) serve(srv *http.Server, errs chan<- error) {
	go func() { errs <- fmt.Errorf("credential proxy: %w", srv.Serve(c.ln)) }()
}
