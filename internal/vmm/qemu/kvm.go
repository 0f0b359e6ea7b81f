//go:build linux

package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// kvmProbeTimeout bounds the probe boot. A kernel boots to its root-mount panic in well under a second under KVM;
// a KVM that only runs special guests (a nested "PVM" KVM, say) aborts or crawls.
const kvmProbeTimeout = 20 * time.Second

// kvmCreateVM is the KVM_CREATE_VM ioctl (_IO(KVMIO, 0x01)).
const kvmCreateVM = 0xAE01

// ProbeKVM checks that KVM really runs guests here: /dev/kvm opens, KVM_CREATE_VM succeeds, and the guest kernel,
// booted under KVM with no root disk, gets as far as its "cannot mount root" panic (which, with panic=-1 and
// -no-reboot, ends QEMU). The device node alone proves nothing: a nested KVM may accept the ioctl and then fail
// every ordinary guest.
func ProbeKVM(ctx context.Context, qemuBin, kernel string) error {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open /dev/kvm: %w", err)
	}
	vmfd, err := unix.IoctlRetInt(int(f.Fd()), kvmCreateVM)
	_ = f.Close()
	if err != nil {
		return fmt.Errorf("KVM_CREATE_VM: %w", err)
	}
	_ = unix.Close(vmfd)
	return probeBoot(ctx, qemuBin, kernel, "kvm", "host", "")
}

// probeBoot boots kernel with no root disk under accel and succeeds when it reaches its root-mount panic.
func probeBoot(ctx context.Context, qemuBin, kernel, accel, cpu, extraArgs string) error {
	ctx, cancel := context.WithTimeout(ctx, kvmProbeTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemuBin,
		"-M", "microvm,x-option-roms=off", "-accel", accel, "-cpu", cpu, "-m", "128", "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-serial", "stdio",
		"-kernel", kernel,
		"-append", strings.TrimSpace("console=ttyS0 reboot=t panic=-1 pci=off root=/dev/aetherium-kvm-probe "+extraArgs))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	text := out.String()
	if strings.Contains(text, "Kernel panic") && strings.Contains(text, "VFS") {
		return nil
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("a probe guest did not boot under %s within %s", accel, kvmProbeTimeout)
	}
	return fmt.Errorf("a probe guest failed under %s (%v): %s", accel, err, lastLine(text))
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	if len(s) > 200 {
		s = s[:200]
	}
	if s == "" {
		return "(no output)"
	}
	return s
}
