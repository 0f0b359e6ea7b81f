package storetest

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store"
)

func runSecrets(t *testing.T, open Opener) {
	sealed := func(owner, name, key string, n byte) *store.SealedSecret {
		return &store.SealedSecret{OwnerID: owner, Name: name, KeyID: key,
			Nonce: []byte{n, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, Ciphertext: []byte{0, 0xff, n, 'x'}}
	}
	t.Run("PutGetListDelete", func(t *testing.T) {
		st, ctx := open(t), t.Context()
		ss := st.Secrets()
		a := sealed("owner-a", "B_TOKEN", "k1", 1)
		a.UpdatedAt = at(0)
		created, err := ss.Put(ctx, a)
		if err != nil || !created {
			t.Fatalf("first Put = %v, %v; want created", created, err)
		}
		if !a.CreatedAt.Equal(stored(at(0))) || a.UpdatedAt.Location() != time.UTC || a.LastUsedAt != nil {
			t.Fatalf("Put left %+v", a)
		}
		got, err := ss.Get(ctx, "owner-a", "B_TOKEN")
		must(t, "Get", err)
		same(t, "Get after Put", a, got)

		// Replacing keeps created_at and last_used_at, changes the seal and updated_at.
		must(t, "TouchLastUsed", ss.TouchLastUsed(ctx, "owner-a", "B_TOKEN", at(1)))
		must(t, "TouchLastUsed earlier", ss.TouchLastUsed(ctx, "owner-a", "B_TOKEN", at(-5))) // never backwards
		b := sealed("owner-a", "B_TOKEN", "k2", 2)
		b.UpdatedAt = at(2)
		created, err = ss.Put(ctx, b)
		if err != nil || created {
			t.Fatalf("second Put = %v, %v; want a replacement", created, err)
		}
		if !b.CreatedAt.Equal(stored(at(0))) || b.LastUsedAt == nil || !b.LastUsedAt.Equal(stored(at(1))) {
			t.Fatalf("replacement = %+v; want created_at and last_used_at kept", b)
		}
		got, err = ss.Get(ctx, "owner-a", "B_TOKEN")
		must(t, "Get", err)
		same(t, "Get after replacement", b, got)

		// Per owner; listed by name.
		for _, x := range []*store.SealedSecret{sealed("owner-a", "A_KEY", "k1", 3), sealed("owner-a", "_z", "k1", 4),
			sealed("owner-b", "B_TOKEN", "k1", 5)} {
			if _, err := ss.Put(ctx, x); err != nil {
				t.Fatal(err)
			}
		}
		l, err := ss.List(ctx, "owner-a")
		must(t, "List", err)
		sameIDs(t, "List", []string{"A_KEY", "B_TOKEN", "_z"}, idsOf(l, func(x *store.SealedSecret) string { return x.Name }))
		if l, err := ss.List(ctx, "owner-c"); err != nil || len(l) != 0 || l == nil {
			t.Fatalf("List of an owner without secrets = %v, %v; want empty, not nil", l, err)
		}
		if _, err := ss.Get(ctx, "owner-c", "B_TOKEN"); err == nil {
			t.Fatal("another owner's Get found the secret")
		} else {
			notFound(t, "Get of another owner", err, "B_TOKEN")
		}
		must(t, "Delete", ss.Delete(ctx, "owner-a", "B_TOKEN"))
		notFound(t, "Delete again", ss.Delete(ctx, "owner-a", "B_TOKEN"), "B_TOKEN")
		_, err = ss.Get(ctx, "owner-a", "B_TOKEN")
		notFound(t, "Get after Delete", err, "B_TOKEN")
		if _, err := ss.Get(ctx, "owner-b", "B_TOKEN"); err != nil {
			t.Fatalf("Delete removed another owner's secret: %v", err)
		}
		notFound(t, "TouchLastUsed missing", ss.TouchLastUsed(ctx, "owner-a", "NOPE", at(0)), "NOPE")
	})
	t.Run("Invalid", func(t *testing.T) {
		st, ctx := open(t), t.Context()
		ss := st.Secrets()
		for _, x := range []*store.SealedSecret{
			sealed("owner-a", "1ABC", "k1", 1), sealed("owner-a", "", "k1", 1), sealed("owner-a", "A-B", "k1", 1),
			sealed("owner-a", strings.Repeat("A", 65), "k1", 1),
			sealed("", "A", "k1", 1), sealed("owner-a", "A", "", 1),
			{OwnerID: "owner-a", Name: "A", KeyID: "k1"},
		} {
			if _, err := ss.Put(ctx, x); err == nil {
				t.Fatalf("Put(%+v) succeeded", x)
			} else {
				wantErr(t, "Put invalid", err, model.ErrInvalidInput)
			}
		}
		l, err := ss.List(ctx, "owner-a")
		if err != nil || len(l) != 0 {
			t.Fatalf("invalid Puts stored %d secrets (%v)", len(l), err)
		}
		if _, err := ss.Put(ctx, sealed("owner-a", strings.Repeat("A", 64), "k1", 1)); err != nil {
			t.Fatalf("Put of a 64-character name: %v", err)
		}
	})
	t.Run("Rotation", func(t *testing.T) {
		st, ctx := open(t), t.Context()
		ss := st.Secrets()
		for i, name := range []string{"A", "B", "C"} {
			if _, err := ss.Put(ctx, sealed("owner-a", name, "old", byte(i))); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := ss.Put(ctx, sealed("owner-b", "A", "new", 9)); err != nil {
			t.Fatal(err)
		}
		ids, err := ss.KeyIDs(ctx)
		must(t, "KeyIDs", err)
		same(t, "KeyIDs", map[string]int{"old": 3, "new": 1}, ids)
		todo, err := ss.NotSealedWith(ctx, "new", 2)
		must(t, "NotSealedWith", err)
		sameIDs(t, "NotSealedWith", []string{"A", "B"}, idsOf(todo, func(x *store.SealedSecret) string { return x.Name }))

		x := todo[0]
		old := x.Nonce
		before, _ := ss.Get(ctx, "owner-a", "A")
		x.KeyID, x.Nonce, x.Ciphertext = "new", []byte("fresh-nonce!"), []byte("new-ciphertext")
		must(t, "Reseal", ss.Reseal(ctx, x, old))
		after, err := ss.Get(ctx, "owner-a", "A")
		must(t, "Get", err)
		if after.KeyID != "new" || !bytes.Equal(after.Ciphertext, []byte("new-ciphertext")) || !after.UpdatedAt.Equal(before.UpdatedAt) {
			t.Fatalf("after Reseal: %+v", after)
		}
		// A reseal from a stale read changes nothing.
		y := todo[1]
		stale := y.Nonce
		if _, err := ss.Put(ctx, sealed("owner-a", "B", "old", 42)); err != nil {
			t.Fatal(err)
		}
		y.KeyID, y.Nonce, y.Ciphertext = "new", []byte("other-nonce!"), []byte("lost")
		wantErr(t, "stale Reseal", ss.Reseal(ctx, y, stale), model.ErrConflict)
		if got, _ := ss.Get(ctx, "owner-a", "B"); got.KeyID != "old" || got.Ciphertext[2] != 42 {
			t.Fatalf("stale Reseal wrote: %+v", got)
		}

		// Key checks: one per key id, first one kept.
		must(t, "AddCheck", ss.AddCheck(ctx, &store.SecretKeyCheck{KeyID: "old", Nonce: []byte("n1"), Ciphertext: []byte("c1"), CreatedAt: at(0)}))
		must(t, "AddCheck again", ss.AddCheck(ctx, &store.SecretKeyCheck{KeyID: "old", Nonce: []byte("n2"), Ciphertext: []byte("c2"), CreatedAt: at(1)}))
		must(t, "AddCheck new", ss.AddCheck(ctx, &store.SecretKeyCheck{KeyID: "new", Nonce: []byte("n3"), Ciphertext: []byte("c3"), CreatedAt: at(2)}))
		checks, err := ss.Checks(ctx)
		must(t, "Checks", err)
		same(t, "Checks", []*store.SecretKeyCheck{
			{KeyID: "old", Nonce: []byte("n1"), Ciphertext: []byte("c1"), CreatedAt: stored(at(0))},
			{KeyID: "new", Nonce: []byte("n3"), Ciphertext: []byte("c3"), CreatedAt: stored(at(2))},
		}, checks)
		must(t, "DeleteCheck", ss.DeleteCheck(ctx, "old"))
		must(t, "DeleteCheck of none", ss.DeleteCheck(ctx, "old"))
		checks, err = ss.Checks(ctx)
		if err != nil || len(checks) != 1 || checks[0].KeyID != "new" {
			t.Fatalf("Checks after delete = %+v, %v", checks, err)
		}
	})
	t.Run("ExecutionSecretEnv", func(t *testing.T) {
		st, ctx := open(t), t.Context()
		vm := &model.VM{OwnerID: "owner-a", Name: "vm-secret-env"}
		must(t, "create vm", st.VMs().Create(ctx, vm))
		e := &model.Execution{OwnerID: "owner-a", VMID: vm.ID, Command: "sh", SecretEnv: map[string]string{"GH_TOKEN": "GITHUB"}}
		must(t, "create execution", st.Executions().Create(ctx, e))
		got, err := st.Executions().Get(ctx, e.ID)
		must(t, "get execution", err)
		same(t, "secret_env", map[string]string{"GH_TOKEN": "GITHUB"}, got.SecretEnv)
		got, err = st.Executions().Update(ctx, e.ID, func(x *model.Execution) error { x.SecretEnv = map[string]string{"B": "C"}; return nil })
		must(t, "update execution", err)
		if got, err = st.Executions().Get(ctx, e.ID); err != nil || got.SecretEnv["B"] != "C" || len(got.SecretEnv) != 1 {
			t.Fatalf("secret_env after update = %v, %v", got.SecretEnv, err)
		}
	})
}
