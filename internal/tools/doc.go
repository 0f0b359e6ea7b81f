// Package tools provisions the tools a VM comes with (git, Node.js, Bun, Claude Code, ...): a declarative catalog
// (catalog.yaml, embedded; a custom one can be loaded from a file), the resolution of requests such as "node@22"
// to exact versions and checksums, a host-side download cache keyed by checksum, and an installer that puts tools
// into a Target: a template's staging directory while it is built (the image package's chroot) or a running guest
// through its agent (AgentTarget), which then needs no network of its own.
//
// Layout inside a target: npm and tarball tools are unpacked to /opt/aetherium/tools/<name>/<version>, their
// commands linked into /usr/local/bin, and /opt/aetherium/tools/tools.json records what is installed. Debian tools
// are ordinary packages installed with dpkg.
package tools
