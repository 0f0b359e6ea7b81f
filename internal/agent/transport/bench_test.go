//go:build linux

package transport

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/agent"
	"github.com/aetherium/aetherium/internal/agent/client"
)

// benchTransports sets up one in-process agent per transport and returns its Dialer.
var benchTransports = []struct {
	name  string
	setup func(b *testing.B) agent.Dialer
}{
	{"unix", func(b *testing.B) agent.Dialer { return agent.UnixDialer(unixAgent(b)) }},
	{"firecracker-connect", func(b *testing.B) agent.Dialer {
		fc := newFakeFirecracker(b)
		fc.listenGuest(DefaultVsockPort, unixAgent(b))
		return FirecrackerVsock(fc.uds, DefaultVsockPort)
	}},
	{"tcp-auth", func(b *testing.B) agent.Dialer {
		token := newToken(b)
		return TCPDialer(authAgent(b, token, AuthConfig{}), token)
	}},
	{"yamux-virtio-serial", func(b *testing.B) agent.Dialer {
		v := newFakeVirtioSerial(b)
		v.serveGuest(b)
		d, _ := v.hostDialer(b, muxPingTimeout)
		return d
	}},
}

// reportLatency records the median and 99th percentile of per-operation latencies.
func reportLatency(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	pct := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Nanoseconds()) }
	b.ReportMetric(pct(0.50), "p50-ns")
	b.ReportMetric(pct(0.99), "p99-ns")
}

func warmClient(b *testing.B, d agent.Dialer) *client.Client {
	c := client.New(d)
	b.Cleanup(func() { _ = c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.WaitReady(ctx); err != nil {
		b.Fatal(err)
	}
	return c
}

// BenchmarkHealth is the round trip of a no-op request on a warm connection, per transport.
func BenchmarkHealth(b *testing.B) {
	for _, tr := range benchTransports {
		b.Run(tr.name, func(b *testing.B) {
			c := warmClient(b, tr.setup(b))
			ctx := context.Background()
			lat := make([]time.Duration, 0, 4096)
			for b.Loop() {
				start := time.Now()
				if _, err := c.Health(ctx); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
			}
			reportLatency(b, lat)
		})
	}
}

// BenchmarkExecTrue is the round trip of running `true` on a warm connection, per transport.
func BenchmarkExecTrue(b *testing.B) {
	for _, tr := range benchTransports {
		b.Run(tr.name, func(b *testing.B) {
			c := warmClient(b, tr.setup(b))
			ctx := context.Background()
			req := agent.ExecRequest{Argv: []string{"true"}}
			lat := make([]time.Duration, 0, 1024)
			for b.Loop() {
				start := time.Now()
				res, err := c.Exec(ctx, req)
				if err != nil || res.ExitCode != 0 {
					b.Fatalf("%+v %v", res, err)
				}
				lat = append(lat, time.Since(start))
			}
			reportLatency(b, lat)
		})
	}
}

// BenchmarkConnect is a new connection and its first request: dial, the transport's handshake (CONNECT, the
// auth preamble, a yamux stream), the protocol's HELLO, and a health round trip.
func BenchmarkConnect(b *testing.B) {
	for _, tr := range benchTransports {
		b.Run(tr.name, func(b *testing.B) {
			d := tr.setup(b)
			warmClient(b, d) // the yamux session exists before the clock starts, as for a running VM
			ctx := context.Background()
			lat := make([]time.Duration, 0, 1024)
			for b.Loop() {
				start := time.Now()
				c := client.New(d)
				if _, err := c.Health(ctx); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
				_ = c.Close()
			}
			reportLatency(b, lat)
		})
	}
}
