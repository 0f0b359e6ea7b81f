// Package transport carries the agent protocol (internal/agent/protocol) between the host and the guest agent
// over every link a VM backend offers, so that the protocol and everything above it (internal/agent/client)
// is the same whatever the link:
//
//   - Unix socket (the Docker backend): agent.UnixDialer on the host, a plain net.Listener in the guest.
//   - Firecracker's hybrid vsock: FirecrackerVsock on the host (Unix socket plus "CONNECT <port>\n"),
//     ListenVsock in the guest.
//   - AF_VSOCK through vhost-vsock (QEMU on hosts that have /dev/vhost-vsock): VsockDialer and ListenVsock.
//   - TCP (user-mode or bridged networking): TCPDialer and ListenTCPAuth, with a per-VM token that never
//     crosses the wire (a challenge-response preamble, see auth.go).
//   - virtio-serial, one byte stream per VM: Multiplexed on the host and ListenVirtioSerial in the guest run
//     yamux over it, so that it carries any number of connections, and re-synchronise after the host side
//     disconnects and reconnects (see mux.go).
//
// Host-side functions return agent.Dialer; guest-side ones return net.Listener for server.Server.Serve.
package transport
