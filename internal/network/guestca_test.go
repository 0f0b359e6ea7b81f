//go:build linux

package network

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/worker"
)

// inspectingProxy is a corporate proxy that inspects TLS: guests reach it on their gateway, it answers every
// CONNECT by connecting to one TLS server (whose certificate a private CA signed, for every name), and it records
// what was asked.
type inspectingProxy struct {
	upstream string
	mu       sync.Mutex
	targets  []string
}

func (p *inspectingProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodConnect {
		http.Error(w, "CONNECT only", http.StatusMethodNotAllowed)
		return
	}
	p.mu.Lock()
	p.targets = append(p.targets, r.Host)
	p.mu.Unlock()
	up, err := net.Dial("tcp", p.upstream)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer up.Close()
	conn, rw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	if _, err := rw.WriteString("HTTP/1.1 200 Connection established\r\n\r\n"); err != nil || rw.Flush() != nil {
		return
	}
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, rw); done <- struct{}{} }()
	go func() { _, _ = io.Copy(conn, up); done <- struct{}{} }()
	<-done
}

func (p *inspectingProxy) asked() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.targets...)
}

// testPKI returns a CA's certificate in PEM and a server certificate it signed for names, with the CA in its chain
// (as an inspecting proxy sends it, hence "self-signed certificate in certificate chain" without the CA).
func testPKI(t *testing.T, names ...string) ([]byte, tls.Certificate) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Corp TLS Inspection CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: names[0]}, DNSNames: names,
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		tls.Certificate{Certificate: [][]byte{leafDER, caDER}, PrivateKey: key}
}

// TestGuestCAAndProxySettings is the guest setup (worker.InstallGuestSetup, guest_ca_files and guest_https_proxy)
// in a real VM of the default template on a host whose only way out is a TLS-inspecting proxy: with the proxy
// settings alone, git (libcurl, GnuTLS, the system bundle) and npm (Node.js) refuse the proxy's certificates, npm with
// "self-signed certificate in certificate chain"; once the worker has installed the CA, both work through the
// proxy with nothing but the environment the worker gives executions.
func TestGuestCAAndProxySettings(t *testing.T) {
	tmpl := requireToolsTemplate(t)
	requireGuests(t)
	topo := newTopology(t)
	st := sqliteStore(t)
	m := newManager(t, topo.host, st.Leases(), func(c *Config) { c.GuestOnlyPorts = []uint16{proxyPort} })
	att := mustAttach(t, m, "guest-ca", Policy{})
	g := bootGuestFrom(t, topo.host, att, tmpl, "max", 1024)
	gw := m.Gateway().String()

	// The servers behind the proxy, on loopback of the test's namespace: a git repository and an npm registry's ping.
	caPEM, cert := testPKI(t, "git.corp.test", "registry.corp.test")
	root := t.TempDir()
	bare := filepath.Join(root, "org", "repo.git")
	seed := t.TempDir()
	for _, c := range [][]string{{"init", "-q", "--bare", "-b", "main", bare}, {"-C", seed, "init", "-q", "-b", "main"},
		{"-C", seed, "commit", "-q", "--allow-empty", "-m", "upstream commit"}, {"-C", seed, "push", "-q", bare, "main"}} {
		cmd := exec.Command("git", c...)
		cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=u", "GIT_AUTHOR_EMAIL=u@x", "GIT_COMMITTER_NAME=u", "GIT_COMMITTER_EMAIL=u@x")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", c, err, out)
		}
	}
	execPath, err := exec.Command("git", "--exec-path").Output()
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Host == "registry.corp.test" {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, "{}")
			return
		}
		(&cgi.Handler{Path: filepath.Join(strings.TrimSpace(string(execPath)), "git-http-backend"),
			Env: []string{"GIT_PROJECT_ROOT=" + root, "GIT_HTTP_EXPORT_ALL=1"}}).ServeHTTP(w, r)
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.StartTLS()
	defer srv.Close()
	proxy := &inspectingProxy{upstream: srv.Listener.Addr().String()}
	ln := listen(t, topo.host, "tcp4", net.JoinHostPort(gw, fmt.Sprint(proxyPort)))
	psrv := &http.Server{Handler: proxy, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = psrv.Serve(ln) }()
	defer psrv.Close()

	caFile := filepath.Join(t.TempDir(), "corp-ca.pem")
	if err := os.WriteFile(caFile, caPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	setup, err := worker.LoadGuestSetup(worker.GuestOptions{CAFiles: []string{caFile}, HTTPSProxy: fmt.Sprintf("http://%s:%d", gw, proxyPort)})
	if err != nil {
		t.Fatal(err)
	}
	vm := &model.VM{ID: att.VMID, Network: &model.VMNetwork{Gateway: gw}}
	env := setup.Env(vm)
	const (
		gitCmd = `git ls-remote https://git.corp.test/org/repo.git 2>&1`
		npmCmd = `cd /tmp && npm_config_update_notifier=false npm ping --registry https://registry.corp.test/ 2>&1`
	)

	// The proxy settings without the CA: the guest reaches the proxy and refuses what it shows.
	withoutCA := map[string]string{"HTTPS_PROXY": env["HTTPS_PROXY"], "https_proxy": env["https_proxy"]}
	if out, code := g.shEnv(t, withoutCA, gitCmd); code == 0 || !strings.Contains(strings.ToLower(out), "certificate") {
		t.Fatalf("git without the CA exited %d (want a certificate error):\n%s", code, out)
	}
	if out, code := g.shEnv(t, withoutCA, npmCmd); code == 0 || !strings.Contains(out, "self-signed certificate in certificate chain") {
		t.Fatalf("npm without the CA exited %d (want the self-signed certificate error):\n%s", code, out)
	}
	if n := len(proxy.asked()); n < 2 {
		t.Fatalf("the guest did not go through the proxy: %v", proxy.asked())
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := worker.InstallGuestSetup(ctx, g.client, setup, vm, func(err error) { t.Errorf("shell environment: %v", err) }); err != nil {
		t.Fatal(err)
	}
	if out := g.mustEnv(t, "git through the proxy with the CA", env, gitCmd); !strings.Contains(out, "refs/heads/main") {
		t.Fatalf("git ls-remote: %s", out)
	}
	if out := g.mustEnv(t, "npm through the proxy with the CA", env, npmCmd); !strings.Contains(out, "PONG") {
		t.Fatalf("npm ping: %s", out)
	}
	// A login shell has the same settings, from the files the setup wrote.
	if out := g.must(t, "a login shell's environment", `env -i /bin/sh -lc 'echo "$HTTPS_PROXY $NODE_EXTRA_CA_CERTS"'`); strings.TrimSpace(out) !=
		env["HTTPS_PROXY"]+" "+worker.GuestCABundle {
		t.Fatalf("login shell: %q", out)
	}
	t.Logf("CONNECT targets: %v", proxy.asked())
}
