// Package config loads Aetherium's server configuration from, in increasing order of precedence, built-in defaults,
// a YAML file, environment variables (AETHERIUM_*) and command-line flags, and validates it into typed values.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"gopkg.in/yaml.v3"
)

// Config is the validated configuration of every server role.
type Config struct {
	DataDir     string `yaml:"data_dir"`
	Listen      string `yaml:"listen"`
	DatabaseURL string `yaml:"database_url"`
	RedisURL    string `yaml:"redis_url"`
	AutoMigrate bool   `yaml:"auto_migrate"`
	LogLevel    string `yaml:"log_level"`
	LogFormat   string `yaml:"log_format"`
	WorkerID    string `yaml:"worker_id"`
	// InstallationID is not a setting: server.Run reads it from the data directory (server.InstallationID), and
	// backends label what they make with it.
	InstallationID string `yaml:"-"`
	Concurrency    int    `yaml:"concurrency"`
	Backend        string `yaml:"backend"`
	// Firecracker and QEMU backends.
	FirecrackerBin string `yaml:"firecracker_bin"`
	QEMUBin        string `yaml:"qemu_bin"`
	QEMUAccel      string `yaml:"qemu_accel"`
	// Host networking of microVMs.
	Network       string `yaml:"network"`
	NetworkCIDR   string `yaml:"network_cidr"`
	NetworkBridge string `yaml:"network_bridge"`
	// Tools installed into VMs.
	ToolCatalog string `yaml:"tool_catalog"`
	// DiskMB is the least size of a microVM\'s disk.
	DiskMB       int           `yaml:"vm_disk_mb"`
	NPMRegistry  string        `yaml:"npm_registry"`
	DebianMirror string        `yaml:"debian_mirror"`
	JailerBin    string        `yaml:"jailer_bin"`
	KernelPath   string        `yaml:"kernel_path"`
	RootfsPath   string        `yaml:"rootfs_path"`
	AgentBinary  string        `yaml:"agent_binary"`
	Busybox      string        `yaml:"busybox"`
	DockerImage  string        `yaml:"docker_image"`
	DockerNet    string        `yaml:"docker_network"`
	ReadyWait    time.Duration `yaml:"ready_timeout"`
	// VM lifetimes (docs/architecture.md, "VM lifetimes"): what a create request gets when it names no timeout,
	// and the most it may ask for; 0 is none.
	VMDefaultTimeout     time.Duration `yaml:"vm_default_timeout"`
	VMMaxTimeout         time.Duration `yaml:"vm_max_timeout"`
	VMDefaultIdleTimeout time.Duration `yaml:"vm_default_idle_timeout"`
	VMMaxIdleTimeout     time.Duration `yaml:"vm_max_idle_timeout"`
	MaxOutput            int           `yaml:"max_output_bytes"`
	MaxRetries           int           `yaml:"max_retries"`
	ShutdownFor          time.Duration `yaml:"shutdown_timeout"`
	// The event log of GET /api/v1/events keeps an owner's events for EventsRetention, and at most
	// EventsMaxPerOwner of them (internal/eventlog).
	EventsRetention   time.Duration `yaml:"events_retention"`
	EventsMaxPerOwner int           `yaml:"events_max_per_owner"`
	// The API's JWTs (POST /api/v1/auth/token): their iss and aud claims, and how often a new signing key is made.
	JWTIssuer      string        `yaml:"jwt_issuer"`
	JWTAudience    string        `yaml:"jwt_audience"`
	JWTRotateEvery time.Duration `yaml:"jwt_rotate_every"`
	// AuditRetention is how long the audit log of GET /api/v1/audit keeps entries.
	AuditRetention time.Duration `yaml:"audit_retention"`
	// ShutdownVMs stops this worker's VMs when it shuts down gracefully; by default they keep running and the next
	// worker process adopts them.
	ShutdownVMs bool `yaml:"shutdown_vms"`
	// WorkerAPIListen is the address of the worker's internal API (files, processes, shells of its VMs).
	WorkerAPIListen string `yaml:"worker_api_listen"`
	// WorkerAPIURL is the URL gateways use to reach it (default: derived from the listener).
	WorkerAPIURL string `yaml:"worker_api_url"`
	// ClusterToken authenticates gateways to workers; ClusterTokenFile, when set, is read into it.
	ClusterToken     string `yaml:"cluster_token"`
	ClusterTokenFile string `yaml:"cluster_token_file"`

	// Jailer settings (backend firecracker with jailer_bin): the unprivileged ids Firecracker runs as, where the
	// per-VM chroots are made, and the cgroups and network namespace it is put in.
	JailerUID           int    `yaml:"jailer_uid"`
	JailerGID           int    `yaml:"jailer_gid"`
	JailerChrootBase    string `yaml:"jailer_chroot_base"`
	JailerCgroupVersion int    `yaml:"jailer_cgroup_version"`
	JailerCgroups       string `yaml:"jailer_cgroups"`
	JailerNetNS         string `yaml:"jailer_netns"`

	// The worker's credential proxy (internal/credproxy): the port on the bridge's gateway address where guests
	// reach it (0: off), and the upstreams it forwards model API requests to.
	CredProxyPort     int    `yaml:"credproxy_port"`
	ModelUpstreamURL  string `yaml:"model_upstream_url"`
	OpenAIUpstreamURL string `yaml:"openai_upstream_url"`
	// GitHosts adds git servers the credential proxy forwards to, besides github.com and gitlab.com:
	// comma-separated "name=url|secret|username" entries (see GitHostList).
	GitHosts string `yaml:"git_hosts"`
	// AgentCatalog is a YAML file of agents added to the built-in catalog (internal/agents).
	AgentCatalog string `yaml:"agent_catalog"`

	// What every guest of a worker gets at start, for hosts behind a TLS-inspecting proxy: extra CA certificates
	// (comma-separated host paths of PEM files) installed into its trust store, and proxy settings in the
	// environment of its executions (internal/worker/guestenv.go).
	GuestCAFiles    string `yaml:"guest_ca_files"`
	GuestHTTPProxy  string `yaml:"guest_http_proxy"`
	GuestHTTPSProxy string `yaml:"guest_https_proxy"`
	GuestNoProxy    string `yaml:"guest_no_proxy"`

	// DebugListen, when set, serves net/http/pprof (goroutines, heap, CPU profiles) on this loopback address.
	DebugListen string `yaml:"debug_listen"`
	// MetricsListen is the address of GET /metrics (Prometheus text format); empty: off. MetricsToken, when set, is
	// the bearer token a scraper must send.
	MetricsListen string `yaml:"metrics_listen"`
	MetricsToken  string `yaml:"metrics_token"`
	// Slack and Discord (internal/integrations/slack, discord): secrets, never logged (Redacted).
	SlackSigningSecret string `yaml:"slack_signing_secret"`
	SlackBotToken      string `yaml:"slack_bot_token"`
	SlackAppToken      string `yaml:"slack_app_token"`
	SlackAPIURL        string `yaml:"slack_api_url"`
	DiscordPublicKey   string `yaml:"discord_public_key"`

	// LokiURL, when set, ships logs (the servers' own, task lifecycle, executions' output, VM consoles) to Loki or a
	// Loki-compatible store, besides stdout (internal/logs). LokiTenant is sent as X-Scope-OrgID; LokiUsername and
	// LokiPassword (or LokiPasswordFile) are basic auth, LokiBearerToken bearer auth. LokiFormat is the push
	// format: protobuf (Loki's native snappy-compressed protobuf, the default) or json.
	LokiURL          string `yaml:"loki_url"`
	LokiFormat       string `yaml:"loki_format"`
	LokiTenant       string `yaml:"loki_tenant"`
	LokiUsername     string `yaml:"loki_username"`
	LokiPassword     string `yaml:"loki_password"`
	LokiPasswordFile string `yaml:"loki_password_file"`
	LokiBearerToken  string `yaml:"loki_bearer_token"`

	// OTLPEndpoint, when set, exports traces (a span per API request, the task's wait in the queue, the worker's
	// steps and agent calls, as one trace) over OTLP/HTTP (internal/tracing). OTLPHeaders are sent with every export
	// ("k=v,k2=v2", e.g. a backend's API key: never logged); TraceSamplePercent is the share of new traces recorded.
	// CPUOvercommit and MemoryOvercommit turn placement by capacity on for this worker: it offers new VMs its CPUs
	// times CPUOvercommit as vCPUs and its memory (less 1 GiB for the host) times MemoryOvercommit, and at most
	// MaxVMs VMs (0: no count limit); gateways place creates by that free capacity and the worker refuses (and
	// re-places) what does not fit. 0: off, the worker takes every VM it is given.
	CPUOvercommit    float64 `yaml:"cpu_overcommit"`
	MemoryOvercommit float64 `yaml:"memory_overcommit"`
	MaxVMs           int     `yaml:"max_vms"`

	OTLPEndpoint       string `yaml:"otlp_endpoint"`
	OTLPHeaders        string `yaml:"otlp_headers"`
	TraceSamplePercent int    `yaml:"trace_sample_percent"`

	// SecretsKey seals owners' secrets (base64 of 32 bytes); SecretsKeyFile, when set, holds it instead. Neither:
	// serve uses <data_dir>/secrets-key, creating it on first start; gateway and worker use that file if it exists.
	SecretsKey     string `yaml:"secrets_key"`
	SecretsKeyFile string `yaml:"secrets_key_file"`
	// SecretsOldKeys are earlier keys (comma-separated base64) that still open secrets during a key rotation.
	SecretsOldKeys string `yaml:"secrets_old_keys"`

	// The GitHub App of the GitHub integration (internal/integrations/github): the webhook secret turns it on.
	GitHubWebhookSecret  string `yaml:"github_webhook_secret"`
	GitHubAppID          string `yaml:"github_app_id"`
	GitHubClientID       string `yaml:"github_client_id"`
	GitHubPrivateKeyFile string `yaml:"github_private_key_file"`
	GitHubAPIURL         string `yaml:"github_api_url"`

	// Rate limits of the REST API (internal/api/ratelimit.go): token buckets of Rate requests a second and Burst at
	// once, per API key on cheap routes (RateLimitKey*) and on expensive ones (VM create, runs, jobs, tools:
	// RateLimitExpensive*), and per source address for requests without a valid key (webhooks, failed
	// authentication: RateLimitAddr*). Shared through Redis when redis_url is set.
	RateLimit               bool    `yaml:"rate_limit"`
	RateLimitKeyRate        float64 `yaml:"rate_limit_key_rate"`
	RateLimitKeyBurst       int     `yaml:"rate_limit_key_burst"`
	RateLimitExpensiveRate  float64 `yaml:"rate_limit_expensive_rate"`
	RateLimitExpensiveBurst int     `yaml:"rate_limit_expensive_burst"`
	RateLimitAddrRate       float64 `yaml:"rate_limit_addr_rate"`
	RateLimitAddrBurst      int     `yaml:"rate_limit_addr_burst"`
}

