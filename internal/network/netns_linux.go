//go:build linux

package network

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// nsRunner runs code in the manager's network namespace.
type nsRunner struct {
	ns netns.NsHandle // -1: the current one
}

func (r nsRunner) current() bool { return r.ns < 0 }

// do runs fn on an OS thread switched into the namespace. Sockets, /dev/net/tun devices and /proc/sys/net files
// opened by fn belong to it; goroutines fn starts do not run there. If the thread cannot be switched back it stays
// locked, so the runtime ends it with the goroutine instead of handing another goroutine the wrong namespace.
func (r nsRunner) do(fn func() error) error {
	if r.current() {
		return fn()
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("read the thread's network namespace: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(r.ns); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter network namespace %s: %w", r.ns, err)
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		return errors.Join(ferr, fmt.Errorf("return to network namespace %s: %w", orig, err))
	}
	runtime.UnlockOSThread()
	return ferr
}

// sysctl writes a /proc/sys value in the namespace. A missing file is an error unless optional. A value that is
// already set is not written again: container runtimes mount /proc/sys read-only in every container that is not
// privileged, so a worker in a Kubernetes pod can run with the values set for it (pod sysctls) and NET_ADMIN only.
func (r nsRunner) sysctl(path, value string, optional bool) error {
	return r.do(func() error {
		if cur, err := os.ReadFile("/proc/sys/" + path); err == nil && strings.TrimSpace(string(cur)) == value {
			return nil
		}
		err := os.WriteFile("/proc/sys/"+path, []byte(value), 0o644)
		if err != nil && optional && errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("sysctl %s=%s: %w", path, value, err)
		}
		return nil
	})
}

// dumpRetries bounds the retries of a netlink dump the kernel interrupted (the table changed while it was read).
const dumpRetries = 5

func linkList(h *netlink.Handle) ([]netlink.Link, error) {
	var err error
	for range dumpRetries {
		var links []netlink.Link
		if links, err = h.LinkList(); err == nil {
			return links, nil
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	return nil, fmt.Errorf("list links: %w", err)
}

func addrList(h *netlink.Handle, l netlink.Link) ([]netlink.Addr, error) {
	var err error
	for range dumpRetries {
		var addrs []netlink.Addr
		if addrs, err = h.AddrList(l, netlink.FAMILY_V4); err == nil {
			return addrs, nil
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	return nil, fmt.Errorf("list addresses of %s: %w", l.Attrs().Name, err)
}

func routeList(h *netlink.Handle) ([]netlink.Route, error) {
	var err error
	for range dumpRetries {
		var routes []netlink.Route
		if routes, err = h.RouteList(nil, netlink.FAMILY_V4); err == nil {
			return routes, nil
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	return nil, fmt.Errorf("list routes: %w", err)
}

// linkByName returns the link, or nil when there is none.
func linkByName(h *netlink.Handle, name string) (netlink.Link, error) {
	l, err := h.LinkByName(name)
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("look up link %s: %w", name, err)
	}
	return l, nil
}
