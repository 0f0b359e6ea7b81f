package storetest

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store"
)

func runWebhooks(t *testing.T, open Opener) {
	t.Run("RecordGetDedupe", func(t *testing.T) {
		st := open(t)
		ctx := t.Context()
		d := &store.WebhookDelivery{Integration: "github", DeliveryID: "d-1", Event: "issue_comment",
			Header: http.Header{"X-Github-Event": {"issue_comment"}}, Body: []byte(`{"a":1}`), ReceivedAt: at(0)}
		created, err := st.Webhooks().Record(ctx, d)
		if err != nil || !created {
			t.Fatalf("Record = %v, %v; want true, nil", created, err)
		}
		got, err := st.Webhooks().Get(ctx, d.ID)
		if err != nil {
			t.Fatalf("Get: %v", err)
		}
		want := *d
		want.ReceivedAt, want.UpdatedAt, want.Status = stored(at(0)), stored(at(0)), store.DeliveryReceived
		if !reflect.DeepEqual(*got, want) {
			t.Fatalf("Get = %+v\nwant %+v", *got, want)
		}
		again := &store.WebhookDelivery{Integration: "github", DeliveryID: "d-1", Body: []byte("other"), ReceivedAt: at(1)}
		created, err = st.Webhooks().Record(ctx, again)
		if err != nil || created {
			t.Fatalf("second Record = %v, %v; want false, nil", created, err)
		}
		if again.ID != d.ID {
			t.Fatalf("second Record id = %s, want the first delivery's %s", again.ID, d.ID)
		}
		if got, _ := st.Webhooks().Get(ctx, d.ID); string(got.Body) != `{"a":1}` {
			t.Fatalf("the redelivery changed the record's body to %q", got.Body)
		}
		// Another integration may use the same delivery id.
		other := &store.WebhookDelivery{Integration: "slack", DeliveryID: "d-1", ReceivedAt: at(2)}
		if created, err := st.Webhooks().Record(ctx, other); err != nil || !created || other.ID == d.ID {
			t.Fatalf("Record of another integration's d-1 = %v, %v (id %s)", created, err, other.ID)
		}
	})
	t.Run("AttemptFinish", func(t *testing.T) {
		st := open(t)
		ctx := t.Context()
		d := &store.WebhookDelivery{Integration: "github", DeliveryID: "d-2", ReceivedAt: at(0)}
		if _, err := st.Webhooks().Record(ctx, d); err != nil {
			t.Fatal(err)
		}
		for i := 1; i <= 2; i++ {
			got, err := st.Webhooks().Attempt(ctx, d.ID)
			if err != nil || got.Attempts != i || got.Status != store.DeliveryProcessing {
				t.Fatalf("Attempt %d = %+v, %v", i, got, err)
			}
		}
		if err := st.Webhooks().Finish(ctx, d.ID, store.DeliveryFailed, "boom\x00"); err != nil {
			t.Fatalf("Finish: %v", err)
		}
		got, err := st.Webhooks().Get(ctx, d.ID)
		if err != nil || got.Status != store.DeliveryFailed || got.Error != "boom" || got.Attempts != 2 {
			t.Fatalf("after Finish: %+v, %v", got, err)
		}
		if err := st.Webhooks().Finish(ctx, d.ID, store.DeliveryReceived, ""); !errors.Is(err, model.ErrInvalidInput) {
			t.Fatalf("Finish with a non-final status = %v, want ErrInvalidInput", err)
		}
	})
	t.Run("Missing", func(t *testing.T) {
		st := open(t)
		ctx := t.Context()
		for _, id := range []string{"00000000-0000-0000-0000-000000000000", "not-a-uuid"} {
			if _, err := st.Webhooks().Get(ctx, id); !errors.Is(err, model.ErrNotFound) {
				t.Errorf("Get(%q) = %v, want ErrNotFound", id, err)
			}
			if _, err := st.Webhooks().Attempt(ctx, id); !errors.Is(err, model.ErrNotFound) {
				t.Errorf("Attempt(%q) = %v, want ErrNotFound", id, err)
			}
			if err := st.Webhooks().Finish(ctx, id, store.DeliveryDone, ""); !errors.Is(err, model.ErrNotFound) {
				t.Errorf("Finish(%q) = %v, want ErrNotFound", id, err)
			}
		}
	})
	t.Run("BadInput", func(t *testing.T) {
		st := open(t)
		for _, d := range []*store.WebhookDelivery{
			{Integration: "", DeliveryID: "x", ReceivedAt: at(0)},
			{Integration: "github", DeliveryID: "", ReceivedAt: at(0)},
			{Integration: "github", DeliveryID: "a\x00b", ReceivedAt: at(0)},
			{Integration: "github", DeliveryID: "x"},
		} {
			if _, err := st.Webhooks().Record(t.Context(), d); !errors.Is(err, model.ErrInvalidInput) {
				t.Errorf("Record(%+v) = %v, want ErrInvalidInput", d, err)
			}
		}
	})
	t.Run("Progress", func(t *testing.T) {
		st := open(t)
		ctx := t.Context()
		d := &store.WebhookDelivery{Integration: "github", DeliveryID: "p-1", Body: []byte(`{}`), ReceivedAt: at(0)}
		if _, err := st.Webhooks().Record(ctx, d); err != nil {
			t.Fatal(err)
		}
		if got, err := st.Webhooks().Get(ctx, d.ID); err != nil || got.Progress != nil {
			t.Fatalf("new delivery's progress = %q, %v; want none", got.Progress, err)
		}
		for _, doc := range []string{`{"step":"reacted"}`, `{"step":"started","job":"j-1","comment":42}`} {
			if err := st.Webhooks().SaveProgress(ctx, d.ID, []byte(doc)); err != nil {
				t.Fatalf("SaveProgress(%s): %v", doc, err)
			}
		}
		got, err := st.Webhooks().Attempt(ctx, d.ID)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal(got.Progress, &m); err != nil || m["job"] != "j-1" || m["comment"] != float64(42) {
			t.Fatalf("progress after two saves, as Attempt returns it: %q (%v)", got.Progress, err)
		}
		for name, bad := range map[string][]byte{"not JSON": []byte("{"), "too large": []byte(`"` + strings.Repeat("x", store.MaxWebhookProgress) + `"`)} {
			if err := st.Webhooks().SaveProgress(ctx, d.ID, bad); !errors.Is(err, model.ErrInvalidInput) {
				t.Fatalf("SaveProgress of %s = %v, want ErrInvalidInput", name, err)
			}
		}
		if again, _ := st.Webhooks().Get(ctx, d.ID); !bytes.Equal(again.Progress, got.Progress) {
			t.Fatalf("refused saves changed the progress: %q", again.Progress)
		}
		if err := st.Webhooks().SaveProgress(ctx, "00000000-0000-0000-0000-000000000000", []byte(`{}`)); !errors.Is(err, model.ErrNotFound) {
			t.Fatalf("SaveProgress of an unknown delivery = %v, want ErrNotFound", err)
		}
	})
	t.Run("ListReceivedAndTouch", func(t *testing.T) {
		st := open(t)
		ctx := t.Context()
		ws := st.Webhooks()
		mk := func(id string, minute int) *store.WebhookDelivery {
			d := &store.WebhookDelivery{Integration: "github", DeliveryID: id, Body: []byte(`{}`), ReceivedAt: at(minute)}
			if _, err := ws.Record(ctx, d); err != nil {
				t.Fatal(err)
			}
			return d
		}
		old, older, fresh, attempted := mk("old", 1), mk("older", 0), mk("fresh", 10), mk("attempted", 0)
		if _, err := ws.Attempt(ctx, attempted.ID); err != nil {
			t.Fatal(err)
		}
		got, err := ws.ListReceived(ctx, at(5), 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 2 || got[0].ID != older.ID || got[1].ID != old.ID {
			t.Fatalf("ListReceived before minute 5 = %d deliveries, want older then old (not fresh, not attempted)", len(got))
		}
		if got, _ := ws.ListReceived(ctx, at(5), 1); len(got) != 1 || got[0].ID != older.ID {
			t.Fatalf("ListReceived with limit 1 = %d", len(got))
		}
		// Of several touches of one delivery, one wins; the touched delivery is no longer listed as old.
		won := 0
		var mu sync.Mutex
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				ok, err := ws.Touch(ctx, old.ID, at(5))
				if err != nil {
					t.Error(err)
				}
				if ok {
					mu.Lock()
					won++
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if won != 1 {
			t.Fatalf("%d of 4 concurrent touches won, want 1", won)
		}
		if got, _ := ws.ListReceived(ctx, at(5), 10); len(got) != 1 || got[0].ID != older.ID {
			t.Fatalf("after the touch ListReceived = %d deliveries, want only older", len(got))
		}
		if ok, err := ws.Touch(ctx, attempted.ID, at(5)); ok || err != nil {
			t.Fatalf("Touch of an attempted delivery = %v, %v; want false", ok, err)
		}
		if ok, err := ws.Touch(ctx, fresh.ID, at(5)); ok || err != nil {
			t.Fatalf("Touch of a fresh delivery = %v, %v; want false", ok, err)
		}
	})
	t.Run("ConcurrentRecord", func(t *testing.T) {
		st := open(t)
		const n = 8
		var wg sync.WaitGroup
		results := make([]bool, n)
		ids := make([]string, n)
		errs := make([]error, n)
		for i := range n {
			wg.Go(func() {
				d := &store.WebhookDelivery{Integration: "github", DeliveryID: "same", ReceivedAt: at(i)}
				results[i], errs[i] = st.Webhooks().Record(t.Context(), d)
				ids[i] = d.ID
			})
		}
		wg.Wait()
		won := 0
		for i := range n {
			if errs[i] != nil {
				t.Fatalf("Record %d: %v", i, errs[i])
			}
			if results[i] {
				won++
			}
			if ids[i] != ids[0] {
				t.Fatalf("Record %d got id %s, Record 0 got %s", i, ids[i], ids[0])
			}
		}
		if won != 1 {
			t.Fatalf("%d of %d concurrent Records of one delivery inserted, want exactly 1", won, n)
		}
	})
}

func runIntegrationLinks(t *testing.T, open Opener) {
	t.Run("CreateFindListDelete", func(t *testing.T) {
		st := open(t)
		ctx := t.Context()
		ls := st.IntegrationLinks()
		a := &store.IntegrationLink{OwnerID: "alice", Integration: "github", Source: "github.com/org/repo",
			Commands: true, Runs: true, DraftPR: true, PRCommand: "make test", AllowedCommands: []string{"make test", "npm run *"}, Notify: []string{"run.finished"}, CreatedAt: at(0)}
		if err := ls.Create(ctx, a); err != nil {
			t.Fatalf("Create: %v", err)
		}
		b := &store.IntegrationLink{OwnerID: "bob", Integration: "github", Source: "github.com/org/*", CreatedAt: at(1)}
		c := &store.IntegrationLink{OwnerID: "alice", Integration: "slack", Source: "T1/C1", AllowBots: true, Notify: []string{}, CreatedAt: at(2)}
		for _, l := range []*store.IntegrationLink{b, c} {
			if err := ls.Create(ctx, l); err != nil {
				t.Fatalf("Create %s: %v", l.Source, err)
			}
		}
		if c.Notify != nil {
			t.Errorf("Create left an empty Notify non-nil")
		}
		got, err := ls.Find(ctx, "github", "github.com/org/repo")
		if err != nil {
			t.Fatalf("Find: %v", err)
		}
		want := *a
		want.CreatedAt = stored(at(0))
		if !reflect.DeepEqual(*got, want) {
			t.Fatalf("Find = %+v\nwant %+v", *got, want)
		}
		if _, err := ls.Find(ctx, "slack", "github.com/org/repo"); !errors.Is(err, model.ErrNotFound) {
			t.Fatalf("Find in another integration = %v, want ErrNotFound", err)
		}
		dup := &store.IntegrationLink{OwnerID: "carol", Integration: "github", Source: "github.com/org/repo"}
		if err := ls.Create(ctx, dup); !errors.Is(err, model.ErrConflict) {
			t.Fatalf("Create of a linked source = %v, want ErrConflict", err)
		}
		ids := func(links []*store.IntegrationLink, err error) []string {
			t.Helper()
			if err != nil {
				t.Fatal(err)
			}
			out := []string{}
			for _, l := range links {
				out = append(out, l.ID)
			}
			return out
		}
		if got, want := ids(ls.List(ctx, "alice", "")), []string{c.ID, a.ID}; !reflect.DeepEqual(got, want) {
			t.Fatalf("List(alice) = %v, want %v", got, want)
		}
		if got, want := ids(ls.List(ctx, "", "github")), []string{b.ID, a.ID}; !reflect.DeepEqual(got, want) {
			t.Fatalf("List(github) = %v, want %v", got, want)
		}
		if err := ls.Delete(ctx, "bob", a.ID); !errors.Is(err, model.ErrNotFound) {
			t.Fatalf("Delete of another owner's link = %v, want ErrNotFound", err)
		}
		if err := ls.Delete(ctx, "alice", a.ID); err != nil {
			t.Fatalf("Delete: %v", err)
		}
		if _, err := ls.Find(ctx, "github", "github.com/org/repo"); !errors.Is(err, model.ErrNotFound) {
			t.Fatalf("Find after Delete = %v, want ErrNotFound", err)
		}
		if err := ls.Delete(ctx, "alice", "not-a-uuid"); !errors.Is(err, model.ErrNotFound) {
			t.Fatalf("Delete(not-a-uuid) = %v, want ErrNotFound", err)
		}
	})
	t.Run("BadInput", func(t *testing.T) {
		st := open(t)
		for _, l := range []*store.IntegrationLink{
			{OwnerID: "", Integration: "github", Source: "s"},
			{OwnerID: "o", Integration: "", Source: "s"},
			{OwnerID: "o", Integration: "github", Source: ""},
			{OwnerID: "o", Integration: "github", Source: "bad\xff"},
			{OwnerID: "o", Integration: "github", Source: "s", ID: "nope"},
			{OwnerID: "o", Integration: "github", Source: "s", PRCommand: strings.Repeat("x", store.MaxPRCommand+1)},
			{OwnerID: "o", Integration: "github", Source: "s", PRCommand: "make\x00test"},
		} {
			if err := st.IntegrationLinks().Create(t.Context(), l); !errors.Is(err, model.ErrInvalidInput) {
				t.Errorf("Create(%+v) = %v, want ErrInvalidInput", l, err)
			}
		}
		if links, err := st.IntegrationLinks().List(t.Context(), "", ""); err != nil || len(links) != 0 {
			t.Fatalf("bad input wrote links: %v, %v", links, err)
		}
	})
}
