package storetest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sync"
	"testing"

	"github.com/google/uuid"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store"
)

func fullRun(owner string) *model.Run {
	cost, agentCost, code := 0.125, 0.5, 0
	started := at(1)
	return &model.Run{
		OwnerID: owner, Status: model.RunRunning, VMID: uuid.NewString(), TaskID: uuid.NewString(), WorkerID: "w1",
		Spec: model.RunSpec{
			Repo:   model.RunRepo{URL: "https://github.com/org/repo", Ref: "main", CredentialsSecret: "GH"},
			Prompt: "fix the bug\nplease", Agent: "claude-code", Model: "claude-sonnet-4-5", MaxTurns: 7,
			TimeoutSeconds: 600, Env: map[string]string{"A": "1"}, SecretEnv: map[string]string{"NPM_TOKEN": "NPM"},
			VMSpec: &model.VMSpec{Name: "run-x", VCPUs: 2, MemoryMB: 2048, Tools: []string{"git", "claude-code"}},
			KeepVM: true, Push: &model.RunPush{Branch: "agent/x"}, Tools: []string{"git"}, GitProxy: true, GitSecret: "GH",
		},
		CancelRequested: true,
		Usage:           model.RunUsage{Requests: 3, InputTokens: 300, OutputTokens: 30, CacheReadInputTokens: 5, CostUSD: &cost},
		Result: &model.RunResult{Text: "done", Subtype: "success", ExitCode: &code, Turns: 3, AgentCostUSD: &agentCost,
			BaseCommit: "a", HeadCommit: "b", DiffStat: &model.DiffStat{FilesChanged: 2, Insertions: 10, Deletions: 1},
			Commits: []model.RunCommit{{SHA: "b", Subject: "fix"}}, PushedBranch: "agent/x", StderrTail: "warn"},
		CreatedAt: at(0), StartedAt: &started,
	}
}

