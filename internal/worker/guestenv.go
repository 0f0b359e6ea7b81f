package worker

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"slices"
	"strings"

	"github.com/aetherium/aetherium/internal/agent"
	agentclient "github.com/aetherium/aetherium/internal/agent/client"
	"github.com/aetherium/aetherium/internal/model"
)

// Guest setup: on hosts behind a TLS-inspecting proxy, guests need the host's extra CA certificates and its proxy
// settings, or `npm install` in a VM fails with "self-signed certificate in certificate chain". Templates are
// built once and shared, so the worker puts both into every VM when it starts it, through the agent's file API:
// that works for templates built before the setting, on every backend, and needs no shell in the guest.
//
//   - Each CA goes to /usr/local/share/ca-certificates/aetherium-<n>.crt (so a later update-ca-certificates in
//     the guest keeps it) and is appended to the system bundle /etc/ssl/certs/ca-certificates.crt, which
//     OpenSSL, curl, git and apt read. Running update-ca-certificates would need a shell and take seconds.
//   - Node.js does not read the system store; Node and Bun read NODE_EXTRA_CA_CERTS, which names a concatenation
//     of the CAs (GuestCABundle) and is in every execution's environment.
//   - The proxy settings (both cases of HTTP_PROXY, HTTPS_PROXY, NO_PROXY; npm and Bun honour them) are in every
//     execution's environment unless it sets them itself, and in /etc/environment and /etc/profile.d for shells.

// Where the guest setup puts things in the guest.
const (
	GuestCADir       = "/usr/local/share/ca-certificates"
	GuestCABundle    = "/usr/local/share/aetherium/extra-ca-certificates.pem"
	GuestSystemCAs   = "/etc/ssl/certs/ca-certificates.crt"
	guestEnvFile     = "/etc/environment"
	guestProfileFile = "/etc/profile.d/aetherium-guest.sh"
)

// maxGuestFile bounds what the setup reads back from a guest (its CA bundle, /etc/environment): the guest could
// have made them anything.
const maxGuestFile = 8 << 20

// GuestSetup is what every VM of a worker gets at start (see above). The zero value adds nothing.
type GuestSetup struct {
	// CACerts are the extra CA certificates, each one PEM CERTIFICATE block.
	CACerts [][]byte
	// HTTPProxy, HTTPSProxy and NoProxy are the proxy settings ("": unset).
	HTTPProxy, HTTPSProxy, NoProxy string
}

// GuestOptions are the guest settings of the configuration (internal/config guest_*).
type GuestOptions struct {
	CAFiles                        []string
	HTTPProxy, HTTPSProxy, NoProxy string
}

// maxCAFile bounds one CA file (a bundle of a few hundred certificates is well under it).
const maxCAFile = 4 << 20

// LoadGuestSetup reads and checks o's CA files: each must hold at least one certificate that crypto/x509 parses,
// and nothing else that PEM encodes, so a private key put in by mistake never reaches a guest. It returns nil when
// o sets nothing.
func LoadGuestSetup(o GuestOptions) (*GuestSetup, error) {
	if len(o.CAFiles) == 0 && o.HTTPProxy == "" && o.HTTPSProxy == "" && o.NoProxy == "" {
		return nil, nil
	}
	g := &GuestSetup{HTTPProxy: o.HTTPProxy, HTTPSProxy: o.HTTPSProxy, NoProxy: o.NoProxy}
	for _, path := range o.CAFiles {
		certs, err := readCAFile(path)
		if err != nil {
			return nil, err
		}
		g.CACerts = append(g.CACerts, certs...)
	}
	return g, nil
}

func readCAFile(path string) ([][]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("CA file %s: %w", path, err)
	}
	if !st.Mode().IsRegular() || st.Size() > maxCAFile {
		return nil, fmt.Errorf("CA file %s: not a regular file of at most %d bytes", path, maxCAFile)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("CA file %s: %w", path, err)
	}
	var certs [][]byte
	for n := 1; ; n++ {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("CA file %s: PEM block %d is a %q, not a CERTIFICATE", path, n, b.Type)
		}
		if _, err := x509.ParseCertificate(b.Bytes); err != nil {
			return nil, fmt.Errorf("CA file %s: certificate %d: %w", path, n, err)
		}
		certs = append(certs, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: b.Bytes}))
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("CA file %s: no PEM certificate in it", path)
	}
	if len(bytes.TrimSpace(data)) > 0 {
		return nil, fmt.Errorf("CA file %s: text after the last certificate is not PEM", path)
	}
	return certs, nil
}

// Env is what g adds to the environment of vm's executions (and its shells): the proxy settings in both cases,
// with localhost and vm's gateway (where the worker's credential proxy listens) never proxied, and
// NODE_EXTRA_CA_CERTS.
func (g *GuestSetup) Env(vm *model.VM) map[string]string {
	out := map[string]string{}
	if g == nil {
		return out
	}
	set := func(name, v string) {
		if v != "" {
			out[strings.ToUpper(name)], out[strings.ToLower(name)] = v, v
		}
	}
	set("HTTP_PROXY", g.HTTPProxy)
	set("HTTPS_PROXY", g.HTTPSProxy)
	noProxy := g.NoProxy
	if g.HTTPProxy != "" || g.HTTPSProxy != "" {
		hosts := []string{"localhost", "127.0.0.1", "::1"}
		if vm != nil && vm.Network != nil && vm.Network.Gateway != "" {
			hosts = append(hosts, vm.Network.Gateway)
		}
		for _, h := range hosts {
			if !containsHost(noProxy, h) {
				noProxy = strings.TrimPrefix(noProxy+","+h, ",")
			}
		}
	}
	set("NO_PROXY", noProxy)
	if len(g.CACerts) > 0 {
		out["NODE_EXTRA_CA_CERTS"] = GuestCABundle
	}
	return out
}

