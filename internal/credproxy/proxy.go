package credproxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/aetherium/aetherium/internal/model"
)

// Defaults of Config.
const (
	DefaultPort              = 8091
	DefaultAnthropicUpstream = "https://api.anthropic.com"
	DefaultOpenAIUpstream    = "https://api.openai.com"
	// DefaultMaxModelRequest bounds a model request's body (prompts with images and long contexts are large).
	DefaultMaxModelRequest = 64 << 20
	// DefaultMaxGitPush bounds what one push may send, DefaultMaxGitFetch what one fetch may receive.
	DefaultMaxGitPush  = 2 << 30
	DefaultMaxGitFetch = 8 << 30
)

// Secret names the proxy asks SecretSource for.
const (
	AnthropicKeySecret = "ANTHROPIC_API_KEY"
	OpenAIKeySecret    = "OPENAI_API_KEY"
)

// ErrVMGone is what VMSource returns for a VM that is not running on this worker (deleted, failed, stopped,
// unknown, or hosted elsewhere): its tokens are dead.
var ErrVMGone = errors.New("vm is not running on this worker")

// VM is what the proxy needs to know of a VM to authenticate it.
type VM struct {
	ID      string
	OwnerID string
	IP      netip.Addr // the address leased to it: requests must come from there
}

// VMSource looks a VM up for each request. It returns an error wrapping ErrVMGone when the VM's tokens must no
// longer work.
type VMSource interface {
	ProxyVM(ctx context.Context, id string) (VM, error)
}

// ErrSecretNotFound may be returned (wrapped) by a SecretSource for a secret the owner does not have; errors
// wrapping model.ErrNotFound mean the same.
var ErrSecretNotFound = errors.New("secret not found")

// SecretSource gives the proxy an owner's secret in the clear, at the moment it is needed. It is never cached.
type SecretSource interface {
	Secret(ctx context.Context, ownerID, name string) (string, error)
}

// GitHost is a git server the proxy forwards to.
type GitHost struct {
	// URL is the server's base URL (default "https://" + the host's name). Repositories are paths under it.
	URL string
	// Secret names the owner's secret holding the token (e.g. GITHUB_TOKEN), sent as HTTP basic auth.
	Secret string
	// Username goes with it ("x-access-token" for GitHub, "oauth2" for GitLab).
	Username string
}

// DefaultGitHosts are the git hosts known without configuration.
func DefaultGitHosts() map[string]GitHost {
	return map[string]GitHost{
		"github.com": {Secret: "GITHUB_TOKEN", Username: "x-access-token"},
		"gitlab.com": {Secret: "GITLAB_TOKEN", Username: "oauth2"},
	}
}

// Config configures a Proxy. Key, VMs and Secrets are required.
type Config struct {
	Key     []byte // LoadKey
	VMs     VMSource
	Secrets SecretSource
	Usage   UsageSink // nil: usage is only logged
	// AnthropicUpstream (default DefaultAnthropicUpstream) and OpenAIUpstream (default DefaultOpenAIUpstream) are
	// base URLs; the guest's path after /anthropic or /openai is appended to them.
	AnthropicUpstream string
	OpenAIUpstream    string
	// GitHosts maps the host name in /git/<host>/... to its server. Nil: DefaultGitHosts.
	GitHosts        map[string]GitHost
	MaxModelRequest int64
	MaxGitPush      int64
	MaxGitFetch     int64
	// Transport carries requests upstream (default: a clone of http.DefaultTransport without proxy settings from
	// the environment, so the owner's keys go nowhere but the upstream).
	Transport http.RoundTripper
	Logger    *slog.Logger
}

// Proxy is the credential proxy's HTTP handler.
type Proxy struct {
	cfg       Config
	sign      signer
	log       *slog.Logger
	anthropic *url.URL
	openai    *url.URL
	git       map[string]gitHost
	rt        http.RoundTripper
}

type gitHost struct {
	GitHost
	base *url.URL
}