func runRuns(t *testing.T, open Opener) {
	t.Run("CreateGetUpdate", func(t *testing.T) {
		st, ctx := open(t), t.Context()
		rs := st.Runs()
		r := fullRun("owner-a")
		must(t, "Create", rs.Create(ctx, r))
		if r.ID == "" || !r.CreatedAt.Equal(stored(at(0))) || r.UpdatedAt.IsZero() {
			t.Fatalf("Create left %+v", r)
		}
		r.CreatedAt, r.UpdatedAt, r.StartedAt = stored(r.CreatedAt), stored(r.UpdatedAt), storedPtr(r.StartedAt)
		got, err := rs.Get(ctx, r.ID)
		must(t, "Get", err)
		same(t, "Get after Create", r, got)
		must(t, "Create another", rs.Create(ctx, fullRun("owner-a")))
		dup := fullRun("owner-a")
		dup.ID = r.ID
		wantErr(t, "Create with a used id", rs.Create(ctx, dup), model.ErrConflict)
		_, err = rs.Get(ctx, uuid.NewString())
		wantErr(t, "Get missing", err, model.ErrNotFound)
		_, err = rs.Get(ctx, "not-a-uuid")
		wantErr(t, "Get bad id", err, model.ErrNotFound)
		bad := fullRun("owner-a")
		bad.Status = "dreaming"
		wantErr(t, "Create with an unknown status", rs.Create(ctx, bad), model.ErrInvalidInput)

		// Ended runs keep their status; the refused update writes nothing.
		up, err := rs.Update(ctx, r.ID, func(x *model.Run) error {
			x.Status, x.Error = model.RunCompleted, "fine"
			return nil
		})
		must(t, "Update to completed", err)
		if up.Status != model.RunCompleted || !up.UpdatedAt.After(r.UpdatedAt) && !up.UpdatedAt.Equal(r.UpdatedAt) {
			t.Fatalf("Update: %+v", up)
		}
		_, err = rs.Update(ctx, r.ID, func(x *model.Run) error {
			x.Status, x.Error = model.RunFailed, "changed my mind"
			return nil
		})
		wantErr(t, "Update of an ended run's status", err, model.ErrInvalidTransition)
		got, _ = rs.Get(ctx, r.ID)
		if got.Status != model.RunCompleted || got.Error != "fine" {
			t.Fatalf("a refused update wrote: %+v", got)
		}
		_, err = rs.Update(ctx, r.ID, func(x *model.Run) error { return fmt.Errorf("abort") })
		if err == nil || err.Error() != "abort" {
			t.Fatalf("Update's fn error: %v", err)
		}
	})

	t.Run("UpdateIsAtomic", func(t *testing.T) {
		st, ctx := open(t), t.Context()
		r := fullRun("o")
		r.Status, r.Usage = model.RunRunning, model.RunUsage{}
		must(t, "Create", st.Runs().Create(ctx, r))
		var wg sync.WaitGroup
		for range 20 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := st.Runs().Update(ctx, r.ID, func(x *model.Run) error { x.Usage.Requests++; return nil })
				if err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		got, _ := st.Runs().Get(ctx, r.ID)
		if got.Usage.Requests != 20 {
			t.Fatalf("20 concurrent increments gave %d", got.Usage.Requests)
		}
	})

	t.Run("List", func(t *testing.T) {
		st, ctx := open(t), t.Context()
		var ids []string
		vm := uuid.NewString()
		ownerA, ownerB := "owner-a-"+uuid.NewString(), "owner-b-"+uuid.NewString()
		for i := range 5 {
			r := fullRun(ownerA)
			r.CreatedAt, r.Result = at(i), nil
			r.Status = []model.RunStatus{model.RunPending, model.RunRunning, model.RunFailed, model.RunRunning, model.RunCompleted}[i]
			if i%2 == 0 {
				r.VMID = vm
			}
			if i == 4 {
				r.Spec.Repo.URL = "https://gitlab.com/g/p"
			}
			must(t, "Create", st.Runs().Create(ctx, r))
			ids = append([]string{r.ID}, ids...) // newest first
		}
		must(t, "Create other owner's", st.Runs().Create(ctx, fullRun(ownerB)))
		list := func(f store.RunFilter) []string {
			t.Helper()
			rs, err := st.Runs().List(ctx, f)
			must(t, "List", err)
			out := []string{}
			for _, r := range rs {
				out = append(out, r.ID)
			}
			return out
		}
		sameIDs(t, "owner's runs", ids, list(store.RunFilter{OwnerID: ownerA}))
		sameIDs(t, "running", []string{ids[1], ids[3]}, list(store.RunFilter{OwnerID: ownerA, Statuses: []model.RunStatus{model.RunRunning}}))
		sameIDs(t, "by vm", []string{ids[0], ids[2], ids[4]}, list(store.RunFilter{OwnerID: ownerA, VMID: vm}))
		sameIDs(t, "by repo", []string{ids[0]}, list(store.RunFilter{OwnerID: ownerA, RepoURL: "https://gitlab.com/g/p"}))
		sameIDs(t, "bad vm id", nil, list(store.RunFilter{VMID: "nope"}))
		sameIDs(t, "page 1", ids[:2], list(store.RunFilter{OwnerID: ownerA, Page: store.Page{Limit: 2}}))
		sameIDs(t, "page 2", ids[2:4], list(store.RunFilter{OwnerID: ownerA, Page: store.Page{Limit: 2, After: ids[1]}}))
		_, err := st.Runs().List(ctx, store.RunFilter{Page: store.Page{After: uuid.NewString()}})
		wantErr(t, "unknown cursor", err, model.ErrInvalidInput)
	})

	t.Run("Diff", func(t *testing.T) {
		st, ctx := open(t), t.Context()
		r := fullRun("o")
		must(t, "Create", st.Runs().Create(ctx, r))
		d, err := st.Runs().Diff(ctx, r.ID)
		if err != nil || len(d) != 0 {
			t.Fatalf("Diff before SetDiff: %q %v", d, err)
		}
		patch := append([]byte("diff --git a/x b/x\n+\x00\xff binary\n"), bytes.Repeat([]byte{0, 1, 2, 0xfe}, 1000)...)
		must(t, "SetDiff", st.Runs().SetDiff(ctx, r.ID, patch))
		d, err = st.Runs().Diff(ctx, r.ID)
		if err != nil || !bytes.Equal(d, patch) {
			t.Fatalf("Diff round trip: %d bytes, %v", len(d), err)
		}
		must(t, "SetDiff empty", st.Runs().SetDiff(ctx, r.ID, nil))
		if d, _ = st.Runs().Diff(ctx, r.ID); len(d) != 0 {
			t.Fatalf("Diff after emptying: %q", d)
		}
		wantErr(t, "SetDiff missing", st.Runs().SetDiff(ctx, uuid.NewString(), patch), model.ErrNotFound)
		_, err = st.Runs().Diff(ctx, uuid.NewString())
		wantErr(t, "Diff missing", err, model.ErrNotFound)
		// Get never carries the diff, and is unchanged by it.
		got, _ := st.Runs().Get(ctx, r.ID)
		if got.Spec.Prompt != r.Spec.Prompt {
			t.Fatalf("Get after SetDiff: %+v", got)
		}
	})

	t.Run("Events", func(t *testing.T) {
		st, ctx := open(t), t.Context()
		r := fullRun("o")
		must(t, "Create", st.Runs().Create(ctx, r))
		ev := func(typ, data string) *model.RunEvent { return &model.RunEvent{Type: typ, Data: json.RawMessage(data)} }
		wantErr(t, "events of a missing run", st.Runs().AppendEvents(ctx, uuid.NewString(), []*model.RunEvent{ev("x", `{}`)}), model.ErrNotFound)
		wantErr(t, "invalid json", st.Runs().AppendEvents(ctx, r.ID, []*model.RunEvent{ev("a", `{}`), ev("b", `{nope`)}), model.ErrInvalidInput)
		if evs, _ := st.Runs().Events(ctx, r.ID, 0, 0); len(evs) != 0 {
			t.Fatalf("a refused append stored %d events", len(evs))
		}
		must(t, "empty append", st.Runs().AppendEvents(ctx, r.ID, nil))

		const writers, each = 4, 25
		var wg sync.WaitGroup
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range each {
					e := ev("agent", fmt.Sprintf(`{"writer":%d,"i":%d,"text":"caf\u00e9"}`, w, i))
					if err := st.Runs().AppendEvents(ctx, r.ID, []*model.RunEvent{e}); err != nil {
						t.Error(err)
						return
					}
					if e.Seq < 1 || e.RunID != r.ID || e.Time.IsZero() {
						t.Errorf("AppendEvents left %+v", e)
					}
				}
			}()
		}
		wg.Wait()
		all, err := st.Runs().Events(ctx, r.ID, 0, 5000)
		must(t, "Events", err)
		if len(all) != writers*each {
			t.Fatalf("%d events, want %d", len(all), writers*each)
		}
		last := map[int]int{0: -1, 1: -1, 2: -1, 3: -1}
		for i, e := range all {
			if e.Seq != int64(i+1) {
				t.Fatalf("event %d has seq %d: numbers must be 1..n without gaps", i, e.Seq)
			}
			var d struct{ Writer, I int }
			if err := json.Unmarshal(e.Data, &d); err != nil {
				t.Fatalf("event data %s: %v", e.Data, err)
			}
			if d.I != last[d.Writer]+1 {
				t.Fatalf("writer %d's events out of order: %d after %d", d.Writer, d.I, last[d.Writer])
			}
			last[d.Writer] = d.I
		}
		page, err := st.Runs().Events(ctx, r.ID, 10, 5)
		must(t, "Events page", err)
		if len(page) != 5 || page[0].Seq != 11 || page[4].Seq != 15 {
			t.Fatalf("Events(after 10, limit 5): %d events from %d", len(page), page[0].Seq)
		}
		if evs, _ := st.Runs().Events(ctx, r.ID, 100, 0); len(evs) != 0 {
			t.Fatalf("Events after the last: %d", len(evs))
		}
		// A batch is numbered in order, after what is there.
		batch := []*model.RunEvent{ev("status", `{"status":"x"}`), ev("end", `{"status":"completed"}`)}
		must(t, "append batch", st.Runs().AppendEvents(ctx, r.ID, batch))
		if batch[0].Seq != 101 || batch[1].Seq != 102 {
			t.Fatalf("batch numbered %d, %d", batch[0].Seq, batch[1].Seq)
		}
	})
}