// Default rate limits (see Config.RateLimit).
const (
	DefaultRateLimitKeyRate        = 50
	DefaultRateLimitKeyBurst       = 100
	DefaultRateLimitExpensiveRate  = 2
	DefaultRateLimitExpensiveBurst = 10
	DefaultRateLimitAddrRate       = 10
	DefaultRateLimitAddrBurst      = 50
)

// DefaultJailerID is the uid and gid the jailer runs Firecracker as unless configured: not root, and above the
// ranges distributions hand out to system and ordinary users (a dedicated, otherwise unused id is the point).
const DefaultJailerID = 10000

// MinClusterTokenLen is the shortest cluster token accepted.
const MinClusterTokenLen = 16

// MinMetricsTokenLen is the shortest metrics token accepted.
const MinMetricsTokenLen = 16

// DefaultMetricsListen is where /metrics is served unless configured: loopback, so never public by accident (9464 is
// also the default port of OpenTelemetry's Prometheus exporters).
const DefaultMetricsListen = "127.0.0.1:9464"

// DefaultLokiFormat is the push format to loki_url unless configured: Loki's native protobuf (internal/logs).
const DefaultLokiFormat = "protobuf"

// setting is one configuration key: its YAML key, environment variable, flag and how to parse it.
type setting struct {
	key, usage string
	set        func(c *Config, v string) error
}

func str(p func(*Config) *string) func(*Config, string) error {
	return func(c *Config, v string) error { *p(c) = v; return nil }
}

func integer(p func(*Config) *int) func(*Config, string) error {
	return func(c *Config, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil {
			return fmt.Errorf("not an integer: %q", v)
		}
		*p(c) = n
		return nil
	}
}

func boolean(p func(*Config) *bool) func(*Config, string) error {
	return func(c *Config, v string) error {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("not a boolean: %q", v)
		}
		*p(c) = b
		return nil
	}
}

func number(p func(*Config) *float64) func(*Config, string) error {
	return func(c *Config, v string) error {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return fmt.Errorf("not a number: %q", v)
		}
		*p(c) = f
		return nil
	}
}

func duration(p func(*Config) *time.Duration) func(*Config, string) error {
	return func(c *Config, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("not a duration (like 30s or 2m): %q", v)
		}
		*p(c) = d
		return nil
	}
}