func containsHost(list, h string) bool {
	for _, x := range strings.Split(list, ",") {
		if strings.TrimSpace(x) == h {
			return true
		}
	}
	return false
}

// guestExecEnv lays the guest setup's environment under env: what the execution sets itself wins (both cases are
// one setting: an execution that sets https_proxy keeps it and gets no HTTPS_PROXY of ours).
func (w *Worker) guestExecEnv(vm *model.VM, env map[string]string) map[string]string {
	add := w.cfg.Guest.Env(vm)
	if len(add) == 0 {
		return env
	}
	out := make(map[string]string, len(env)+len(add))
	for k, v := range add {
		_, upper := env[strings.ToUpper(k)]
		_, lower := env[strings.ToLower(k)]
		if !upper && !lower {
			out[k] = v
		}
	}
	for k, v := range env {
		out[k] = v
	}
	return out
}

// setupGuest installs the guest setup into a VM that has just started, before it is reported running. It is
// idempotent (a retried create, or a template that has the CAs already, gets no second copy). The trust store is
// required; the shell environment files are best effort.
func (w *Worker) setupGuest(ctx context.Context, vm *model.VM) error {
	g := w.cfg.Guest
	if g == nil {
		return nil
	}
	c, err := w.cfg.Backend.Agent(ctx, vm.ID)
	if err != nil {
		return fmt.Errorf("reach the agent to set up the guest: %w", err)
	}
	return InstallGuestSetup(ctx, c, g, vm, func(err error) {
		w.log.Warn("write the guest's shell environment", "vm_id", vm.ID, "err", err)
	})
}

// InstallGuestSetup installs g into the guest of vm behind c (see setupGuest); the failure of the best-effort part,
// the shell environment files, goes to warn.
func InstallGuestSetup(ctx context.Context, c *agentclient.Client, g *GuestSetup, vm *model.VM, warn func(error)) error {
	if g == nil {
		return nil
	}
	if len(g.CACerts) > 0 {
		if err := installGuestCAs(ctx, c, g.CACerts); err != nil {
			return fmt.Errorf("install the extra CA certificates: %w", err)
		}
	}
	if env := g.Env(vm); len(env) > 0 {
		if err := writeGuestShellEnv(ctx, c, env); err != nil && warn != nil {
			warn(err)
		}
	}
	return nil
}

func installGuestCAs(ctx context.Context, c *agentclient.Client, certs [][]byte) error {
	for i, cert := range certs {
		if err := upload(ctx, c, fmt.Sprintf("%s/aetherium-%d.crt", GuestCADir, i+1), cert); err != nil {
			return err
		}
	}
	if err := upload(ctx, c, GuestCABundle, bytes.Join(certs, nil)); err != nil {
		return err
	}
	bundle, err := download(ctx, c, GuestSystemCAs)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	orig := len(bundle)
	for _, cert := range certs {
		if bytes.Contains(bundle, bytes.TrimSpace(cert)) {
			continue
		}
		if len(bundle) > 0 && bundle[len(bundle)-1] != '\n' {
			bundle = append(bundle, '\n')
		}
		bundle = append(bundle, cert...)
	}
	if len(bundle) == orig {
		return nil
	}
	return upload(ctx, c, GuestSystemCAs, bundle)
}

// writeGuestShellEnv puts env into /etc/environment (read by PAM logins), replacing earlier lines of the same
// names, and into a profile script (read by login shells). Values are the operator's, quoted anyway.
func writeGuestShellEnv(ctx context.Context, c *agentclient.Client, env map[string]string) error {
	old, err := download(ctx, c, guestEnvFile)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	var b bytes.Buffer
	for _, line := range strings.SplitAfter(string(old), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), "export ")), "=")
		if _, ours := env[name]; !ours && line != "" {
			b.WriteString(line)
		}
	}
	if b.Len() > 0 && !bytes.HasSuffix(b.Bytes(), []byte("\n")) {
		b.WriteByte('\n')
	}
	var profile bytes.Buffer
	profile.WriteString("# Written by the Aetherium worker at VM start (guest_* settings).\n")
	for _, k := range slices.Sorted(maps.Keys(env)) {
		fmt.Fprintf(&b, "%s=\"%s\"\n", k, env[k])
		fmt.Fprintf(&profile, "export %s='%s'\n", k, strings.ReplaceAll(env[k], "'", `'\''`))
	}
	if err := upload(ctx, c, guestEnvFile, b.Bytes()); err != nil {
		return err
	}
	return upload(ctx, c, guestProfileFile, profile.Bytes())
}

func upload(ctx context.Context, c *agentclient.Client, path string, data []byte) error {
	if _, err := c.Upload(ctx, agent.UploadRequest{Path: path, Mode: 0o644, MkdirParents: true}, bytes.NewReader(data)); err != nil {
		return fmt.Errorf("upload %s: %w", path, err)
	}
	return nil
}

// download reads path from the guest, at most maxGuestFile bytes.
func download(ctx context.Context, c *agentclient.Client, path string) ([]byte, error) {
	var buf limitBuffer
	if _, err := c.Download(ctx, path, &buf); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s: %w", path, fs.ErrNotExist)
		}
		return nil, fmt.Errorf("download %s: %w", path, err)
	}
	return buf.Bytes(), nil
}

// limitBuffer is a bytes.Buffer that refuses to grow past maxGuestFile.
type limitBuffer struct{ bytes.Buffer }

func (b *limitBuffer) Write(p []byte) (int, error) {
	if b.Len()+len(p) > maxGuestFile {
		return 0, fmt.Errorf("larger than %d bytes", maxGuestFile)
	}
	return b.Buffer.Write(p)
}
