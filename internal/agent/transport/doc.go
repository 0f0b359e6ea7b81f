// Package transport carries the agent protocol (internal/agent/protocol) between the host and the guest agent
// over every link a VM backend offers, so that the protocol and everything above it (internal/agent/client)
// is the same whatever the link:
//
//   - Unix socket: agent.UnixDialer on the host, a plain net.Listener in the guest. The Docker backend, whose
//     socket lies in a directory the guest can write, dials its own way: without following links, and only
//     to a listener that is the container's init (internal/vmm/docker).
//   - Firecracker's hybrid vsock: FirecrackerVsock on the host (Unix socket plus "CONNECT <port>\n"),
//     ListenVsock in the guest.
//   - AF_VSOCK through vhost-vsock (QEMU on hosts that have /dev/vhost-vsock): VsockDialer and ListenVsock.
//   - TCP (user-mode or bridged networking): TCPDialer and ListenTCPAuth, with a per-VM token that never
//     crosses the wire (a challenge-response preamble, see auth.go).
//   - virtio-serial, one byte stream per VM: Multiplexed on the host and ListenVirtioSerial in the guest run
//     yamux over it, so that it carries any number of connections, and re-synchronise after the host side
//     disconnects and reconnects (see mux.go).
//
// Host-side functions return agent.Dialer; guest-side ones return net.Listener for server.Server.Serve. The
// guest owns the far end of every one of them: the client bounds each dial and handshake, and each exec, on
// the host's own clock (internal/agent/client), whatever the transport.
package transport