var settings = []setting{
	{"data_dir", "directory for the embedded database, per-VM state and the bootstrap API key", str(func(c *Config) *string { return &c.DataDir })},
	{"listen", "address of the REST API", str(func(c *Config) *string { return &c.Listen })},
	{"database_url", "postgres://... or sqlite://PATH (default: SQLite in the data directory)", str(func(c *Config) *string { return &c.DatabaseURL })},
	{"redis_url", "redis://HOST:PORT/DB for the Asynq queue and event bus (empty: in-process queue)", str(func(c *Config) *string { return &c.RedisURL })},
	{"auto_migrate", "apply database migrations at start (serve and gateway)", boolean(func(c *Config) *bool { return &c.AutoMigrate })},
	{"log_level", "debug, info, warn or error", str(func(c *Config) *string { return &c.LogLevel })},
	{"log_format", "text or json", str(func(c *Config) *string { return &c.LogFormat })},
	{"worker_id", "stable id of this worker (default: the host name)", str(func(c *Config) *string { return &c.WorkerID })},
	{"concurrency", "tasks a worker runs at once", integer(func(c *Config) *int { return &c.Concurrency })},
	{"backend", "VM backend: auto, firecracker, qemu or docker (auto: the best one this host can run, and the log says why)", str(func(c *Config) *string { return &c.Backend })},
	{"firecracker_bin", "firecracker binary (backend firecracker; default: firecracker in PATH)", str(func(c *Config) *string { return &c.FirecrackerBin })},
	{"jailer_bin", "jailer binary; when set, Firecracker VMs run jailed (backend firecracker)", str(func(c *Config) *string { return &c.JailerBin })},
	{"jailer_uid", "uid the jailer runs Firecracker as (not root; default 10000)", integer(func(c *Config) *int { return &c.JailerUID })},
	{"jailer_gid", "gid the jailer runs Firecracker as (default 10000)", integer(func(c *Config) *int { return &c.JailerGID })},
	{"jailer_chroot_base", "directory of the jailer's per-VM chroots, on the data directory's filesystem (VM disks are hard-linked into them; default: <data_dir>/jail)", str(func(c *Config) *string { return &c.JailerChrootBase })},
	{"jailer_cgroup_version", "cgroup version the jailer uses for jailer_cgroups: 1 or 2", integer(func(c *Config) *int { return &c.JailerCgroupVersion })},
	{"jailer_cgroups", "cgroup values the jailer sets for each VM, space-separated file=value (e.g. \"cpu.max=100000 memory.max=1073741824\"); empty: none", str(func(c *Config) *string { return &c.JailerCgroups })},
	{"jailer_netns", "network namespace (a path such as /var/run/netns/vms) the jailer puts Firecracker in; empty: the worker's", str(func(c *Config) *string { return &c.JailerNetNS })},
	{"qemu_bin", "qemu-system-x86_64 binary (backend qemu; default: in PATH)", str(func(c *Config) *string { return &c.QEMUBin })},
	{"qemu_accel", "QEMU accelerator: auto (KVM when a probe guest boots under it, else TCG), kvm or tcg", str(func(c *Config) *string { return &c.QEMUAccel })},
	{"network", "microVM networking: auto (on when the worker runs as root), on or off; a TAP per VM on a bridge with NAT, isolation and egress policies", str(func(c *Config) *string { return &c.Network })},
	{"network_cidr", "IPv4 network of the VMs on each host (the bridge has its first address)", str(func(c *Config) *string { return &c.NetworkCIDR })},
	{"network_bridge", "name of the host bridge the VMs' TAP devices join", str(func(c *Config) *string { return &c.NetworkBridge })},
	{"vm_disk_mb", "least size of a microVM's disk in MiB (sparse: space is used as the guest writes; the agent grows the filesystem)", integer(func(c *Config) *int { return &c.DiskMB })},
	{"github_webhook_secret", "secret of the GitHub App's webhook; set, it turns the GitHub integration on (POST /api/v1/webhooks/github; prefer the env: flags show in the process list)", str(func(c *Config) *string { return &c.GitHubWebhookSecret })},
	{"github_app_id", "id of the GitHub App (the JWT's issuer unless github_client_id is set)", str(func(c *Config) *string { return &c.GitHubAppID })},
	{"github_client_id", "client id of the GitHub App (preferred JWT issuer)", str(func(c *Config) *string { return &c.GitHubClientID })},
	{"github_private_key_file", "PEM file of the GitHub App's private key (mode 0600)", str(func(c *Config) *string { return &c.GitHubPrivateKeyFile })},
	{"github_api_url", "GitHub REST API base URL (GitHub Enterprise Server: https://HOST/api/v3)", str(func(c *Config) *string { return &c.GitHubAPIURL })},
	{"agent_catalog", "YAML file of coding agents added to the built-in catalog (claude-code), for runs (see docs/runs.md)", str(func(c *Config) *string { return &c.AgentCatalog })},
	{"git_hosts", "git servers the credential proxy forwards runs' clones and pushes to, besides github.com and gitlab.com: comma-separated name=url|secret|username (e.g. git.corp.example=https://git.corp.example|GITEA_TOKEN|oauth2)", str(func(c *Config) *string { return &c.GitHosts })},
	{"tool_catalog", "YAML tool catalog replacing the built-in one (see `aetherium image tools`)", str(func(c *Config) *string { return &c.ToolCatalog })},
	{"npm_registry", "npm registry the tools of kind npm come from", str(func(c *Config) *string { return &c.NPMRegistry })},
	{"debian_mirror", "Debian mirror the host downloads Debian tools from, for running VMs", str(func(c *Config) *string { return &c.DebianMirror })},
	{"kernel_path", "guest kernel, an uncompressed vmlinux (backends firecracker and qemu; default: the kernel named default in the data directory, see `aetherium image kernel`)", str(func(c *Config) *string { return &c.KernelPath })},
	{"rootfs_path", "default root filesystem template, ext4 with the agent (backends firecracker and qemu; default: the template named default, see `aetherium image build`)", str(func(c *Config) *string { return &c.RootfsPath })},
	{"agent_binary", "path of the static aetherium-agent binary (default: next to this executable)", str(func(c *Config) *string { return &c.AgentBinary })},
	{"busybox", "static busybox used to build the Docker base image", str(func(c *Config) *string { return &c.Busybox })},
	{"docker_image", "default image of Docker VMs (empty: the built base image)", str(func(c *Config) *string { return &c.DockerImage })},
	{"docker_network", "network mode of Docker VMs: none or bridge", str(func(c *Config) *string { return &c.DockerNet })},
	{"ready_timeout", "how long a VM may take to become ready", duration(func(c *Config) *time.Duration { return &c.ReadyWait })},
	{"vm_default_timeout", "hard lifetime of a VM whose create request gives no timeout_seconds: it is deleted that long after its creation (0: none)", duration(func(c *Config) *time.Duration { return &c.VMDefaultTimeout })},
	{"vm_max_timeout", "longest timeout_seconds a create request may give, and the lifetime of VMs that give none when vm_default_timeout is 0 (0: no bound)", duration(func(c *Config) *time.Duration { return &c.VMMaxTimeout })},
	{"vm_default_idle_timeout", "idle timeout of a VM whose create request gives no idle_timeout_seconds: it is paused or deleted (on_idle) after that long without activity (0: none)", duration(func(c *Config) *time.Duration { return &c.VMDefaultIdleTimeout })},
	{"vm_max_idle_timeout", "longest idle_timeout_seconds a create request may give (0: no bound)", duration(func(c *Config) *time.Duration { return &c.VMMaxIdleTimeout })},
	{"max_output_bytes", "output kept per stream per execution", integer(func(c *Config) *int { return &c.MaxOutput })},
	{"max_retries", "retries of a task after an infrastructure failure", integer(func(c *Config) *int { return &c.MaxRetries })},
	{"shutdown_timeout", "how long in-flight tasks may finish on SIGTERM", duration(func(c *Config) *time.Duration { return &c.ShutdownFor })},
	{"events_retention", "how long the event log of GET /api/v1/events keeps events (a client resuming from before gets a reset event)", duration(func(c *Config) *time.Duration { return &c.EventsRetention })},
	{"events_max_per_owner", "most events the event log keeps per owner (the oldest go first)", integer(func(c *Config) *int { return &c.EventsMaxPerOwner })},
	{"jwt_issuer", "the iss claim of the API's JWTs (POST /api/v1/auth/token)", str(func(c *Config) *string { return &c.JWTIssuer })},
	{"jwt_audience", "the aud claim of the API's JWTs", str(func(c *Config) *string { return &c.JWTAudience })},
	{"jwt_rotate_every", "how often a new JWT signing key is made (old ones are accepted until their tokens expire)", duration(func(c *Config) *time.Duration { return &c.JWTRotateEvery })},
	{"audit_retention", "how long the audit log (GET /api/v1/audit) keeps entries", duration(func(c *Config) *time.Duration { return &c.AuditRetention })},
	{"shutdown_vms", "stop this worker's VMs when it shuts down (SIGTERM); by default they keep running and the restarted worker adopts them", boolean(func(c *Config) *bool { return &c.ShutdownVMs })},
	{"worker_api_listen", "address of the worker's internal API for files, processes and shells (production: :8081 on a private network)", str(func(c *Config) *string { return &c.WorkerAPIListen })},
	{"worker_api_url", "URL gateways use to reach this worker's internal API (default: derived from worker_api_listen and the host name)", str(func(c *Config) *string { return &c.WorkerAPIURL })},
	{"cluster_token", "shared secret of gateways and workers (required with redis_url; prefer cluster_token_file or the env: flags show in the process list)", str(func(c *Config) *string { return &c.ClusterToken })},
	{"cluster_token_file", "file holding the cluster token", str(func(c *Config) *string { return &c.ClusterTokenFile })},
	{"secrets_key", "key that seals owners' secrets, 32 bytes in base64 (openssl rand -base64 32); every gateway and worker needs the same one (prefer secrets_key_file or the env: flags show in the process list; default: <data_dir>/secrets-key, which serve creates)", str(func(c *Config) *string { return &c.SecretsKey })},
	{"secrets_key_file", "file holding the secrets key (mode 0600)", str(func(c *Config) *string { return &c.SecretsKeyFile })},
	{"secrets_old_keys", "earlier secrets keys, comma-separated base64, still opening secrets during a rotation (see `aetherium secret rotate-key`)", str(func(c *Config) *string { return &c.SecretsOldKeys })},
	{"credproxy_port", "TCP port of the worker's credential proxy on the VM bridge's gateway address, reachable from the worker's microVMs only (0: off; needs network)", integer(func(c *Config) *int { return &c.CredProxyPort })},
	{"model_upstream_url", "where the credential proxy sends the VMs' Anthropic API requests (a corporate gateway, say)", str(func(c *Config) *string { return &c.ModelUpstreamURL })},
	{"openai_upstream_url", "where the credential proxy sends the VMs' OpenAI-compatible API requests", str(func(c *Config) *string { return &c.OpenAIUpstreamURL })},
	{"guest_ca_files", "PEM files (comma-separated host paths) of extra CA certificates every guest trusts: added to its system bundle, and NODE_EXTRA_CA_CERTS for Node.js and Bun (for hosts behind a TLS-inspecting proxy)", str(func(c *Config) *string { return &c.GuestCAFiles })},
	{"guest_http_proxy", "HTTP_PROXY (and http_proxy) of every execution in the guests, unless it sets its own; also in the guests' /etc/environment", str(func(c *Config) *string { return &c.GuestHTTPProxy })},
	{"guest_https_proxy", "HTTPS_PROXY (and https_proxy) of every execution in the guests, unless it sets its own", str(func(c *Config) *string { return &c.GuestHTTPSProxy })},
	{"guest_no_proxy", "NO_PROXY of every execution in the guests (localhost and the VM's gateway, where the credential proxy is, are always added when a proxy is set)", str(func(c *Config) *string { return &c.GuestNoProxy })},
	{"debug_listen", "loopback address (127.0.0.1:PORT) serving Go's pprof profiles at /debug/pprof/ (empty: off)", str(func(c *Config) *string { return &c.DebugListen })},
	{"metrics_listen", "address serving Prometheus metrics at /metrics (empty or off: none); give each process on a host its own port, and a metrics_token when it is not loopback", str(func(c *Config) *string { return &c.MetricsListen })},
	{"slack_signing_secret", "Slack app's signing secret: verifies /api/v1/webhooks/slack (slash commands, events); empty: HTTP webhooks refused, and Slack off unless slack_app_token is set (prefer the env)", str(func(c *Config) *string { return &c.SlackSigningSecret })},
	{"slack_bot_token", "Slack bot token (xoxb-...): notifications and results through chat.postMessage/chat.update (prefer the env)", str(func(c *Config) *string { return &c.SlackBotToken })},
	{"slack_app_token", "Slack app-level token (xapp-..., scope connections:write): every gateway receives Slack's commands and events over Socket Mode, no public URL needed; the signing secret is then optional (prefer the env; docs/integrations.md)", str(func(c *Config) *string { return &c.SlackAppToken })},
	{"slack_api_url", "Slack Web API base (default https://slack.com/api/; a local server in tests, an Enterprise proxy)", str(func(c *Config) *string { return &c.SlackAPIURL })},
	{"discord_public_key", "Discord application's Ed25519 public key (hex) for the interactions endpoint /api/v1/webhooks/discord; empty: interactions off (webhook notifications need none)", str(func(c *Config) *string { return &c.DiscordPublicKey })},
	{"metrics_token", "bearer token scrapers must send to /metrics (empty: none; prefer the env: flags show in the process list)", str(func(c *Config) *string { return &c.MetricsToken })},
	{"loki_url", "base URL of Loki (http://loki:3100) or a Loki-compatible store (VictoriaLogs: http://vl:9428/insert) that logs are pushed to at /loki/api/v1/push, besides stdout (empty: stdout only)", str(func(c *Config) *string { return &c.LokiURL })},
	{"loki_format", "format of the pushes to loki_url: protobuf (Loki's native one, snappy-compressed protobuf; smaller and cheaper to parse) or json (Loki's JSON push format)", str(func(c *Config) *string { return &c.LokiFormat })},
	{"loki_tenant", "Loki tenant, sent as X-Scope-OrgID (empty: none)", str(func(c *Config) *string { return &c.LokiTenant })},
	{"loki_username", "user name of HTTP basic auth to Loki", str(func(c *Config) *string { return &c.LokiUsername })},
	{"loki_password", "password of HTTP basic auth to Loki (prefer loki_password_file or the env: flags show in the process list)", str(func(c *Config) *string { return &c.LokiPassword })},
	{"loki_password_file", "file holding the Loki password", str(func(c *Config) *string { return &c.LokiPasswordFile })},
	{"loki_bearer_token", "bearer token sent to Loki instead of basic auth (prefer the env)", str(func(c *Config) *string { return &c.LokiBearerToken })},
	{"cpu_overcommit", "placement by capacity: vCPUs this worker offers per host CPU (e.g. 4); 0: placement by capacity off, the worker takes every VM", number(func(c *Config) *float64 { return &c.CPUOvercommit })},
	{"memory_overcommit", "placement by capacity: memory this worker offers per MB of host memory less 1 GiB (e.g. 1.0); 0 with cpu_overcommit set: 1.0", number(func(c *Config) *float64 { return &c.MemoryOvercommit })},
	{"max_vms", "placement by capacity: most VMs this worker holds at once (0: no count limit)", integer(func(c *Config) *int { return &c.MaxVMs })},
	{"otlp_endpoint", "OTLP/HTTP receiver traces are exported to (http://otel-collector:4318; /v1/traces is added when the URL has no path); empty: tracing off, at no cost", str(func(c *Config) *string { return &c.OTLPEndpoint })},
	{"otlp_headers", "headers sent with every trace export, k=v comma-separated (a hosted backend's API key; prefer the env)", str(func(c *Config) *string { return &c.OTLPHeaders })},
	{"trace_sample_percent", "percent of new traces recorded, 1 to 100 (requests whose caller sent a sampled traceparent always are)", integer(func(c *Config) *int { return &c.TraceSamplePercent })},
	{"rate_limit", "rate limits of the REST API: per API key and per source address, answered 429 with Retry-After (true: on, the default; false: off)", boolean(func(c *Config) *bool { return &c.RateLimit })},
	{"rate_limit_key_rate", "requests a second an API key may make on cheap routes (reads, files, processes...)", number(func(c *Config) *float64 { return &c.RateLimitKeyRate })},
	{"rate_limit_key_burst", "requests an API key may make at once on cheap routes", integer(func(c *Config) *int { return &c.RateLimitKeyBurst })},
	{"rate_limit_expensive_rate", "requests a second an API key may make on expensive routes (POST /vms, /runs, /jobs, /vms/{id}/tools)", number(func(c *Config) *float64 { return &c.RateLimitExpensiveRate })},
	{"rate_limit_expensive_burst", "requests an API key may make at once on expensive routes", integer(func(c *Config) *int { return &c.RateLimitExpensiveBurst })},
	{"rate_limit_addr_rate", "requests a second a source address may make without a valid API key (webhooks, the OpenAPI document, failed authentication)", number(func(c *Config) *float64 { return &c.RateLimitAddrRate })},
	{"rate_limit_addr_burst", "requests a source address may make at once without a valid API key", integer(func(c *Config) *int { return &c.RateLimitAddrBurst })},
}

