// Package vmproc holds what the process-based VM backends (firecracker, qemu) share: supervising a VMM process
// that lives in its own process group and dies with its worker, recognising it again after a restart without
// ever mistaking a reused pid for it, finding orphans, copy-on-write disks, console logs and state files.
package vmproc
