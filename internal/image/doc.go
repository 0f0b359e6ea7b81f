// Package image keeps guest root filesystem templates: read-only ext4 images, named and versioned, built from a
// local Docker image with the Aetherium agent installed as the guest's init.
//
// Layout under the store's directory (normally <data_dir>/images):
//
//	<name>/<version>/rootfs.ext4    the template (mode 0444; VMs get copy-on-write disks of it)
//	<name>/<version>/manifest.json  what it was built from, its sha256, the agent's sha256 and the inputs hash
//	.tmp/                           builds in progress (same filesystem, so that finishing one is a rename)
//
// # Booting a template
//
// The agent is installed at /sbin/aetherium-agent (mode 0755) and is meant to run as PID 1. The guest kernel's
// command line must therefore say
//
//	init=/sbin/aetherium-agent ... -- --init
//
// with where the agent listens before the "--" (the kernel hands parameters it does not know to init's
// environment, and everything after "--" to init's argv):
//
//	Firecracker: aetherium.listen=vsock:9999
//	QEMU:        aetherium.listen=virtio-serial:agent
//
// The Firecracker backend's DefaultKernelArgs (internal/vmm/firecracker) already say init=/sbin/aetherium-agent,
// aetherium.listen=vsock:9999 and -- --init. The same values are recorded in every manifest (Manifest.Boot).
package image