func flagName(key string) string { return strings.ReplaceAll(key, "_", "-") }

// EnvName gives the environment variable of a key.
func EnvName(key string) string { return "AETHERIUM_" + strings.ToUpper(key) }

// Defaults returns the built-in configuration.
func Defaults() Config {
	home, err := os.UserHomeDir()
	if err != nil || home == "" {
		home = "."
	}
	return Config{
		DataDir: filepath.Join(home, ".aetherium"), Listen: ":8080", AutoMigrate: true,
		LogLevel: "info", LogFormat: "text", Concurrency: 10, Backend: "auto", Busybox: "/bin/busybox",
		QEMUAccel: "auto", Network: "auto", NetworkCIDR: "172.16.0.0/24", DiskMB: 8192, NetworkBridge: "aetherium0", DockerNet: "none", ReadyWait: 60 * time.Second, MaxOutput: 1 << 20, MaxRetries: 3, ShutdownFor: 30 * time.Second,
		EventsRetention: 24 * time.Hour, EventsMaxPerOwner: 10000,
		JWTIssuer: "aetherium", JWTAudience: "aetherium-api", JWTRotateEvery: 30 * 24 * time.Hour,
		AuditRetention:  90 * 24 * time.Hour,
		WorkerAPIListen: "127.0.0.1:0", MetricsListen: DefaultMetricsListen, TraceSamplePercent: 100,
		JailerUID: DefaultJailerID, JailerGID: DefaultJailerID, JailerCgroupVersion: 2,
		CredProxyPort: 8091, ModelUpstreamURL: "https://api.anthropic.com", OpenAIUpstreamURL: "https://api.openai.com",
		LokiFormat: DefaultLokiFormat, RateLimit: true, RateLimitKeyRate: DefaultRateLimitKeyRate, RateLimitKeyBurst: DefaultRateLimitKeyBurst,
		RateLimitExpensiveRate: DefaultRateLimitExpensiveRate, RateLimitExpensiveBurst: DefaultRateLimitExpensiveBurst,
		RateLimitAddrRate: DefaultRateLimitAddrRate, RateLimitAddrBurst: DefaultRateLimitAddrBurst,
	}
}

