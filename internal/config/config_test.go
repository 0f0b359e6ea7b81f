package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func load(t *testing.T, file string, env map[string]string, args ...string) (Config, error) {
	t.Helper()
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	Flags(fs)
	if file != "" {
		p := filepath.Join(t.TempDir(), "aetherium.yaml")
		if err := os.WriteFile(p, []byte(file), 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, "--config", p)
	}
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return Load(fs, func(k string) string { return env[k] })
}

func TestPrecedenceFlagsOverEnvOverFileOverDefaults(t *testing.T) {
	file := "listen: \":7000\"\nconcurrency: 3\nworker_id: from-file\nready_timeout: 45s\ndata_dir: /tmp/x\n"
	env := map[string]string{"AETHERIUM_LISTEN": ":7001", "AETHERIUM_WORKER_ID": "from-env"}
	c, err := load(t, file, env, "--worker-id", "from-flag")
	if err != nil {
		t.Fatal(err)
	}
	if c.WorkerID != "from-flag" || c.Listen != ":7001" || c.Concurrency != 3 || c.ReadyWait != 45*time.Second {
		t.Fatalf("got worker=%q listen=%q concurrency=%d ready=%s", c.WorkerID, c.Listen, c.Concurrency, c.ReadyWait)
	}
	if c.Backend != "auto" || c.QEMUAccel != "auto" || c.MaxRetries != 3 {
		t.Fatalf("defaults not applied: backend=%q retries=%d", c.Backend, c.MaxRetries)
	}
	if c.DatabaseURL != "sqlite:///tmp/x/aetherium.db" {
		t.Fatalf("default database url = %q", c.DatabaseURL)
	}
}

