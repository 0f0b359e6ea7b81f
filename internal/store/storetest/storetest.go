// Package storetest is the conformance suite of store.Store. Every implementation runs it from its own tests:
//
//	func TestConformance(t *testing.T) { storetest.Run(t, openTestStore) }
//
// so the embedded store (SQLite) and the production store (PostgreSQL) cannot drift apart.
//
// The suite pins down what the interface leaves open, so both implementations agree on it:
//   - times come back in UTC, truncated to microseconds (what PostgreSQL keeps);
//   - empty maps and slices, and empty json documents, come back nil;
//   - json documents (task payload and result) come back equal as json, not byte for byte (jsonb reformats them);
//   - Create fills ID (a new uuid), Status (the entity's initial status) and CreatedAt/UpdatedAt when they are zero,
//     and leaves the caller's struct equal to what a Get returns;
//   - Get of a missing id, or of an id that is not a uuid, wraps model.ErrNotFound and names the id;
//   - Page.After naming no row is an error wrapping model.ErrInvalidInput;
//   - a filter on a vm or job id that is not a uuid matches nothing.
//   - text PostgreSQL cannot hold (NUL, invalid UTF-8) is refused in identifiers and replaced by U+FFFD in
//     free-form text (errors, metadata, json documents); command output is kept byte for byte.
package storetest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store"
)

// Opener returns a new, empty, migrated store for one test and arranges (t.Cleanup) to close and remove it.
type Opener func(t *testing.T) store.Store

// Run runs the whole suite. Each subtest gets its own store from open.
func Run(t *testing.T, open Opener) {
	t.Run("Ping", func(t *testing.T) { testPing(t, open(t)) })
	t.Run("VMs", func(t *testing.T) { runVMs(t, open) })
	t.Run("Tasks", func(t *testing.T) { runTasks(t, open) })
	t.Run("Jobs", func(t *testing.T) { runJobs(t, open) })
	t.Run("Executions", func(t *testing.T) { runExecutions(t, open) })
	t.Run("Workers", func(t *testing.T) { runWorkers(t, open) })
	t.Run("APIKeys", func(t *testing.T) { runAPIKeys(t, open) })
	t.Run("SigningKeys", func(t *testing.T) { runSigningKeys(t, open) })
	t.Run("Audit", func(t *testing.T) { runAudit(t, open) })
	t.Run("Leases", func(t *testing.T) { runLeases(t, open) })
	t.Run("Idempotency", func(t *testing.T) { runIdempotency(t, open) })
	t.Run("Secrets", func(t *testing.T) { runSecrets(t, open) })
	t.Run("Runs", func(t *testing.T) { runRuns(t, open) })
	t.Run("Webhooks", func(t *testing.T) { runWebhooks(t, open) })
	t.Run("IntegrationLinks", func(t *testing.T) { runIntegrationLinks(t, open) })
	t.Run("Notifications", func(t *testing.T) { runNotifications(t, open) })
	t.Run("Events", func(t *testing.T) { runEvents(t, open) })
	t.Run("Text", func(t *testing.T) { runText(t, open) })
	t.Run("Concurrency", func(t *testing.T) { runConcurrency(t, open) })
}

func testPing(t *testing.T, st store.Store) {
	if err := st.Ping(t.Context()); err != nil {
		t.Fatalf("Ping: %v", err)
	}
}

// ---- helpers

// zone is a non-UTC location: inputs use it so the suite sees that times come back in UTC.
var zone = time.FixedZone("UTC+5:30", 5*3600+1800)

// at returns a time with nanoseconds (which the store must drop) in a non-UTC zone, minutes after a fixed base.
func at(minutes int) time.Time {
	return time.Date(2025, 3, 14, 9, 26, 53, 589_793_238, zone).Add(time.Duration(minutes) * time.Minute)
}

// stored is t as the store must return it.
func stored(t time.Time) time.Time { return t.UTC().Truncate(time.Microsecond) }

func storedPtr(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	v := stored(*t)
	return &v
}

func ptr[T any](v T) *T { return &v }

func newID() string { return uuid.NewString() }

// same fails t unless want and got are deeply equal, printing both as json.
func same[T any](t *testing.T, what string, want, got T) {
	t.Helper()
	if !reflect.DeepEqual(want, got) {
		w, _ := json.MarshalIndent(want, "", "  ")
		g, _ := json.MarshalIndent(got, "", "  ")
		t.Fatalf("%s differs\nwant: %s\n got: %s", what, w, g)
	}
}

// canonJSON re-encodes a json document so that two documents equal as json are equal as bytes.
func canonJSON(t *testing.T, r json.RawMessage) json.RawMessage {
	t.Helper()
	if r == nil {
		return nil
	}
	var v any
	if err := json.Unmarshal(r, &v); err != nil {
		t.Fatalf("stored json %q does not parse: %v", r, err)
	}
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// wantErr fails t unless err wraps target.
func wantErr(t *testing.T, what string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%s: got error %v, want one wrapping %v", what, err, target)
	}
}

func must(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// notFound checks the error of a missing row: it wraps ErrNotFound and names the id.
func notFound(t *testing.T, what string, err error, id string) {
	t.Helper()
	wantErr(t, what, err, model.ErrNotFound)
	if !strings.Contains(err.Error(), id) {
		t.Fatalf("%s: error %q does not name the id %q", what, err, id)
	}
}

// pageAll walks every page of size n and returns the ids in order, failing on duplicates.
func pageAll(t *testing.T, n int, list func(p store.Page) ([]string, error)) []string {
	t.Helper()
	var all []string
	seen := map[string]bool{}
	p := store.Page{Limit: n}
	for i := 0; ; i++ {
		if i > 10_000 {
			t.Fatal("pagination does not end")
		}
		ids, err := list(p)
		must(t, "list page", err)
		if len(ids) > n {
			t.Fatalf("page %d has %d items, limit %d", i, len(ids), n)
		}
		for _, id := range ids {
			if seen[id] {
				t.Fatalf("page %d repeats %s", i, id)
			}
			seen[id] = true
		}
		all = append(all, ids...)
		if len(ids) < n {
			return all
		}
		p.After = ids[len(ids)-1]
	}
}

// newestFirst sorts ids of items created at the given times as the store orders lists: created_at DESC, id DESC.
func newestFirst(created map[string]time.Time) []string {
	ids := make([]string, 0, len(created))
	for id := range created {
		ids = append(ids, id)
	}
	slices.SortFunc(ids, func(a, b string) int {
		if c := stored(created[b]).Compare(stored(created[a])); c != 0 {
			return c
		}
		return strings.Compare(b, a)
	})
	return ids
}

func idsOf[T any](items []*T, id func(*T) string) []string {
	out := make([]string, len(items))
	for i, it := range items {
		out[i] = id(it)
	}
	return out
}

func sameIDs(t *testing.T, what string, want, got []string) {
	t.Helper()
	if want == nil {
		want = []string{}
	}
	if got == nil {
		got = []string{}
	}
	if !slices.Equal(want, got) {
		t.Fatalf("%s: got ids\n  %v\nwant\n  %v", what, got, want)
	}
}

// binary is command output that is not text: NUL bytes and invalid UTF-8 must survive storage.
var binary = string([]byte{'o', 'k', 0, 0xff, 0xfe, '\n', 0xc3, 0x28})

func jsonEq(t *testing.T, what string, want, got json.RawMessage) {
	t.Helper()
	if !bytes.Equal(canonJSON(t, want), canonJSON(t, got)) {
		t.Fatalf("%s: got json %s, want %s", what, got, want)
	}
}

func describe(v any) string { return fmt.Sprintf("%+v", v) }
