package storetest

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store"
)

func runIdempotency(t *testing.T, open Opener) {
	newRec := func(owner, key, fp string, created time.Time) *store.IdempotencyRecord {
		return &store.IdempotencyRecord{OwnerID: owner, Key: key, Fingerprint: fp, CreatedAt: created,
			ExpiresAt: created.Add(24 * time.Hour)}
	}
	never := at(-100000) // a staleBefore that finds nothing stale

	t.Run("ClaimReplayRelease", func(t *testing.T) {
		st, ctx := open(t), t.Context()
		is := st.Idempotency()
		cur, err := is.Begin(ctx, newRec("owner-a", "k1", "fp1", at(0)), never)
		if err != nil || cur != nil {
			t.Fatalf("first Begin = %+v, %v; want a claim", cur, err)
		}
		cur, err = is.Begin(ctx, newRec("owner-a", "k1", "fp2", at(1)), never)
		must(t, "second Begin", err)
		if cur == nil || cur.Done || cur.Fingerprint != "fp1" || cur.OwnerID != "owner-a" || cur.Key != "k1" ||
			!cur.CreatedAt.Equal(stored(at(0))) || cur.CreatedAt.Location() != time.UTC ||
			!cur.ExpiresAt.Equal(stored(at(0).Add(24*time.Hour))) {
			t.Fatalf("second Begin = %+v; want the first claim, in progress", cur)
		}
		// Keys are per owner.
		if cur, err := is.Begin(ctx, newRec("owner-b", "k1", "fp1", at(1)), never); err != nil || cur != nil {
			t.Fatalf("another owner's Begin = %+v, %v; want a claim of its own", cur, err)
		}

		body := []byte("{\"task_id\":\"x\"}\n\x00\xff") // stored byte for byte
		done := newRec("owner-a", "k1", "", at(0))
		done.Status, done.Header, done.Body = 202, map[string]string{"Content-Type": "application/json"}, body
		must(t, "Complete", is.Complete(ctx, done))
		cur, err = is.Begin(ctx, newRec("owner-a", "k1", "fp1", at(2)), never)
		must(t, "Begin after Complete", err)
		if cur == nil || !cur.Done || cur.Status != 202 || !bytes.Equal(cur.Body, body) ||
			cur.Header["Content-Type"] != "application/json" || len(cur.Header) != 1 || cur.Fingerprint != "fp1" {
			t.Fatalf("Begin after Complete = %+v", cur)
		}
		// Completing again replaces the answer (a ?wait request first records its acceptance, then its result).
		done.Status, done.Header, done.Body = 201, nil, nil
		must(t, "second Complete", is.Complete(ctx, done))
		cur, err = is.Begin(ctx, newRec("owner-a", "k1", "fp1", at(2)), never)
		must(t, "Begin after second Complete", err)
		if cur == nil || !cur.Done || cur.Status != 201 || len(cur.Body) != 0 || cur.Header != nil {
			t.Fatalf("Begin after second Complete = %+v", cur)
		}

		// Release leaves a done record alone and forgets one in progress.
		must(t, "Release done", is.Release(ctx, "owner-a", "k1"))
		if cur, err := is.Begin(ctx, newRec("owner-a", "k1", "fp1", at(3)), never); err != nil || cur == nil || !cur.Done {
			t.Fatalf("Begin after Release of a done record = %+v, %v", cur, err)
		}
		must(t, "Release in progress", is.Release(ctx, "owner-b", "k1"))
		must(t, "Release of nothing", is.Release(ctx, "owner-b", "never-used"))
		if cur, err := is.Begin(ctx, newRec("owner-b", "k1", "fp9", at(3)), never); err != nil || cur != nil {
			t.Fatalf("Begin after Release = %+v, %v; want a new claim", cur, err)
		}

		missing := newRec("owner-a", "missing", "fp", at(0))
		missing.Status = 200
		wantErr(t, "Complete of a missing key", is.Complete(ctx, missing), model.ErrNotFound)
	})

	t.Run("ExpiryStaleAndPurge", func(t *testing.T) {
		st, ctx := open(t), t.Context()
		is := st.Idempotency()
		must(t, "Begin", beginNew(t, is, newRec("o", "old-done", "fp1", at(0)), never))
		must(t, "Complete", is.Complete(ctx, &store.IdempotencyRecord{OwnerID: "o", Key: "old-done", Status: 200}))
		must(t, "Begin", beginNew(t, is, newRec("o", "stuck", "fp1", at(0)), never))

		// Within the day, both stand; a done record is never stale.
		if cur, err := is.Begin(ctx, newRec("o", "old-done", "fp2", at(60)), at(30)); err != nil || cur == nil || !cur.Done {
			t.Fatalf("Begin of a done key before expiry = %+v, %v", cur, err)
		}
		// An in-progress claim older than staleBefore was abandoned: the new request takes it over.
		if cur, err := is.Begin(ctx, newRec("o", "stuck", "fp2", at(60)), at(30)); err != nil || cur != nil {
			t.Fatalf("Begin of an abandoned key = %+v, %v; want a claim", cur, err)
		}
		if cur, err := is.Begin(ctx, newRec("o", "stuck", "fp3", at(61)), at(30)); err != nil || cur == nil || cur.Fingerprint != "fp2" {
			t.Fatalf("Begin after the takeover = %+v, %v", cur, err)
		}
		// After 24 h the key is free again, even done.
		if cur, err := is.Begin(ctx, newRec("o", "old-done", "fp2", at(24*60)), never); err != nil || cur != nil {
			t.Fatalf("Begin of an expired key = %+v, %v; want a claim", cur, err)
		}
		if cur, err := is.Begin(ctx, newRec("o", "old-done", "fp3", at(24*60+1)), never); err != nil || cur == nil ||
			cur.Done || cur.Fingerprint != "fp2" {
			t.Fatalf("Begin after the expired key's reuse = %+v, %v", cur, err)
		}

		must(t, "Begin", beginNew(t, is, newRec("o", "third", "fp", at(10)), never))
		// Expiries: stuck at(60)+24h, old-done at(24*60)+24h, third at(10)+24h.
		n, err := is.Purge(ctx, at(24*60+10))
		if err != nil || n != 1 {
			t.Fatalf("Purge = %d, %v; want 1 (third)", n, err)
		}
		n, err = is.Purge(ctx, at(3*24*60))
		if err != nil || n != 2 {
			t.Fatalf("second Purge = %d, %v; want 2", n, err)
		}
		if cur, err := is.Begin(ctx, newRec("o", "third", "fp", at(11)), never); err != nil || cur != nil {
			t.Fatalf("Begin of a purged key = %+v, %v; want a claim", cur, err)
		}
	})

	t.Run("Invalid", func(t *testing.T) {
		st, ctx := open(t), t.Context()
		is := st.Idempotency()
		for name, rec := range map[string]*store.IdempotencyRecord{
			"empty key":         newRec("o", "", "fp", at(0)),
			"long key":          newRec("o", strings.Repeat("k", store.MaxIdempotencyKey+1), "fp", at(0)),
			"control character": newRec("o", "a\nb", "fp", at(0)),
			"empty owner":       newRec("", "k", "fp", at(0)),
			"NUL in owner":      newRec("o\x00", "k", "fp", at(0)),
			"empty fingerprint": newRec("o", "k", "", at(0)),
			"no expiry":         {OwnerID: "o", Key: "k", Fingerprint: "fp", CreatedAt: at(0)},
		} {
			_, err := is.Begin(ctx, rec, never)
			wantErr(t, name, err, model.ErrInvalidInput)
		}
		must(t, "Begin of the longest key", beginNew(t, is, newRec("o", strings.Repeat("k", store.MaxIdempotencyKey), "fp", at(0)), never))
	})

	t.Run("ConcurrentBegin", func(t *testing.T) {
		st, ctx := open(t), t.Context()
		is := st.Idempotency()
		const n = 8
		var wg sync.WaitGroup
		claims := make(chan int, n)
		errs := make(chan error, n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				cur, err := is.Begin(ctx, newRec("o", "race", "fp", at(i)), never)
				switch {
				case err != nil:
					errs <- err
				case cur == nil:
					claims <- i
				}
			}()
		}
		wg.Wait()
		close(claims)
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if len(claims) != 1 {
			t.Fatalf("%d concurrent Begins claimed the key, want exactly 1", len(claims))
		}
	})
}

// beginNew is Begin that must claim.
func beginNew(t *testing.T, is store.IdempotencyStore, rec *store.IdempotencyRecord, staleBefore time.Time) error {
	t.Helper()
	cur, err := is.Begin(t.Context(), rec, staleBefore)
	if err == nil && cur != nil {
		t.Fatalf("Begin of %q found %+v, want a claim", rec.Key, cur)
	}
	return err
}