// New checks cfg and returns a Proxy.
func New(cfg Config) (*Proxy, error) {
	if len(cfg.Key) < KeySize {
		return nil, fmt.Errorf("credential proxy: a key of %d bytes is required", KeySize)
	}
	if cfg.VMs == nil || cfg.Secrets == nil {
		return nil, errors.New("credential proxy: VMs and Secrets are required")
	}
	p := &Proxy{cfg: cfg, sign: signer{key: cfg.Key}, log: cfg.Logger, git: map[string]gitHost{}, rt: cfg.Transport}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	p.log = p.log.With("component", "credproxy")
	var err error
	if p.anthropic, err = upstreamURL("model_upstream_url", cfg.AnthropicUpstream, DefaultAnthropicUpstream); err != nil {
		return nil, err
	}
	if p.openai, err = upstreamURL("openai_upstream_url", cfg.OpenAIUpstream, DefaultOpenAIUpstream); err != nil {
		return nil, err
	}
	hosts := cfg.GitHosts
	if hosts == nil {
		hosts = DefaultGitHosts()
	}
	for name, h := range hosts {
		if name != strings.ToLower(name) || strings.ContainsAny(name, "/@:") || name == "" {
			return nil, fmt.Errorf("credential proxy: git host %q: want a lower-case host name", name)
		}
		if h.Secret == "" {
			return nil, fmt.Errorf("credential proxy: git host %s: no secret name", name)
		}
		u, err := upstreamURL("git host "+name, h.URL, "https://"+name)
		if err != nil {
			return nil, err
		}
		p.git[name] = gitHost{GitHost: h, base: u}
	}
	if cfg.MaxModelRequest <= 0 {
		p.cfg.MaxModelRequest = DefaultMaxModelRequest
	}
	if cfg.MaxGitPush <= 0 {
		p.cfg.MaxGitPush = DefaultMaxGitPush
	}
	if cfg.MaxGitFetch <= 0 {
		p.cfg.MaxGitFetch = DefaultMaxGitFetch
	}
	if p.rt == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.Proxy = nil
		t.ResponseHeaderTimeout = 10 * time.Minute // a model may think long before its first byte
		p.rt = t
	}
	return p, nil
}

func upstreamURL(what, s, def string) (*url.URL, error) {
	if s == "" {
		s = def
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil || u.RawQuery != "" {
		return nil, fmt.Errorf("credential proxy: %s: want an http(s) URL without credentials or query (got %q)", what, s)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	u.RawPath = ""
	return u, nil
}

// Token returns the token of grant g (its VM is g.VMID). The guest gets it in its environment.
func (p *Proxy) Token(g Grant) (string, error) { return p.sign.issue(g) }

// GuestEnv is the environment that points a guest's tools at the proxy at baseURL (http://<gateway>:<port>) with
// token: claude-code and the Anthropic SDKs (ANTHROPIC_BASE_URL, ANTHROPIC_AUTH_TOKEN), OpenAI SDKs
// (OPENAI_BASE_URL, OPENAI_API_KEY), and git, which sends the token to the proxy's /git/ URLs only (an
// http.<url>.extraHeader through GIT_CONFIG_COUNT: git reads it from the environment, nothing is written in the
// guest). AETHERIUM_GIT_PROXY is the prefix to clone through: $AETHERIUM_GIT_PROXY/github.com/org/repo.git.
func GuestEnv(baseURL, token string) map[string]string {
	baseURL = strings.TrimSuffix(baseURL, "/")
	return map[string]string{
		"ANTHROPIC_BASE_URL":   baseURL + "/anthropic",
		"ANTHROPIC_AUTH_TOKEN": token,
		"OPENAI_BASE_URL":      baseURL + "/openai/v1",
		"OPENAI_API_KEY":       token,
		"AETHERIUM_GIT_PROXY":  baseURL + "/git",
		"GIT_CONFIG_COUNT":     "1",
		"GIT_CONFIG_KEY_0":     "http." + baseURL + "/git/.extraHeader",
		"GIT_CONFIG_VALUE_0":   "Authorization: Bearer " + token,
	}
}

// caller is an authenticated request's VM and grant.
type caller struct {
	vm    VM
	grant Grant
}

func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c, status, msg := p.authenticate(r)
	if status != 0 {
		// A token used from another VM's address is worth a warning (a leaked token); the rest is the guest's
		// own business and would let it fill the log.
		level := slog.LevelDebug
		if status == http.StatusForbidden {
			level = slog.LevelWarn
		}
		p.log.Log(r.Context(), level, "refused", "status", status, "remote", r.RemoteAddr, "path", r.URL.Path, "why", msg)
		if status == http.StatusUnauthorized {
			w.Header().Set("WWW-Authenticate", `Bearer realm="aetherium credential proxy"`)
		}
		writeError(w, status, "authentication_error", msg)
		return
	}
	path := r.URL.Path
	switch {
	case path == "/anthropic" || strings.HasPrefix(path, "/anthropic/"):
		p.serveModel(w, r, c, "anthropic", strings.TrimPrefix(path, "/anthropic"))
	case path == "/openai" || strings.HasPrefix(path, "/openai/"):
		p.serveModel(w, r, c, "openai", strings.TrimPrefix(path, "/openai"))
	case strings.HasPrefix(path, "/git/"):
		p.serveGit(w, r, c, strings.TrimPrefix(path, "/git/"))
	default:
		writeError(w, http.StatusNotFound, "not_found_error", "the credential proxy serves /anthropic/, /openai/ and /git/ only")
	}
}

// token finds the proxy token in a request: a bearer token, x-api-key (the Anthropic SDKs' header), or the
// password of basic auth (a git URL with credentials).
func token(r *http.Request) string {
	if a := r.Header.Get("Authorization"); a != "" {
		if t, ok := strings.CutPrefix(a, "Bearer "); ok {
			return strings.TrimSpace(t)
		}
		if _, pw, ok := r.BasicAuth(); ok {
			return pw
		}
	}
	return strings.TrimSpace(r.Header.Get("X-Api-Key"))
}

// authenticate checks the token (401 if it is not one, or its VM is gone) and that the request comes from the
// token's VM (403 otherwise). status 0 is success.
func (p *Proxy) authenticate(r *http.Request) (caller, int, string) {
	tok := token(r)
	if tok == "" {
		return caller{}, http.StatusUnauthorized, "no proxy token: send the VM's ANTHROPIC_AUTH_TOKEN as a bearer token"
	}
	g, err := p.sign.verify(tok)
	if err != nil {
		return caller{}, http.StatusUnauthorized, "invalid proxy token"
	}
	vm, err := p.cfg.VMs.ProxyVM(r.Context(), g.VMID)
	if errors.Is(err, ErrVMGone) || errors.Is(err, model.ErrNotFound) {
		return caller{}, http.StatusUnauthorized, "proxy token revoked: its vm is no longer running on this worker"
	}
	if err != nil {
		p.log.Error("vm lookup", "vm_id", g.VMID, "err", err)
		return caller{}, http.StatusServiceUnavailable, "cannot check the token now (vm lookup failed); retry"
	}
	from, err := remoteIP(r)
	if err != nil || !vm.IP.IsValid() || from != vm.IP {
		return caller{}, http.StatusForbidden, "this token belongs to another vm: requests must come from its own address"
	}
	return caller{vm: vm, grant: g}, 0, ""
}

func remoteIP(r *http.Request) (netip.Addr, error) {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}, err
	}
	return ap.Addr().Unmap(), nil
}

