package storetest

import (
	"testing"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store"
)

func runSigningKeys(t *testing.T, open Opener) {
	st := open(t)
	ctx := t.Context()
	ks := st.SigningKeys()
	list, err := ks.List(ctx)
	must(t, "List empty", err)
	if len(list) != 0 {
		t.Fatalf("new store has %d signing keys", len(list))
	}
	k1 := &store.SigningKey{ID: "k1", Algorithm: "EdDSA", Public: []byte{1, 2}, Private: []byte{3, 4}, SealKeyID: "s1",
		Nonce: []byte{5}, CreatedAt: at(0)}
	must(t, "Create", ks.Create(ctx, k1))
	k2 := &store.SigningKey{ID: "k2", Algorithm: "EdDSA", Public: []byte{6}, Private: []byte{7}, CreatedAt: at(10)}
	must(t, "Create unsealed", ks.Create(ctx, k2))
	wantErr(t, "duplicate", ks.Create(ctx, &store.SigningKey{ID: "k1", Algorithm: "EdDSA", Public: []byte{1},
		Private: []byte{1}}), model.ErrConflict)
	wantErr(t, "no key", ks.Create(ctx, &store.SigningKey{ID: "k3", Algorithm: "EdDSA"}), model.ErrInvalidInput)
	list, err = ks.List(ctx)
	must(t, "List", err)
	if len(list) != 2 || list[0].ID != "k2" || list[1].ID != "k1" {
		t.Fatalf("List = %v, want k2, k1", list)
	}
	want := *k1
	want.CreatedAt = stored(at(0))
	same(t, "sealed key", want, *list[1])
	if len(list[0].Nonce) != 0 || list[0].SealKeyID != "" {
		t.Fatalf("unsealed key came back with nonce %v, seal key %q", list[0].Nonce, list[0].SealKeyID)
	}
	n, err := ks.DeleteOlder(ctx, at(100))
	must(t, "DeleteOlder", err)
	if n != 1 {
		t.Fatalf("DeleteOlder deleted %d, want 1 (the newest key is kept)", n)
	}
	list, err = ks.List(ctx)
	must(t, "List", err)
	if len(list) != 1 || list[0].ID != "k2" {
		t.Fatalf("after DeleteOlder: %v, want k2", list)
	}
}

func runAudit(t *testing.T, open Opener) {
	st := open(t)
	ctx := t.Context()
	a := st.Audit()
	entries := []*store.AuditEntry{
		{At: at(0), KeyID: "ka", OwnerID: "oa", Role: "admin", Method: "POST", Route: "/api/v1/vms", Status: 202,
			Source: "127.0.0.1", RequestID: "r1"},
		{At: at(1), KeyID: "kb", OwnerID: "ob", Role: "user", Method: "DELETE", Route: "/api/v1/vms/{id}",
			Params: map[string]string{"id": "vm-1"}, Status: 404, Source: "[::1]", RequestID: "r2"},
		{At: at(2), KeyID: "ka", OwnerID: "oa", Role: "admin", Method: "POST", Route: "/api/v1/auth/token", Status: 200},
	}
	must(t, "Append", a.Append(ctx, entries))
	must(t, "Append none", a.Append(ctx, nil))
	if entries[0].Seq == 0 || entries[1].Seq <= entries[0].Seq || entries[2].Seq <= entries[1].Seq {
		t.Fatalf("seqs %d %d %d do not increase", entries[0].Seq, entries[1].Seq, entries[2].Seq)
	}
	wantErr(t, "no method", a.Append(ctx, []*store.AuditEntry{{Route: "/x", Status: 200}}), model.ErrInvalidInput)

	seqs := func(f store.AuditFilter) []int64 {
		t.Helper()
		got, err := a.List(ctx, f)
		must(t, "List", err)
		out := []int64{}
		for _, e := range got {
			out = append(out, e.Seq)
		}
		return out
	}
	s0, s1, s2 := entries[0].Seq, entries[1].Seq, entries[2].Seq
	same(t, "all, newest first", []int64{s2, s1, s0}, seqs(store.AuditFilter{}))
	same(t, "by key", []int64{s2, s0}, seqs(store.AuditFilter{KeyID: "ka"}))
	same(t, "by owner", []int64{s1}, seqs(store.AuditFilter{OwnerID: "ob"}))
	same(t, "by method", []int64{s1}, seqs(store.AuditFilter{Method: "DELETE"}))
	same(t, "by status", []int64{s2}, seqs(store.AuditFilter{Status: 200}))
	same(t, "since", []int64{s2, s1}, seqs(store.AuditFilter{Since: at(1)}))
	same(t, "until", []int64{s0}, seqs(store.AuditFilter{Until: at(1)}))
	same(t, "limit", []int64{s2}, seqs(store.AuditFilter{Limit: 1}))
	same(t, "cursor", []int64{s1, s0}, seqs(store.AuditFilter{Before: s2}))

	got, err := a.List(ctx, store.AuditFilter{OwnerID: "ob"})
	must(t, "List", err)
	want := *entries[1]
	want.At = stored(at(1))
	same(t, "entry", want, *got[0])

	n, err := a.Prune(ctx, at(2))
	must(t, "Prune", err)
	if n != 2 {
		t.Fatalf("Prune deleted %d, want 2", n)
	}
	same(t, "after prune", []int64{s2}, seqs(store.AuditFilter{}))
}