func TestInvalidValuesNameTheSetting(t *testing.T) {
	cases := []struct {
		name, file string
		env        map[string]string
		args       []string
		want       string
	}{
		{"unknown file key", "lisen: x\n", nil, nil, `unknown key "lisen"`},
		{"bad duration in file", "ready_timeout: soon\n", nil, nil, "ready_timeout"},
		{"bad env integer", "", map[string]string{"AETHERIUM_CONCURRENCY": "many"}, nil, "AETHERIUM_CONCURRENCY"},
		{"bad listen flag", "", nil, []string{"--listen", "nowhere"}, "listen"},
		{"bad database url", "", nil, []string{"--database-url", "mysql://x"}, "database_url"},
		{"bad redis url", "", nil, []string{"--redis-url", "http://x"}, "redis_url"},
		{"bad credproxy port", "", nil, []string{"--credproxy-port", "70000"}, "credproxy_port"},
		{"model upstream with credentials", "", map[string]string{"AETHERIUM_MODEL_UPSTREAM_URL": "https://u:p@gw.corp"}, nil, "model_upstream_url"},
		{"bad openai upstream", "openai_upstream_url: ftp://x\n", nil, nil, "openai_upstream_url"},
		{"bad backend", "", nil, []string{"--backend", "vmware"}, "backend"},
		{"bad qemu accel", "", nil, []string{"--qemu-accel", "hvf"}, "qemu_accel"},
		{"bad worker id", "", nil, []string{"--worker-id", "no spaces"}, "worker_id"},
		{"concurrency out of range", "", nil, []string{"--concurrency", "0"}, "concurrency"},
		{"nested yaml", "listen:\n  a: b\n", nil, nil, "single value"},
		{"debug listen off loopback", "", nil, []string{"--debug-listen", "0.0.0.0:6060"}, "debug_listen"},
		{"debug listen by name", "", nil, []string{"--debug-listen", "localhost:6060"}, "debug_listen"},
		{"metrics listen without a port", "", nil, []string{"--metrics-listen", "127.0.0.1"}, "metrics_listen"},
		{"metrics listen with an empty port", "metrics_listen: \"127.0.0.1:\"\n", nil, nil, "metrics_listen"},
		{"events retention too short", "", nil, []string{"--events-retention", "10s"}, "events_retention"},
		{"events per owner too few", "", map[string]string{"AETHERIUM_EVENTS_MAX_PER_OWNER": "5"}, nil, "events_max_per_owner"},
		{"short metrics token", "", map[string]string{"AETHERIUM_METRICS_TOKEN": "short"}, nil, "metrics_token"},
		{"relative guest ca file", "guest_ca_files: /etc/corp.pem, corp.pem\n", nil, nil, "guest_ca_files"},
		{"guest proxy not a url", "", map[string]string{"AETHERIUM_GUEST_HTTPS_PROXY": "proxy.corp:3128"}, nil, "guest_https_proxy"},
		{"guest proxy socks", "", nil, []string{"--guest-http-proxy", "socks5://p:1080"}, "guest_http_proxy"},
		{"guest no proxy with a space", "", nil, []string{"--guest-no-proxy", "a, b"}, "guest_no_proxy"},
		{"loki url not http", "", map[string]string{"AETHERIUM_LOKI_URL": "loki:3100"}, nil, "loki_url"},
		{"loki format unknown", "loki_url: http://loki:3100\nloki_format: msgpack\n", nil, nil, "loki_format"},
		{"loki format in capitals", "", map[string]string{"AETHERIUM_LOKI_URL": "http://loki:3100"}, []string{"--loki-format", "JSON"}, "loki_format"},
		{"loki url with credentials", "loki_url: http://u:p@loki:3100\n", nil, nil, "loki_url"},
		{"loki tenant without url", "", nil, []string{"--loki-tenant", "t1"}, "loki_tenant"},
		{"loki password without user", "loki_url: http://loki:3100\nloki_password: p\n", nil, nil, "loki_username"},
		{"loki basic and bearer", "loki_url: http://loki:3100\nloki_username: u\nloki_bearer_token: t\n", nil, nil, "loki_bearer_token"},
		{"loki password file missing", "loki_url: http://loki:3100\nloki_username: u\nloki_password_file: /nonexistent/pw\n", nil, nil, "loki_password_file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := load(t, tc.file, tc.env, tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

func TestRedactedHidesPasswords(t *testing.T) {
	c, err := load(t, "", nil, "--database-url", "postgres://u:secret@db/x?password=qsecret", "--redis-url", "redis://:hunter2@r:6379/0",
		"--secrets-key", "c2VjcmV0cy1rZXktMzItYnl0ZXMtbG9uZy0tLS0tLS0=", "--secrets-old-keys", "b2xkLWtleQ==",
		"--guest-https-proxy", "http://me:proxypass@proxy.corp:3128", "--metrics-token", "metrics-token-0123456789")
	if err != nil {
		t.Fatal(err)
	}
	r := c.Redacted()
	if strings.Contains(r, ":secret@") || strings.Contains(r, "qsecret") || strings.Contains(r, "hunter2") ||
		strings.Contains(r, "c2VjcmV0cy1r") || strings.Contains(r, "b2xkLWtleQ") || strings.Contains(r, "proxypass") ||
		strings.Contains(r, "metrics-token-0123456789") {
		t.Fatalf("redacted config leaks a password:\n%s", r)
	}
}

// TestMetricsSettings: metrics are on by default on loopback; every source can move them or turn them off (the
// environment with "off", since an empty variable counts as unset), and any address is accepted.
func TestMetricsSettings(t *testing.T) {
	for _, c := range []struct {
		name, file string
		env        map[string]string
		args       []string
		want       string
	}{
		{"default", "", nil, nil, DefaultMetricsListen},
		{"file", "metrics_listen: 127.0.0.1:9500\n", nil, nil, "127.0.0.1:9500"},
		{"file off by empty", "metrics_listen: \"\"\n", nil, nil, ""},
		{"env over file", "metrics_listen: 127.0.0.1:9500\n", map[string]string{"AETHERIUM_METRICS_LISTEN": "0.0.0.0:9464"}, nil, "0.0.0.0:9464"},
		{"env off", "", map[string]string{"AETHERIUM_METRICS_LISTEN": "off"}, nil, ""},
		{"flag over env", "", map[string]string{"AETHERIUM_METRICS_LISTEN": "off"}, []string{"--metrics-listen", ":9464"}, ":9464"},
		{"flag off by empty", "", nil, []string{"--metrics-listen="}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := load(t, c.file, c.env, c.args...)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.MetricsListen != c.want {
				t.Fatalf("metrics_listen = %q, want %q", cfg.MetricsListen, c.want)
			}
		})
	}
	cfg, err := load(t, "", map[string]string{"AETHERIUM_METRICS_TOKEN": "0123456789abcdef"})
	if err != nil || cfg.MetricsToken != "0123456789abcdef" {
		t.Fatalf("token from env: %q %v", cfg.MetricsToken, err)
	}
}

// TestGuestSettings: the guest CA files and proxy settings are read as given; no setting means none.
func TestGuestSettings(t *testing.T) {
	c, err := load(t, "guest_ca_files: \" /etc/corp/a.pem,,/etc/corp/b.pem \"\nguest_no_proxy: .corp.example,10.0.0.0/8\n",
		map[string]string{"AETHERIUM_GUEST_HTTP_PROXY": "http://proxy.corp:3128"}, "--guest-https-proxy", "https://proxy.corp:3129")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(c.GuestCAFileList(), " "); got != "/etc/corp/a.pem /etc/corp/b.pem" || c.GuestHTTPProxy != "http://proxy.corp:3128" ||
		c.GuestHTTPSProxy != "https://proxy.corp:3129" || c.GuestNoProxy != ".corp.example,10.0.0.0/8" {
		t.Fatalf("got files %q, proxies %q %q %q", got, c.GuestHTTPProxy, c.GuestHTTPSProxy, c.GuestNoProxy)
	}
	if c, err = load(t, "", nil); err != nil || c.GuestCAFileList() != nil || c.GuestHTTPProxy != "" || c.GuestHTTPSProxy != "" {
		t.Fatalf("defaults: %+v %v", c, err)
	}
}

// TestJailerSettings: the jailer runs Firecracker as a non-root id unless told otherwise, and bad jailer values
// name their setting.
func TestJailerSettings(t *testing.T) {
	c, err := load(t, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.JailerUID != DefaultJailerID || c.JailerGID != DefaultJailerID || c.JailerUID == 0 || c.JailerCgroupVersion != 2 {
		t.Fatalf("jailer defaults uid=%d gid=%d cgroup=%d", c.JailerUID, c.JailerGID, c.JailerCgroupVersion)
	}
	c, err = load(t, "jailer_uid: 2000\njailer_cgroups: cpu.max=100000 memory.max=1073741824\n",
		map[string]string{"AETHERIUM_JAILER_NETNS": "/var/run/netns/vms"}, "--jailer-gid", "3000")
	if err != nil {
		t.Fatal(err)
	}
	if c.JailerUID != 2000 || c.JailerGID != 3000 || c.JailerNetNS != "/var/run/netns/vms" ||
		c.JailerCgroups != "cpu.max=100000 memory.max=1073741824" {
		t.Fatalf("jailer settings %+v", c)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--jailer-uid", "-1"}, "jailer_uid"},
		{[]string{"--jailer-uid", "0"}, "not root"},
		{[]string{"--jailer-gid", "x"}, "--jailer-gid"},
		{[]string{"--jailer-cgroup-version", "3"}, "jailer_cgroup_version"},
		{[]string{"--jailer-cgroups", "cpu.max"}, "jailer_cgroups"},
		{[]string{"--jailer-cgroups", "max=1"}, "jailer_cgroups"},
		{[]string{"--jailer-netns", "vms"}, "jailer_netns"},
	} {
		if _, err := load(t, "", nil, tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want it to mention %s", tc.args, err, tc.want)
		}
	}
}

func TestShutdownVMs(t *testing.T) {
	c, err := load(t, "", nil)
	if err != nil || c.ShutdownVMs {
		t.Fatalf("default shutdown_vms = %v (%v), want false: VMs outlive their worker unless asked", c.ShutdownVMs, err)
	}
	if c, err = load(t, "", nil, "--shutdown-vms"); err != nil || !c.ShutdownVMs {
		t.Fatalf("--shutdown-vms alone: %v, %v", c.ShutdownVMs, err)
	}
	if c, err = load(t, "", map[string]string{"AETHERIUM_SHUTDOWN_VMS": "true"}, "--shutdown-vms=false"); err != nil || c.ShutdownVMs {
		t.Fatalf("--shutdown-vms=false over the env: %v, %v", c.ShutdownVMs, err)
	}
	if c, err = load(t, "shutdown_vms: true\n", nil); err != nil || !c.ShutdownVMs {
		t.Fatalf("shutdown_vms in the file: %v, %v", c.ShutdownVMs, err)
	}
	if _, err = load(t, "", map[string]string{"AETHERIUM_SHUTDOWN_VMS": "maybe"}); err == nil || !strings.Contains(err.Error(), "AETHERIUM_SHUTDOWN_VMS") {
		t.Fatalf("a bad value: %v, want an error naming AETHERIUM_SHUTDOWN_VMS", err)
	}
}

func TestCredProxySettings(t *testing.T) {
	c, err := load(t, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.CredProxyPort != 8091 || c.ModelUpstreamURL != "https://api.anthropic.com" || c.OpenAIUpstreamURL != "https://api.openai.com" {
		t.Fatalf("defaults: port %d, %q, %q", c.CredProxyPort, c.ModelUpstreamURL, c.OpenAIUpstreamURL)
	}
	c, err = load(t, "model_upstream_url: https://llm.corp.example/anthropic\n",
		map[string]string{"AETHERIUM_CREDPROXY_PORT": "0"})
	if err != nil {
		t.Fatal(err)
	}
	if c.CredProxyPort != 0 || c.ModelUpstreamURL != "https://llm.corp.example/anthropic" {
		t.Fatalf("got port %d, %q", c.CredProxyPort, c.ModelUpstreamURL)
	}
}

func TestLokiSettings(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	if err := os.WriteFile(pw, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	Flags(fs)
	env := map[string]string{"AETHERIUM_DATA_DIR": dir, "AETHERIUM_LOKI_URL": "https://logs.corp:3100",
		"AETHERIUM_LOKI_TENANT": "team-a", "AETHERIUM_LOKI_USERNAME": "aeth", "AETHERIUM_LOKI_PASSWORD_FILE": pw}
	c, err := Load(fs, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if c.LokiURL != "https://logs.corp:3100" || c.LokiTenant != "team-a" || c.LokiUsername != "aeth" || c.LokiPassword != "s3cret" {
		t.Fatalf("loki settings %+v", c)
	}
	if c.LokiFormat != "protobuf" {
		t.Fatalf("loki_format defaults to %q, want protobuf (Loki's native format)", c.LokiFormat)
	}
	env["AETHERIUM_LOKI_FORMAT"] = "json"
	fs = pflag.NewFlagSet("t", pflag.ContinueOnError)
	Flags(fs)
	if c, err = Load(fs, func(k string) string { return env[k] }); err != nil || c.LokiFormat != "json" {
		t.Fatalf("AETHERIUM_LOKI_FORMAT=json: %q, %v", c.LokiFormat, err)
	}
	if strings.Contains(c.Redacted(), "s3cret") {
		t.Fatal("Redacted shows the Loki password")
	}
}