// Flags registers one flag per setting (plus --config) on fs.
func Flags(fs *pflag.FlagSet) {
	fs.String("config", "", "YAML configuration file (env AETHERIUM_CONFIG)")
	for _, s := range settings {
		fs.String(flagName(s.key), "", s.usage+" (env "+EnvName(s.key)+")")
		if isBoolean(s) {
			fs.Lookup(flagName(s.key)).NoOptDefVal = "true" // --shutdown-vms alone means true
		}
	}
}

// isBoolean reports whether s takes a boolean: it accepts "true" and refuses a word (strings accept both,
// integers and durations refuse both).
func isBoolean(s setting) bool {
	var scratch Config
	return s.set(&scratch, "true") == nil && s.set(&scratch, "not-a-value") != nil
}

// Load builds the configuration from defaults, the YAML file (--config or AETHERIUM_CONFIG), the environment and
// the flags that were set, in that order, and validates it.
func Load(fs *pflag.FlagSet, getenv func(string) string) (Config, error) {
	c := Defaults()
	path := getenv("AETHERIUM_CONFIG")
	if f := fs.Lookup("config"); f != nil && f.Changed {
		path = f.Value.String()
	}
	if path != "" {
		if err := c.loadFile(path); err != nil {
			return c, err
		}
	}
	for _, s := range settings {
		if v, ok := lookupEnv(getenv, EnvName(s.key)); ok {
			if err := s.set(&c, v); err != nil {
				return c, fmt.Errorf("environment %s: %w", EnvName(s.key), err)
			}
		}
	}
	for _, s := range settings {
		if f := fs.Lookup(flagName(s.key)); f != nil && f.Changed {
			if err := s.set(&c, f.Value.String()); err != nil {
				return c, fmt.Errorf("flag --%s: %w", flagName(s.key), err)
			}
		}
	}
	return c, c.normalize()
}

func lookupEnv(getenv func(string) string, name string) (string, bool) {
	v := getenv(name)
	return v, v != ""
}

