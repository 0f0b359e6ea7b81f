// Package qemu is the QEMU backend: each VM is a qemu-system-x86_64 process with the microvm machine, the guest
// kernel booted directly (no firmware), its root filesystem a copy-on-write disk of a template, and the guest agent
// reached over one virtio-serial port (a Unix socket on the host) that carries many streams (yamux).
//
// It runs guests under KVM when KVM really boots a guest on this host (probed with a real boot, not by the
// device node) and under TCG software emulation otherwise. TCG on microvm needs the flags that
// ../../docs/architecture.md lists (tsc_early_khz against boot hangs, qemu64,+arat and tsc=reliable against idle
// CPU burn, reboot=t with -no-reboot for a fast clean exit).
package qemu
