//go:build linux

package network

import (
	"context"
	"fmt"
	"io"
	"slices"
	"testing"
	"time"
)

// BenchmarkAttachDetach measures what a VM's network costs the worker: Attach (lease in SQLite, TAP, bridge port,
// rules) and Detach (rules, TAP, release), with the other VMs' rules in place, since the tables grow with the host's
// VMs. It reports the medians of each, besides the mean of both per op.
func BenchmarkAttachDetach(b *testing.B) {
	topo := newTopology(b)
	st := sqliteStore(b)
	m := newManager(b, topo.host, st.Leases(), nil)
	ctx := context.Background()
	const resident = 20
	for i := range resident {
		mustAttach(b, m, fmt.Sprintf("resident-%02d", i), Policy{DenyCIDRs: pfx("1.2.3.0/24")})
	}
	policy := Policy{AllowCIDRs: pfx("10.1.0.0/16"), DenyCIDRs: pfx("198.51.100.0/24")}
	var attach, detach []time.Duration
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		id := fmt.Sprintf("bench-%d", i)
		t0 := time.Now()
		if _, err := m.Attach(ctx, id, policy); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if err := m.Detach(ctx, id); err != nil {
			b.Fatal(err)
		}
		attach, detach = append(attach, t1.Sub(t0)), append(detach, time.Since(t1))
	}
	b.ReportMetric(float64(median(attach).Microseconds()), "attach-p50-µs")
	b.ReportMetric(float64(median(detach).Microseconds()), "detach-p50-µs")
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// BenchmarkGuestToGatewayTCP boots a guest (QEMU, TCG) and times 50 MiB sent with busybox nc to a service on the
// gateway, measured on the host from the connection's first byte to its last.
func BenchmarkGuestToGatewayTCP(b *testing.B) {
	requireGuests(b)
	topo := newTopology(b)
	st := sqliteStore(b)
	const port = 5001
	m := newManager(b, topo.host, st.Leases(), func(c *Config) { c.AllowHostPorts = []HostPort{{Proto: "tcp", Port: port}} })
	g := bootGuest(b, topo.host, mustAttach(b, m, "bench-guest", Policy{}))
	ln := listen(b, topo.host, "tcp4", fmt.Sprintf("%s:%d", m.Gateway(), port))
	const blocks, blockSize = 800, 64 << 10
	const total = blocks * blockSize
	type result struct {
		n   int64
		dur time.Duration
		err error
	}
	var mbps []float64
	for b.Loop() {
		res := make(chan result, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				res <- result{err: err}
				return
			}
			defer c.Close()
			buf := make([]byte, 256<<10)
			first, err := io.ReadAtLeast(c, buf, 1)
			if err != nil {
				res <- result{err: err}
				return
			}
			t0 := time.Now()
			n, err := io.CopyN(io.Discard, c, total-int64(first))
			res <- result{n: n + int64(first), dur: time.Since(t0), err: err}
		}()
		g.must(b, "send", fmt.Sprintf("dd if=/dev/zero bs=%d count=%d 2>/dev/null | nc -w 10 %s %d", blockSize, blocks,
			m.Gateway(), port))
		r := <-res
		if r.err != nil || r.n != total {
			b.Fatalf("received %d of %d bytes: %v", r.n, total, r.err)
		}
		mbps = append(mbps, float64(total)/r.dur.Seconds()/1e6)
	}
	slices.Sort(mbps)
	b.ReportMetric(mbps[len(mbps)/2], "MB/s")
}
