package audit

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/store/sqlite"
)

// flaky fails its first Append, so the entries must stay queued and be written by the next flush.
type flaky struct {
	store.AuditStore
	mu    sync.Mutex
	fails int
}

func (f *flaky) Append(ctx context.Context, es []*store.AuditEntry) error {
	f.mu.Lock()
	if f.fails > 0 {
		f.fails--
		f.mu.Unlock()
		return errors.New("database down")
	}
	f.mu.Unlock()
	return f.AuditStore.Append(ctx, es)
}

func TestRecorderBatchesAndFlushesOnClose(t *testing.T) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "a.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	fs := &flaky{AuditStore: st.Audit(), fails: 1}
	r := NewRecorder(fs, Options{FlushEvery: time.Hour})
	for i := 0; i < 450; i++ {
		r.Record(ctx, &store.AuditEntry{Method: "POST", Route: "/api/v1/vms", Status: 202})
	}
	r.Flush(ctx) // fails once: nothing lost
	r.Close(ctx)
	got, err := st.Audit().List(ctx, store.AuditFilter{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 450 {
		t.Fatalf("stored %d entries, want 450", len(got))
	}
}
