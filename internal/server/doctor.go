package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/aetherium/aetherium/internal/config"
	"github.com/aetherium/aetherium/internal/vmm/qemu"
)

// CheckStatus is the outcome of one host check.
type CheckStatus string

// Outcomes of a check.
const (
	CheckOK   CheckStatus = "ok"
	CheckWarn CheckStatus = "warn"
	CheckFail CheckStatus = "fail"
)

// Check is one thing `aetherium doctor` verified, and how to fix it when it failed.
type Check struct {
	Name   string      `json:"name"`
	Status CheckStatus `json:"status"`
	Detail string      `json:"detail"`
	Fix    string      `json:"fix,omitempty"`
}

// Doctor checks that this host can run the configured roles: it opens what the server would open (data directory,
// store, Redis, the VM backend) with the same code, so a check passes exactly when the server would start, and says
// how to fix what fails. It changes nothing but a probe file in the data directory.
func Doctor(ctx context.Context, cfg config.Config, roles Roles, log *slog.Logger) []Check {
	var checks []Check
	add := func(name string, err error, okDetail, fix string) {
		if err != nil {
			detail := strings.ReplaceAll(strings.TrimSpace(err.Error()), "\n", "; ")
			checks = append(checks, Check{Name: name, Status: CheckFail, Detail: detail, Fix: fix})
			return
		}
		checks = append(checks, Check{Name: name, Status: CheckOK, Detail: okDetail})
	}
	step := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, 20*time.Second) }

	add("data directory", probeWritable(cfg.DataDir), cfg.DataDir,
		"create it or choose another with --data-dir (the worker needs a short path: agent sockets live below it)")

	sctx, cancel := step()
	st, err := OpenStore(sctx, cfg, false)
	if err == nil {
		err = st.Ping(sctx)
		st.Close()
	}
	cancel()
	add("database", err, redactedScheme(cfg.DatabaseURL), "check database_url; for PostgreSQL, that the server runs and accepts this user")
	if err == nil {
		sctx, cancel := step()
		checks = append(checks, checkSecretsKey(sctx, cfg, roles))
		cancel()
	}

	if cfg.RedisURL != "" {
		addr := ""
		opt, perr := redis.ParseURL(cfg.RedisURL)
		if perr == nil {
			addr = opt.Addr
			opt.MaxRetries, opt.DialerRetries = -1, 1 // one honest try: the answer is the check
			rctx, cancel := step()
			c := redis.NewClient(opt)
			perr = c.Ping(rctx).Err()
			c.Close()
			cancel()
		}
		add("redis", perr, addr, "check redis_url and that Redis runs")
	}

	if roles.API {
		add("api listen address", probeListen(cfg.Listen), cfg.Listen, "free the port or choose another with --listen")
	}

	if cfg.MetricsListen != "" {
		add("metrics listen address", probeListen(cfg.MetricsListen), cfg.MetricsListen,
			"free the port, give each aetherium process on this host its own --metrics-listen, or set it to off")
	}

	if roles.Worker {
		checks = append(checks, backendChecks(ctx, cfg, log)...)
		checks = append(checks, firecrackerChecks(ctx, cfg, defaultFirecrackerHost())...)
	}
	return checks
}

