// Package vmproc holds what the process-based VM backends (firecracker, qemu) share: supervising a VMM process
// that runs detached in its own session and outlives its worker, recognising it again after a restart without
// ever mistaking a reused pid for it, cancelling a boot that a delete overtakes, finding orphans, copy-on-write
// disks, console logs and state files.
package vmproc
