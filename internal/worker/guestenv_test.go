package worker_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/worker"
	"github.com/aetherium/aetherium/pkg/client"
)

// testCA returns a self-signed CA certificate in PEM.
func testCA(t *testing.T, name string) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func writeFile(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestLoadGuestSetupRefusesBadCAFiles: a CA file that is missing, not PEM, holds a private key or a broken
// certificate is an error naming it; a file of two certificates gives both.
func TestLoadGuestSetupRefusesBadCAFiles(t *testing.T) {
	a, b := testCA(t, "a"), testCA(t, "b")
	g, err := worker.LoadGuestSetup(worker.GuestOptions{CAFiles: []string{writeFile(t, "two.pem", append(append([]byte{}, a...), b...))}})
	if err != nil || len(g.CACerts) != 2 || string(g.CACerts[0]) != string(a) || string(g.CACerts[1]) != string(b) {
		t.Fatalf("two certificates: %v %v", g, err)
	}
	if g, err := worker.LoadGuestSetup(worker.GuestOptions{}); g != nil || err != nil {
		t.Fatalf("nothing set: %v %v", g, err)
	}
	broken := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("not der")})
	key := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte("secret")})
	for name, tc := range map[string]struct {
		data []byte
		want string
	}{
		"empty.pem":  {nil, "no PEM certificate"},
		"text.pem":   {[]byte("hello\n"), "no PEM certificate"},
		"key.pem":    {append(append([]byte{}, a...), key...), `block 2 is a "PRIVATE KEY"`},
		"broken.pem": {broken, "certificate 1"},
		"tail.pem":   {append(append([]byte{}, a...), "junk"...), "not PEM"},
	} {
		p := writeFile(t, name, tc.data)
		_, err := worker.LoadGuestSetup(worker.GuestOptions{CAFiles: []string{p}})
		if err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one naming the file and saying %q", name, err, tc.want)
		}
	}
	missing := filepath.Join(t.TempDir(), "missing.pem")
	if _, err := worker.LoadGuestSetup(worker.GuestOptions{CAFiles: []string{missing}}); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("missing file: %v", err)
	}
}

// TestGuestSetupInstallsCAsAndProxyEnv (Docker backend): a VM of a worker with extra CAs and proxy settings has the
// CAs in its system bundle and in NODE_EXTRA_CA_CERTS's file when it is running; its executions get the proxy
// settings (both cases, NO_PROXY with localhost) unless they set them themselves; the shells' files have them; a
// second setup of the same VM appends nothing again, and keeps what the bundle had.
func TestGuestSetupInstallsCAsAndProxyEnv(t *testing.T) {
	ca := testCA(t, "Corp Inspecting Proxy CA")
	g, err := worker.LoadGuestSetup(worker.GuestOptions{CAFiles: []string{writeFile(t, "corp.pem", ca)},
		HTTPProxy: "http://proxy.corp:3128", HTTPSProxy: "http://proxy.corp:3129", NoProxy: ".corp.example"})
	if err != nil {
		t.Fatal(err)
	}
	r := newRigWith(t, func(c *worker.Config) { c.Guest = g })
	vm := r.createVM("guestca")
	ctx := context.Background()
	run := func(env map[string]string, script string) *model.Execution {
		t.Helper()
		e, tk, err := r.svc.Execute(ctx, r.owner, vm.ID, client.ExecuteRequest{Command: "sh", Args: []string{"-c", script}, Env: env})
		if err != nil {
			t.Fatal(err)
		}
		r.wait(tk.ID)
		if e, err = r.st.Executions().Get(ctx, e.ID); err != nil {
			t.Fatal(err)
		}
		if e.Status != model.ExecutionCompleted || e.ExitCode == nil || *e.ExitCode != 0 {
			t.Fatalf("%q: %s exit %v %q %q", script, e.Status, e.ExitCode, e.Stderr, e.Error)
		}
		return e
	}
	if e := run(nil, "cat /etc/ssl/certs/ca-certificates.crt"); e.Stdout != string(ca) {
		t.Fatalf("system bundle %q, want the CA", e.Stdout)
	}
	if e := run(nil, `cat "$NODE_EXTRA_CA_CERTS"`); e.Stdout != string(ca) {
		t.Fatalf("NODE_EXTRA_CA_CERTS's file %q, want the CA", e.Stdout)
	}
	if e := run(nil, "cat /usr/local/share/ca-certificates/aetherium-1.crt"); e.Stdout != string(ca) {
		t.Fatalf("update-ca-certificates' copy %q", e.Stdout)
	}
	show := `echo "$HTTP_PROXY $http_proxy $HTTPS_PROXY $https_proxy $NO_PROXY $no_proxy $NODE_EXTRA_CA_CERTS"`
	noProxy := ".corp.example,localhost,127.0.0.1,::1"
	want := "http://proxy.corp:3128 http://proxy.corp:3128 http://proxy.corp:3129 http://proxy.corp:3129 " + noProxy + " " +
		noProxy + " " + worker.GuestCABundle + "\n"
	if e := run(nil, show); e.Stdout != want {
		t.Fatalf("execution env %q, want %q", e.Stdout, want)
	}
	// The execution's own setting wins, in either case; the others stay.
	e := run(map[string]string{"https_proxy": "http://mine:1"}, show)
	if want := "http://proxy.corp:3128 http://proxy.corp:3128  http://mine:1 " + noProxy + " " + noProxy + " " +
		worker.GuestCABundle + "\n"; e.Stdout != want {
		t.Fatalf("execution env with its own https_proxy %q, want %q", e.Stdout, want)
	}
	if e := run(nil, `env -i sh -c '. /etc/profile.d/aetherium-guest.sh; echo "$HTTPS_PROXY $NODE_EXTRA_CA_CERTS"'; grep -ci proxy /etc/environment`); e.Stdout != "http://proxy.corp:3129 "+worker.GuestCABundle+"\n6\n" {
		t.Fatalf("shell environment files: %q", e.Stdout)
	}

	// Again on the same VM (a retried create): nothing is added twice, and a bundle's own content stays.
	run(nil, `printf 'TEMPLATE-CAS' > /etc/ssl/certs/ca-certificates.crt; echo OTHER=1 >> /etc/environment`)
	ac, err := r.backend.Agent(ctx, vm.ID)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if err := worker.InstallGuestSetup(ctx, ac, g, vm, func(err error) { t.Errorf("shell environment: %v", err) }); err != nil {
			t.Fatal(err)
		}
	}
	if e := run(nil, "cat /etc/ssl/certs/ca-certificates.crt"); e.Stdout != "TEMPLATE-CAS\n"+string(ca) {
		t.Fatalf("bundle after two more setups %q", e.Stdout)
	}
	if e := run(nil, "grep -ci proxy /etc/environment; grep -c OTHER=1 /etc/environment"); e.Stdout != "6\n1\n" {
		t.Fatalf("/etc/environment after two more setups: %q", e.Stdout)
	}
}
