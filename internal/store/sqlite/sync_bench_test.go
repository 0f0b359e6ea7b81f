package sqlite

import (
	"path/filepath"
	"testing"

	"github.com/aetherium/aetherium/internal/store/storetest"
)

// BenchmarkSynchronous compares the writer's synchronous settings on what precedes an acknowledgement (a task
// row committed). Run on the disk the data directory lives on: on tmpfs fsync is free and the numbers mean nothing.
func BenchmarkSynchronous(b *testing.B) {
	for _, mode := range []string{"NORMAL", "FULL"} {
		b.Run(mode, func(b *testing.B) {
			st, err := open(b.Context(), filepath.Join(b.TempDir(), "bench.db"), mode)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { st.Close() })
			if err := st.Migrate(b.Context()); err != nil {
				b.Fatal(err)
			}
			storetest.BenchmarkCreateTask(b, st)
		})
	}
}