func (c *Config) loadFile(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read config file: %w", err)
	}
	var raw map[string]yaml.Node
	if err := yaml.Unmarshal(b, &raw); err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	known := map[string]setting{}
	for _, s := range settings {
		known[s.key] = s
	}
	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		s, ok := known[k]
		if !ok {
			return fmt.Errorf("config file %s: unknown key %q", path, k)
		}
		n := raw[k]
		if n.Kind != yaml.ScalarNode {
			return fmt.Errorf("config file %s: key %q must be a single value", path, k)
		}
		if err := s.set(c, n.Value); err != nil {
			return fmt.Errorf("config file %s: key %q (line %d): %w", path, k, n.Line, err)
		}
	}
	return nil
}

var workerIDRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$`)

// normalize fills derived defaults and rejects invalid values with a message that names the setting.
func (c *Config) normalize() error {
	var errs []error
	bad := func(key, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s (%s / --%s): %s", key, EnvName(key), flagName(key), fmt.Sprintf(format, a...)))
	}
	if c.DataDir == "" {
		bad("data_dir", "must not be empty")
	} else if abs, err := filepath.Abs(c.DataDir); err == nil {
		c.DataDir = abs
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		bad("listen", "must be host:port or :port (got %q)", c.Listen)
	}
	if c.DatabaseURL == "" {
		c.DatabaseURL = "sqlite://" + filepath.Join(c.DataDir, "aetherium.db")
	}
	if u, err := url.Parse(c.DatabaseURL); err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql" && u.Scheme != "sqlite") {
		bad("database_url", "must start with postgres:// or sqlite://")
	}
	if c.RedisURL != "" {
		if u, err := url.Parse(c.RedisURL); err != nil || (u.Scheme != "redis" && u.Scheme != "rediss") {
			bad("redis_url", "must be redis://HOST:PORT[/DB] or rediss://...")
		}
	}
	for _, rl := range []struct {
		key   string
		rate  float64
		burst int
	}{{"rate_limit_key", c.RateLimitKeyRate, c.RateLimitKeyBurst},
		{"rate_limit_expensive", c.RateLimitExpensiveRate, c.RateLimitExpensiveBurst},
		{"rate_limit_addr", c.RateLimitAddrRate, c.RateLimitAddrBurst}} {
		if !(rl.rate > 0 && rl.rate <= 1e6) {
			bad(rl.key+"_rate", "must be a number of requests a second above 0 and at most 1000000 (got %v)", rl.rate)
		}
		if rl.burst < 1 || rl.burst > 1e6 {
			bad(rl.key+"_burst", "must be between 1 and 1000000 (got %d)", rl.burst)
		}
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("log_level", "must be debug, info, warn or error (got %q)", c.LogLevel)
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		bad("log_format", "must be text or json (got %q)", c.LogFormat)
	}
	if c.WorkerID == "" {
		host, err := os.Hostname()
		if err != nil || host == "" {
			host = "local"
		}
		c.WorkerID = host
	}
	if !workerIDRE.MatchString(c.WorkerID) {
		bad("worker_id", "must be 1-63 letters, digits, '.', '_' or '-' (got %q)", c.WorkerID)
	}
	if c.Concurrency < 1 || c.Concurrency > 1000 {
		bad("concurrency", "must be between 1 and 1000 (got %d)", c.Concurrency)
	}
	switch c.Backend {
	case "auto", "docker", "qemu":
	case "firecracker":
		if c.FirecrackerBin == "" {
			if p, err := lookPath("firecracker"); err == nil {
				c.FirecrackerBin = p
			}
		}
		if c.FirecrackerBin == "" {
			bad("firecracker_bin", "is required with backend firecracker (firecracker is not in PATH)")
		}
	default:
		bad("backend", "must be auto, firecracker, qemu or docker (got %q)", c.Backend)
	}
	// Root is refused: a jailed Firecracker that runs as root keeps every capability the jail is meant to take away.
	if c.JailerUID < 1 || c.JailerUID > 1<<32-2 {
		bad("jailer_uid", "must be a uid between 1 and 4294967294, not root (got %d)", c.JailerUID)
	}
	if c.JailerGID < 1 || c.JailerGID > 1<<32-2 {
		bad("jailer_gid", "must be a gid between 1 and 4294967294, not root's group (got %d)", c.JailerGID)
	}
	if c.JailerCgroupVersion != 1 && c.JailerCgroupVersion != 2 {
		bad("jailer_cgroup_version", "must be 1 or 2 (got %d)", c.JailerCgroupVersion)
	}
	for _, cg := range strings.Fields(c.JailerCgroups) {
		if k, v, ok := strings.Cut(cg, "="); !ok || k == "" || v == "" || strings.Contains(v, "=") || !strings.Contains(k, ".") {
			bad("jailer_cgroups", "must be space-separated <controller>.<file>=<value> such as cpu.max=100000 (got %q)", cg)
		}
	}
	if c.JailerNetNS != "" && !filepath.IsAbs(c.JailerNetNS) {
		bad("jailer_netns", "must be an absolute path such as /var/run/netns/vms (got %q)", c.JailerNetNS)
	}
	if c.JailerChrootBase != "" {
		if abs, err := filepath.Abs(c.JailerChrootBase); err == nil {
			c.JailerChrootBase = abs
		}
	}
	switch c.QEMUAccel {
	case "auto", "kvm", "tcg":
	default:
		bad("qemu_accel", "must be auto, kvm or tcg (got %q)", c.QEMUAccel)
	}
	if c.DiskMB < 64 || c.DiskMB > 4<<20 {
		bad("vm_disk_mb", "must be between 64 and 4194304 (got %d)", c.DiskMB)
	}
	switch c.Network {
	case "auto", "on", "off":
	default:
		bad("network", "must be auto, on or off (got %q)", c.Network)
	}
	if p, err := netip.ParsePrefix(c.NetworkCIDR); err != nil || !p.Addr().Is4() || p.Bits() < 8 || p.Bits() > 30 {
		bad("network_cidr", "must be an IPv4 network from /8 to /30 such as 172.16.0.0/24 (got %q)", c.NetworkCIDR)
	}
	if l := len(c.NetworkBridge); l == 0 || l > 15 || strings.ContainsAny(c.NetworkBridge, "/ \t:") {
		bad("network_bridge", "must be an interface name of 1 to 15 characters (got %q)", c.NetworkBridge)
	}
	if c.DockerNet != "none" && c.DockerNet != "bridge" {
		bad("docker_network", "must be none or bridge (got %q)", c.DockerNet)
	}
	if c.AgentBinary == "" {
		c.AgentBinary = defaultAgentBinary()
	}
	if c.ReadyWait <= 0 {
		bad("ready_timeout", "must be positive")
	}
	if c.MaxOutput < 1024 || c.MaxOutput > 64<<20 {
		bad("max_output_bytes", "must be between 1024 and 67108864 (got %d)", c.MaxOutput)
	}
	if c.MaxRetries < 0 || c.MaxRetries > 25 {
		bad("max_retries", "must be between 0 and 25 (got %d)", c.MaxRetries)
	}
	if c.ShutdownFor <= 0 {
		bad("shutdown_timeout", "must be positive")
	}
	if c.EventsRetention < time.Minute {
		bad("events_retention", "must be at least 1m (got %s)", c.EventsRetention)
	}
	if c.JWTRotateEvery < 2*time.Hour {
		bad("jwt_rotate_every", "must be at least 2h (got %s)", c.JWTRotateEvery)
	}
	if c.AuditRetention < time.Hour {
		bad("audit_retention", "must be at least 1h (got %s)", c.AuditRetention)
	}
	if c.JWTIssuer == "" || c.JWTAudience == "" {
		bad("jwt_issuer", "jwt_issuer and jwt_audience must not be empty")
	}
	if c.EventsMaxPerOwner < 100 || c.EventsMaxPerOwner > 10_000_000 {
		bad("events_max_per_owner", "must be between 100 and 10000000 (got %d)", c.EventsMaxPerOwner)
	}
	for _, l := range []struct {
		key, maxKey string
		def, max    time.Duration
	}{
		{"vm_default_timeout", "vm_max_timeout", c.VMDefaultTimeout, c.VMMaxTimeout},
		{"vm_default_idle_timeout", "vm_max_idle_timeout", c.VMDefaultIdleTimeout, c.VMMaxIdleTimeout},
	} {
		switch {
		case l.def < 0 || l.def%time.Second != 0:
			bad(l.key, "must be 0 or a positive whole number of seconds (got %s)", l.def)
		case l.max < 0 || l.max%time.Second != 0:
			bad(l.maxKey, "must be 0 or a positive whole number of seconds (got %s)", l.max)
		case l.max > 0 && l.def > l.max:
			bad(l.key, "must not be longer than %s (%s)", l.maxKey, l.max)
		}
	}
	if _, _, err := net.SplitHostPort(c.WorkerAPIListen); err != nil {
		bad("worker_api_listen", "must be host:port or :port (got %q)", c.WorkerAPIListen)
	}
	if c.WorkerAPIURL != "" {
		if u, err := url.Parse(c.WorkerAPIURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" {
			bad("worker_api_url", "must be http://HOST:PORT or https://... (got %q)", c.WorkerAPIURL)
		}
	}
	if c.CredProxyPort < 0 || c.CredProxyPort > 65535 || c.CredProxyPort == 53 {
		bad("credproxy_port", "must be a TCP port other than 53, or 0 for off (got %d)", c.CredProxyPort)
	}
	for _, s := range []struct{ key, v string }{{"model_upstream_url", c.ModelUpstreamURL}, {"openai_upstream_url", c.OpenAIUpstreamURL}} {
		if u, err := url.Parse(s.v); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.RawQuery != "" {
			bad(s.key, "must be an http(s) URL without credentials or query, such as https://api.anthropic.com (got %q)", s.v)
		}
	}
	if _, err := c.GitHostList(); err != nil {
		bad("git_hosts", "%v", err)
	}
	for _, f := range c.GuestCAFileList() {
		if !filepath.IsAbs(f) {
			bad("guest_ca_files", "must be absolute paths of PEM files, comma-separated (got %q)", f)
		}
	}
	for _, s := range []struct{ key, v string }{{"guest_http_proxy", c.GuestHTTPProxy}, {"guest_https_proxy", c.GuestHTTPSProxy}} {
		if s.v == "" {
			continue
		}
		if u, err := url.Parse(s.v); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || strings.ContainsAny(s.v, " \t\r\n\"'") {
			bad(s.key, "must be an http(s) URL such as http://proxy.corp:3128 (got %q)", redactURL(s.v))
		}
	}
	if strings.ContainsAny(c.GuestNoProxy, " \t\r\n\"'") {
		bad("guest_no_proxy", "must be comma-separated hosts, domains or networks without spaces or quotes (got %q)", c.GuestNoProxy)
	}
	if c.DebugListen != "" && !loopbackAddr(c.DebugListen) {
		bad("debug_listen", "must be a loopback host:port such as 127.0.0.1:6060: profiles show the process's internals (got %q)", c.DebugListen)
	}
	if c.MetricsListen == "off" {
		c.MetricsListen = "" // the environment cannot say "empty": an empty variable counts as unset
	}
	if c.MetricsListen != "" {
		if _, port, err := net.SplitHostPort(c.MetricsListen); err != nil || port == "" {
			bad("metrics_listen", "must be host:port such as 127.0.0.1:9464, or off (got %q)", c.MetricsListen)
		}
	}
	if c.OTLPEndpoint != "" {
		if u, err := url.Parse(c.OTLPEndpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad("otlp_endpoint", "must be an http(s) URL such as http://otel-collector:4318 (got %q)", c.OTLPEndpoint)
		}
	}
	if _, err := c.OTLPHeaderMap(); err != nil {
		bad("otlp_headers", "%v", err)
	}
	if c.CPUOvercommit < 0 || c.CPUOvercommit > 64 {
		bad("cpu_overcommit", "must be between 0 (off) and 64 (got %g)", c.CPUOvercommit)
	}
	if c.MemoryOvercommit < 0 || c.MemoryOvercommit > 16 {
		bad("memory_overcommit", "must be between 0 and 16 (got %g)", c.MemoryOvercommit)
	}
	if c.MaxVMs < 0 {
		bad("max_vms", "must be 0 (no limit) or more (got %d)", c.MaxVMs)
	}
	if c.TraceSamplePercent < 1 || c.TraceSamplePercent > 100 {
		bad("trace_sample_percent", "must be between 1 and 100 (got %d)", c.TraceSamplePercent)
	}
	if c.MetricsToken != "" && len(c.MetricsToken) < MinMetricsTokenLen {
		bad("metrics_token", "must have at least %d characters (use a random one, e.g. openssl rand -hex 32)", MinMetricsTokenLen)
	}
	switch {
	case c.ClusterTokenFile != "" && c.ClusterToken != "":
		bad("cluster_token_file", "set cluster_token or cluster_token_file, not both")
	case c.ClusterTokenFile != "":
		b, err := os.ReadFile(c.ClusterTokenFile)
		if err != nil {
			bad("cluster_token_file", "%v", err)
		} else {
			c.ClusterToken = strings.TrimSpace(string(b))
		}
	}
	c.validateLoki(bad)
	if c.SecretsKey != "" && c.SecretsKeyFile != "" {
		bad("secrets_key_file", "set secrets_key or secrets_key_file, not both")
	}
	if c.ClusterToken != "" && len(c.ClusterToken) < MinClusterTokenLen {
		bad("cluster_token", "must have at least %d characters (use a random one, e.g. openssl rand -hex 32)", MinClusterTokenLen)
	}
	return errors.Join(errs...)
}

// validateLoki checks the loki_* settings and reads loki_password_file.
func (c *Config) validateLoki(bad func(key, format string, args ...any)) {
	if c.LokiFormat != "protobuf" && c.LokiFormat != "json" {
		bad("loki_format", "must be protobuf or json (got %q)", c.LokiFormat)
	}
	if c.LokiURL == "" {
		for _, s := range []struct{ key, v string }{{"loki_tenant", c.LokiTenant}, {"loki_username", c.LokiUsername},
			{"loki_password", c.LokiPassword}, {"loki_password_file", c.LokiPasswordFile}, {"loki_bearer_token", c.LokiBearerToken}} {
			if s.v != "" {
				bad(s.key, "needs loki_url")
			}
		}
		return
	}
	if u, err := url.Parse(c.LokiURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.RawQuery != "" {
		bad("loki_url", "must be an http(s) base URL without credentials or query, such as http://loki:3100 (got %q)", redactURL(c.LokiURL))
	}
	if strings.ContainsAny(c.LokiTenant, " \t\r\n|") {
		bad("loki_tenant", "must be a tenant id without spaces or '|' (got %q)", c.LokiTenant)
	}
	switch {
	case c.LokiPasswordFile != "" && c.LokiPassword != "":
		bad("loki_password_file", "set loki_password or loki_password_file, not both")
	case c.LokiPasswordFile != "":
		b, err := os.ReadFile(c.LokiPasswordFile)
		if err != nil {
			bad("loki_password_file", "%v", err)
		} else {
			c.LokiPassword = strings.TrimSpace(string(b))
		}
	}
	if c.LokiPassword != "" && c.LokiUsername == "" {
		bad("loki_username", "is needed with loki_password")
	}
	if c.LokiBearerToken != "" && c.LokiUsername != "" {
		bad("loki_bearer_token", "set basic auth (loki_username) or a bearer token, not both")
	}
}

// GuestCAFileList returns the paths of guest_ca_files.
func (c Config) GuestCAFileList() []string {
	var out []string
	for _, f := range strings.Split(c.GuestCAFiles, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// loopbackAddr reports whether addr is host:port with a loopback IP literal as host (a name could resolve elsewhere).
func loopbackAddr(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// defaultAgentBinary looks for aetherium-agent next to the running executable, then in PATH.
func defaultAgentBinary() string {
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "aetherium-agent")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := lookPath("aetherium-agent"); err == nil {
		return p
	}
	return "aetherium-agent"
}

func lookPath(name string) (string, error) {
	for _, dir := range filepath.SplitList(os.Getenv("PATH")) {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", os.ErrNotExist
}

// Redacted renders the configuration for logs, with passwords in URLs hidden.
func (c Config) Redacted() string {
	cc := c
	cc.DatabaseURL = redactURL(c.DatabaseURL)
	cc.RedisURL = redactURL(c.RedisURL)
	if cc.ClusterToken != "" {
		cc.ClusterToken = "xxxxx"
	}
	if cc.SecretsKey != "" {
		cc.SecretsKey = "xxxxx"
	}
	if cc.MetricsToken != "" {
		cc.MetricsToken = "xxxxx"
	}
	for _, p := range []*string{&cc.SlackSigningSecret, &cc.SlackBotToken, &cc.SlackAppToken} {
		if *p != "" {
			*p = "xxxxx"
		}
	}
	if cc.SecretsOldKeys != "" {
		cc.SecretsOldKeys = "xxxxx"
	}
	if cc.LokiPassword != "" {
		cc.LokiPassword = "xxxxx"
	}
	if cc.OTLPHeaders != "" {
		cc.OTLPHeaders = "xxxxx"
	}
	if cc.LokiBearerToken != "" {
		cc.LokiBearerToken = "xxxxx"
	}
	if cc.GitHubWebhookSecret != "" {
		cc.GitHubWebhookSecret = "xxxxx"
	}
	if cc.GuestHTTPProxy != "" {
		cc.GuestHTTPProxy = redactURL(c.GuestHTTPProxy)
	}
	if cc.GuestHTTPSProxy != "" {
		cc.GuestHTTPSProxy = redactURL(c.GuestHTTPSProxy)
	}
	var buf bytes.Buffer
	_ = yaml.NewEncoder(&buf).Encode(cc)
	return buf.String()
}

func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable url)"
	}
	if u.User != nil {
		if _, ok := u.User.Password(); ok {
			u.User = url.UserPassword(u.User.Username(), "xxxxx")
		}
	}
	q := u.Query()
	if q.Has("password") {
		q.Set("password", "xxxxx")
		u.RawQuery = q.Encode()
	}
	return u.String()
}

// GitHost is a git server of git_hosts.
type GitHost struct {
	Name     string // the host name in repository URLs (https://<name>/org/repo)
	URL      string // where the credential proxy sends its requests (http or https)
	Secret   string // the owner's secret with the token
	Username string // sent with the token in basic auth
}

var (
	gitHostNameRE   = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$`)
	gitSecretNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,63}$`)
	gitUsernameRE   = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)
)

// GitHostList parses git_hosts: comma-separated "name=url|secret|username" entries (username default "git").
func (c Config) GitHostList() ([]GitHost, error) {
	var out []GitHost
	seen := map[string]bool{}
	for _, e := range strings.Split(c.GitHosts, ",") {
		if e = strings.TrimSpace(e); e == "" {
			continue
		}
		name, rest, ok := strings.Cut(e, "=")
		parts := strings.Split(rest, "|")
		if !ok || len(parts) < 2 || len(parts) > 3 {
			return nil, fmt.Errorf("entry %q: want name=url|secret|username", e)
		}
		h := GitHost{Name: strings.ToLower(strings.TrimSpace(name)), URL: strings.TrimSpace(parts[0]),
			Secret: strings.TrimSpace(parts[1]), Username: "git"}
		if len(parts) == 3 {
			h.Username = strings.TrimSpace(parts[2])
		}
		if len(h.Name) > 253 || !gitHostNameRE.MatchString(h.Name) {
			return nil, fmt.Errorf("entry %q: %q is not a host name", e, h.Name)
		}
		if u, err := url.Parse(h.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
			u.User != nil || u.RawQuery != "" {
			return nil, fmt.Errorf("entry %q: %q is not an http(s) URL without credentials or query", e, h.URL)
		}
		if !gitSecretNameRE.MatchString(h.Secret) {
			return nil, fmt.Errorf("entry %q: %q is not a secret name", e, h.Secret)
		}
		if !gitUsernameRE.MatchString(h.Username) {
			return nil, fmt.Errorf("entry %q: %q is not a user name", e, h.Username)
		}
		if seen[h.Name] {
			return nil, fmt.Errorf("host %s is given twice", h.Name)
		}
		seen[h.Name] = true
		out = append(out, h)
	}
	return out, nil
}

// OTLPHeaderMap parses OTLPHeaders, "k=v,k2=v2" (empty: none).
func (c Config) OTLPHeaderMap() (map[string]string, error) {
	if strings.TrimSpace(c.OTLPHeaders) == "" {
		return nil, nil
	}
	out := map[string]string{}
	for _, kv := range strings.Split(c.OTLPHeaders, ",") {
		k, v, ok := strings.Cut(kv, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" || strings.ContainsAny(k, " \t\r\n:") || strings.ContainsAny(v, "\r\n") {
			return nil, errors.New("must be comma-separated name=value pairs, e.g. x-api-key=SECRET")
		}
		out[k] = strings.TrimSpace(v)
	}
	return out, nil
}
