//go:build linux

package firecracker

import (
	"context"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/vmm"
)

// BenchmarkStopVM measures StopVM on the fake with the default StopTimeout: a guest whose agent powers off, and
// one whose agent refuses (the fallback path; ignore-cad is what a guest kernel without CONFIG_SERIO and
// CONFIG_INPUT_KEYBOARD does with Ctrl-Alt-Del: nothing). Each iteration starts the VM (not timed) and stops it.
func BenchmarkStopVM(b *testing.B) {
	for _, bc := range []struct{ name, modes string }{
		{"poweroff", ""},
		{"fallback", "nopoweroff,ignore-cad"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			e := newEnv(b, bc.modes)
			be := e.backend(b, func(c *Config) { c.StopTimeout = DefaultStopTimeout })
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			if _, err := be.CreateVM(ctx, vmm.VMConfig{ID: "vm-bench"}); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				if err := be.StartVM(ctx, "vm-bench"); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				if err := be.StopVM(ctx, "vm-bench"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
