//go:build linux

package qemu

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// KVMVerdictFile is the name, in a data directory, of the remembered outcome of ProbeKVM.
const KVMVerdictFile = "kvm-probe.json"

// kvmVerdict is ProbeKVM's outcome for one host boot, host kernel, QEMU binary and guest kernel.
type kvmVerdict struct {
	Key      string    `json:"key"`
	OK       bool      `json:"ok"`
	Error    string    `json:"error,omitempty"`
	ProbedAt time.Time `json:"probed_at"`
}

// CachedProbeKVM is ProbeKVM remembered per boot of the host: the verdict is kept in dataDir/KVMVerdictFile under
// a key of the boot id, the host kernel's release, the QEMU binary and the guest kernel, so that only the first
// start after a boot (or after any of them changes) pays for the probe guest, up to kvmProbeTimeout on a host
// whose KVM cannot run guests. cached says the verdict came from the file. A verdict that cannot be stored costs
// the next start a probe, nothing more. `aetherium doctor` calls ProbeKVM itself and then RememberKVM.
func CachedProbeKVM(ctx context.Context, dataDir, qemuBin, kernel string) (cached bool, err error) {
	key, kerr := kvmVerdictKey(qemuBin, kernel)
	path := filepath.Join(dataDir, KVMVerdictFile)
	if kerr == nil {
		var v kvmVerdict
		if b, rerr := os.ReadFile(path); rerr == nil && json.Unmarshal(b, &v) == nil && v.Key == key {
			if v.OK {
				return true, nil
			}
			return true, fmt.Errorf("%s (remembered from a probe at %s; `aetherium doctor` probes again)", v.Error,
				v.ProbedAt.Format(time.RFC3339))
		}
	}
	err = ProbeKVM(ctx, qemuBin, kernel)
	if ctx.Err() == nil && kerr == nil {
		_ = writeKVMVerdict(path, key, err)
	}
	return false, err
}

// RememberKVM stores the outcome of a fresh ProbeKVM for CachedProbeKVM.
func RememberKVM(dataDir, qemuBin, kernel string, probeErr error) error {
	key, err := kvmVerdictKey(qemuBin, kernel)
	if err != nil {
		return err
	}
	return writeKVMVerdict(filepath.Join(dataDir, KVMVerdictFile), key, probeErr)
}

func writeKVMVerdict(path, key string, probeErr error) error {
	v := kvmVerdict{Key: key, OK: probeErr == nil, ProbedAt: time.Now().UTC()}
	if probeErr != nil {
		v.Error = probeErr.Error()
	}
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("remember the kvm probe: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("remember the kvm probe: %w", err)
	}
	return nil
}

// kvmVerdictKey names what the probe's outcome depends on: this boot of the host (a reboot can load or unload
// kvm modules and change nesting), the host kernel, the QEMU binary and the guest kernel (by path, size and
// modification time: hashing a 40 MB vmlinux at every start would cost more than it saves on a KVM host), and
// /dev/kvm's presence and mode with the process's ids.
func kvmVerdictKey(qemuBin, kernel string) (string, error) {
	bootID, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "", fmt.Errorf("boot id: %w", err)
	}
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return "", fmt.Errorf("uname: %w", err)
	}
	bin, err := exec.LookPath(qemuBin)
	if err != nil {
		return "", err
	}
	if bin, err = filepath.EvalSymlinks(bin); err != nil {
		return "", err
	}
	h := sha256.New()
	fmt.Fprintf(h, "boot %s\nhost %s\n", strings.TrimSpace(string(bootID)), unix.ByteSliceToString(uts.Release[:]))
	for _, p := range []string{bin, kernel} {
		fi, err := os.Stat(p)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "file %s %d %d\n", p, fi.Size(), fi.ModTime().UnixNano())
	}
	// Within one boot, kvm modules can be loaded later, or the device's permissions change.
	if fi, err := os.Stat("/dev/kvm"); err == nil {
		fmt.Fprintf(h, "kvm %v uid %d gid %d\n", fi.Mode(), os.Geteuid(), os.Getegid())
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
