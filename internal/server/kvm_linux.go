//go:build linux

package server

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// ioctl numbers from <linux/kvm.h>: _IO(KVMIO, 0x00) and _IO(KVMIO, 0x01), KVMIO = 0xAE.
const (
	kvmGetAPIVersion = 0xAE00
	kvmCreateVM      = 0xAE01
	kvmAPIVersion    = 12 // stable since Linux 2.6.22
)

// probeKVM opens /dev/kvm, checks the API version and creates (and drops) a VM.
func probeKVM() error {
	f, err := os.OpenFile(kvmDevice, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("%w: %v", errNoKVM, err)
	}
	defer f.Close()
	v, err := unix.IoctlRetInt(int(f.Fd()), kvmGetAPIVersion)
	if err != nil {
		return fmt.Errorf("KVM_GET_API_VERSION: %w", err)
	}
	if v != kvmAPIVersion {
		return fmt.Errorf("KVM API version %d, want %d", v, kvmAPIVersion)
	}
	vm, err := unix.IoctlRetInt(int(f.Fd()), kvmCreateVM)
	if err != nil {
		return fmt.Errorf("KVM_CREATE_VM: %w", err)
	}
	return unix.Close(vm)
}
