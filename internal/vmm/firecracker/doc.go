// Package firecracker is the Firecracker backend of the VM orchestrator seam (vmm.Orchestrator). Each VM is one
// firecracker process (optionally started through the jailer) driven over its API socket; the guest agent runs as
// the VM's init and is reached through Firecracker's hybrid vsock (a Unix socket and a CONNECT handshake).
//
// There is no engine to ask what exists, so every VM has a directory DataDir/vms/<id> holding a state file
// (state.json: owner, sizes, guest CID, the firecracker pid and its start time), the console log, the VM's
// copy-on-write disk and (without the jailer) the API socket and the vsock socket. With the jailer, each start
// makes a fresh jail (jail.go) holding the sockets and links to the kernel and the disk. A restarted worker finds
// its VMs, and the processes of a worker that died, from these files.
package firecracker
