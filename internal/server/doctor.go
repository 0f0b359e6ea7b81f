package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/aetherium/aetherium/internal/config"
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

	if roles.Worker {
		bctx, cancel := step()
		backend, err := openBackend(bctx, cfg, log)
		if err == nil {
			err = backend.Health(bctx)
			backend.Close()
		}
		cancel()
		fix := "run scripts/setup.sh (installs docker.io and busybox-static, starts dockerd); build the agent with make build"
		if cfg.Backend == "firecracker" {
			fix = "install firecracker, and give --kernel-path and --rootfs-path (aetherium image build makes a root filesystem)"
		}
		add(cfg.Backend+" backend", err, "ready", fix)
		if cfg.Backend == "firecracker" {
			checks = append(checks, kvmCheck())
		}
	}
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

func kvmCheck() Check {
	err := probeKVM()
	switch {
	case err == nil:
		return Check{Name: "kvm", Status: CheckWarn,
			Detail: "/dev/kvm opens and creates a VM; only booting a guest proves guests really run (nested or " +
				"paravirtual KVM can accept KVM_CREATE_VM and still fail to run ordinary guests)"}
	case errors.Is(err, errNoKVM):
		return Check{Name: "kvm", Status: CheckFail, Detail: err.Error(),
			Fix: "load kvm_intel or kvm_amd, and give the worker's user read/write access to /dev/kvm (group kvm)"}
	default:
		return Check{Name: "kvm", Status: CheckFail, Detail: err.Error(), Fix: "check that the host supports hardware virtualization"}
	}
}

// kvmDevice is where the kernel exposes KVM.
var kvmDevice = filepath.Join("/dev", "kvm")