// writeError answers in the shape of Anthropic's errors, which OpenAI clients read as well (error.message).
func writeError(w http.ResponseWriter, status int, typ, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Aetherium-Proxy-Error", "1")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"type": "error",
		"error": map[string]string{"type": typ, "message": "aetherium credential proxy: " + msg}})
}

// secret fetches an owner's secret; missing reports whether the owner has none of that name.
func (p *Proxy) secret(ctx context.Context, owner, name string) (val string, missing bool, err error) {
	v, err := p.cfg.Secrets.Secret(ctx, owner, name)
	if errors.Is(err, ErrSecretNotFound) || errors.Is(err, model.ErrNotFound) || (err == nil && v == "") {
		return "", true, nil
	}
	return v, false, err
}

// missingSecret answers a request that needs a secret the owner does not have.
func missingSecret(w http.ResponseWriter, name string) {
	writeError(w, http.StatusBadGateway, "missing_secret",
		fmt.Sprintf("owner has no %s secret: aetherium secret set %s", name, name))
}

// guestOnlyHeaders are removed from what goes upstream, besides the hop-by-hop headers ReverseProxy removes
// itself: the guest's credentials (the proxy token, or a key of its own), cookies, and forwarding headers.
var guestOnlyHeaders = []string{"Authorization", "X-Api-Key", "Cookie", "Proxy-Authorization", "Forwarded",
	"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "X-Real-Ip"}

// modelEndpoints are the requests the proxy forwards, as "METHOD /path" ("/*" matches one more segment): what
// agents need to talk to a model, and nothing that reads or changes the owner's account (files, batches, admin
// APIs, stored responses), which the owner's key would otherwise open to the guest.
var modelEndpoints = map[string][]string{
	"anthropic": {"POST /v1/messages", "POST /v1/messages/count_tokens", "GET /v1/models", "GET /v1/models/*"},
	"openai": {"POST /v1/chat/completions", "POST /v1/completions", "POST /v1/responses", "POST /v1/embeddings",
		"GET /v1/models", "GET /v1/models/*"},
}

func modelEndpoint(provider, method, path string) bool {
	for _, e := range modelEndpoints[provider] {
		m, p, _ := strings.Cut(e, " ")
		if m != method {
			continue
		}
		if prefix, ok := strings.CutSuffix(p, "/*"); ok {
			if seg, ok := strings.CutPrefix(path, prefix+"/"); ok && seg != "" && !strings.Contains(seg, "/") {
				return true
			}
		} else if path == p {
			return true
		}
	}
	return false
}

// serveModel forwards a model API request with the owner's key and records its usage.
func (p *Proxy) serveModel(w http.ResponseWriter, r *http.Request, c caller, provider, rest string) {
	base, secretName := p.anthropic, AnthropicKeySecret
	if provider == "openai" {
		base, secretName = p.openai, OpenAIKeySecret
	}
	if rest == "" {
		rest = "/"
	}
	if strings.Contains(rest, "..") || strings.Contains(rest, "//") {
		writeError(w, http.StatusBadRequest, "invalid_request_error", "bad path")
		return
	}
	if !modelEndpoint(provider, r.Method, rest) {
		writeError(w, http.StatusForbidden, "permission_error", fmt.Sprintf("%s %s is not forwarded: the proxy "+
			"serves the model endpoints only (%s)", r.Method, rest, strings.Join(modelEndpoints[provider], ", ")))
		return
	}
	key, missing, err := p.secret(r.Context(), c.vm.OwnerID, secretName)
	if missing {
		missingSecret(w, secretName)
		return
	}
	if err != nil {
		p.log.Error("read secret", "vm_id", c.vm.ID, "secret", secretName, "err", err)
		writeError(w, http.StatusBadGateway, "api_error", "cannot read the owner's "+secretName+" secret now")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, p.cfg.MaxModelRequest)
	start := time.Now()
	rp := &httputil.ReverseProxy{
		Transport:     p.rt,
		FlushInterval: -1, // every write goes to the guest at once: streams are never held back
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL = &url.URL{Scheme: base.Scheme, Host: base.Host, Path: base.Path + rest,
				RawQuery: pr.In.URL.RawQuery}
			pr.Out.Host = base.Host
			for _, h := range guestOnlyHeaders {
				pr.Out.Header.Del(h)
			}
			// Without the guest's Accept-Encoding the transport asks for gzip itself and hands over the body
			// decoded, so the usage reader always reads plain JSON and events.
			pr.Out.Header.Del("Accept-Encoding")
			if provider == "openai" {
				pr.Out.Header.Set("Authorization", "Bearer "+key)
			} else {
				pr.Out.Header.Set("X-Api-Key", key)
			}
		},
		ModifyResponse: func(resp *http.Response) error {
			resp.Header.Del("Set-Cookie")
			ct := resp.Header.Get("Content-Type")
			sse := strings.HasPrefix(ct, "text/event-stream")
			if !sse && !strings.HasPrefix(ct, "application/json") {
				return nil
			}
			status := resp.StatusCode
			resp.Body = &usageReader{rc: resp.Body, sse: sse, finish: func(u Usage, seen bool) {
				p.recordUsage(r.Context(), c, provider, rest, status, sse, start, u, seen)
			}}
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				writeError(w, http.StatusRequestEntityTooLarge, "request_too_large",
					fmt.Sprintf("request body over %d bytes", mbe.Limit))
				return
			}
			if r.Context().Err() != nil {
				return // the guest went away
			}
			p.log.Warn("model upstream failed", "vm_id", c.vm.ID, "upstream", base.Host, "err", err)
			writeError(w, http.StatusBadGateway, "api_error", "model upstream "+base.Host+" unreachable")
		},
		ErrorLog: slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
	}
	rp.ServeHTTP(w, r)
}

func (p *Proxy) recordUsage(ctx context.Context, c caller, provider, path string, status int, sse bool,
	start time.Time, u Usage, seen bool) {
	if !seen {
		return
	}
	u.VMID, u.RunID, u.OwnerID, u.Provider, u.Path, u.Status, u.Streamed, u.Time =
		c.vm.ID, c.grant.RunID, c.vm.OwnerID, provider, path, status, sse, start.UTC()
	p.log.Info("model usage", "vm_id", u.VMID, "run_id", u.RunID, "provider", provider, "model", u.Model,
		"input_tokens", u.InputTokens, "output_tokens", u.OutputTokens, "cache_read", u.CacheReadInputTokens,
		"cache_creation", u.CacheCreationInputTokens, "ms", time.Since(start).Milliseconds())
	if p.cfg.Usage != nil {
		p.cfg.Usage.Record(context.WithoutCancel(ctx), u)
	}
}

// Listen opens the proxy's listener on the gateway address.
func Listen(gateway netip.Addr, port int) (net.Listener, error) {
	addr := net.JoinHostPort(gateway.String(), fmt.Sprint(port))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("credential proxy: listen on %s: %w", addr, err)
	}
	return ln, nil
}