// backendChecks opens the VM backend as the worker would and checks what microVMs need: the kernel and default
// template, and whether KVM really runs guests here (a probe boot, not only the device node).
func backendChecks(ctx context.Context, cfg config.Config, log *slog.Logger) []Check {
	var checks []Check
	bctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if cfg.InstallationID == "" {
		// As the worker would: the backend adopts and reaps only this installation's VMMs.
		if id, err := InstallationID(cfg.DataDir); err == nil {
			cfg.InstallationID = id
		}
	}
	backend, err := openBackend(bctx, cfg, nil, nil, log)
	name := cfg.Backend
	if err == nil {
		name = backend.Name()
		err = backend.Health(bctx)
		backend.Close()
	}
	fixes := map[string]string{
		"docker": "run scripts/setup.sh (installs docker.io and busybox-static, starts dockerd); build the agent with make build",
		"qemu": "run scripts/setup.sh (installs qemu-system-x86 and qemu-utils), then `aetherium image kernel build` and " +
			"`aetherium image build --name default ...`",
		"firecracker": "install firecracker, build the kernel and a default template (`aetherium image kernel build`, " +
			"`aetherium image build --name default`), and check /dev/kvm",
		"auto": "make one backend work: see the reasons above; scripts/setup.sh and `make images` set up qemu and docker",
	}
	detail := "ready"
	if cfg.Backend == "auto" && err == nil {
		detail = "auto chose " + name
	}
	c := Check{Name: "vm backend (" + name + ")", Status: CheckOK, Detail: detail}
	if err != nil {
		c.Status, c.Detail, c.Fix = CheckFail, err.Error(), fixes[name]
	}
	checks = append(checks, c)
	if cfg.Backend == "docker" {
		return checks
	}
	kernel, rootfs, ierr := guestImages(cfg)
	switch {
	case ierr != nil:
		st := CheckFail
		if cfg.Backend == "auto" {
			st = CheckWarn // another backend may do
		}
		checks = append(checks, Check{Name: "guest images", Status: st, Detail: ierr.Error(),
			Fix: "`aetherium image kernel build` (about 20 min on 2 cores, cached) and `aetherium image build --name default --from-debian bookworm`"})
	default:
		checks = append(checks, Check{Name: "guest images", Status: CheckOK, Detail: "kernel " + kernel + ", template " + rootfs})
	}
	checks = append(checks, kvmCheck(bctx, cfg, kernel))
	return checks
}

func probeWritable(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".doctor-*")
	if err != nil {
		return fmt.Errorf("not writable: %w", err)
	}
	name := f.Name()
	f.Close()
	return os.Remove(name)
}

func probeListen(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	return ln.Close()
}

func redactedScheme(url string) string {
	for i := 0; i < len(url); i++ {
		if url[i] == ':' {
			if url[:i] == "sqlite" {
				return url
			}
			return url[:i] + " (credentials hidden)"
		}
	}
	return url
}

// errNoKVM is the detail of a host without a usable /dev/kvm.
var errNoKVM = errors.New("/dev/kvm is missing or not accessible")

func kvmCheck(ctx context.Context, cfg config.Config, kernel string) Check {
	err := probeKVM()
	switch {
	case errors.Is(err, errNoKVM):
		return Check{Name: "kvm", Status: CheckWarn, Detail: err.Error() + "; QEMU guests run under TCG emulation (slower), Firecracker cannot run",
			Fix: "load kvm_intel or kvm_amd, and give the worker's user read/write access to /dev/kvm (group kvm)"}
	case err != nil:
		return Check{Name: "kvm", Status: CheckWarn, Detail: err.Error(), Fix: "check that the host supports hardware virtualization"}
	}
	bin := cfg.QEMUBin
	if bin == "" {
		bin = qemu.DefaultBinary
	}
	path, lerr := exec.LookPath(bin)
	if lerr != nil || kernel == "" {
		return Check{Name: "kvm", Status: CheckWarn,
			Detail: "/dev/kvm opens and creates a VM, but without QEMU and a guest kernel no probe guest can prove that guests really run"}
	}
	// The doctor always probes afresh, and what it finds is what the next server start uses.
	perr := qemu.ProbeKVM(ctx, path, kernel)
	if ctx.Err() == nil {
		_ = qemu.RememberKVM(cfg.DataDir, path, kernel, perr)
	}
	if err := perr; err != nil {
		return Check{Name: "kvm", Status: CheckWarn,
			Detail: "/dev/kvm creates VMs but cannot run this guest kernel (" + err.Error() + "): QEMU uses TCG emulation, Firecracker cannot run",
			Fix:    "on a nested or paravirtual host, enable nested virtualization for ordinary guests"}
	}
	return Check{Name: "kvm", Status: CheckOK, Detail: "a probe guest booted under KVM"}
}

// kvmDevice is where the kernel exposes KVM.
var kvmDevice = filepath.Join("/dev", "kvm")
