package dispatch_test

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/events/inproc"
	"github.com/aetherium/aetherium/internal/integrations"
	"github.com/aetherium/aetherium/internal/integrations/dispatch"
	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/queue"
	"github.com/aetherium/aetherium/internal/queue/embedded"
	"github.com/aetherium/aetherium/internal/secrets"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/store/sqlite"
	"github.com/aetherium/aetherium/internal/task"
)

// recorder is an integration that keeps what Handle got and fails when told to.
type recorder struct {
	got  []*integrations.Delivery
	link *integrations.Link
	fail error
}

func (r *recorder) Name() string                                            { return "rec" }
func (r *recorder) MaxBodyBytes() int64                                     { return 1 << 20 }
func (r *recorder) Verify(context.Context, *integrations.Webhook) error     { return nil }
func (r *recorder) Notify(context.Context, integrations.Notification) error { return nil }
func (r *recorder) Health(context.Context) error                            { return nil }
func (r *recorder) Accept(context.Context, *integrations.Webhook) (*integrations.Acceptance, error) {
	return nil, nil
}
func (r *recorder) Handle(ctx context.Context, d *integrations.Delivery, a integrations.Actions) error {
	r.got = append(r.got, d)
	if err := d.SaveProgress(ctx, map[string]int{"attempt": d.Attempts}); err != nil {
		return err
	}
	l, err := a.Link(ctx, "rec", "github.com/acme/api")
	if err != nil {
		return err
	}
	r.link = l
	return r.fail
}

func setup(t *testing.T) (*task.Service, store.Store) {
	t.Helper()
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "a.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	if err := st.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	bus := inproc.New()
	t.Cleanup(func() { _ = bus.Close() })
	q := embedded.New(st.Tasks(), bus, queue.Options{WorkerID: "w"}, slog.Default())
	return task.New(st, q, bus, task.DefaultLimits()), st
}

// TestHandle: the webhook:process handler gives the integration the recorded delivery and Actions whose Link
// finds an organisation's link for its repositories, and records the outcome.
func TestHandle(t *testing.T) {
	svc, st := setup(t)
	ctx := t.Context()
	if err := svc.CreateLink(ctx, "alice", &store.IntegrationLink{Integration: "rec", Source: "github.com/acme/*",
		Commands: true}); err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	d := dispatch.New(dispatch.Config{Service: svc, Registry: integrations.NewRegistry(rec)})
	record := func(id string) *model.Task {
		del := &store.WebhookDelivery{Integration: "rec", DeliveryID: id, Event: "e", Body: []byte(`{"x":1}`),
			Header: http.Header{"X-A": {"b"}}, ReceivedAt: time.Now()}
		if dup, err := svc.RecordWebhook(ctx, del); err != nil || dup {
			t.Fatalf("RecordWebhook = %v, %v", dup, err)
		}
		ts, err := st.Tasks().List(ctx, store.TaskFilter{OwnerID: task.WebhookOwner})
		if err != nil {
			t.Fatal(err)
		}
		return ts[0]
	}
	tk := record("d1")
	if _, err := d.Handle(ctx, tk); err != nil {
		t.Fatalf("Handle: %v", err)
	}
	if len(rec.got) != 1 || string(rec.got[0].Body) != `{"x":1}` || rec.got[0].Header.Get("X-A") != "b" || rec.got[0].Attempts != 1 {
		t.Fatalf("the integration got %+v", rec.got)
	}
	if rec.link == nil || rec.link.OwnerID != "alice" || !rec.link.Commands || rec.link.Runs {
		t.Fatalf("Link = %+v, want alice's organisation link", rec.link)
	}
	got, err := st.Webhooks().Get(ctx, rec.got[0].ID)
	if err != nil || got.Status != store.DeliveryDone {
		t.Fatalf("record after success: %+v, %v", got, err)
	}

	rec.fail = errors.New("github is down")
	tk = record("d2")
	tk.MaxRetries, tk.RetryCount = 3, 0
	if _, err := d.Handle(ctx, tk); err == nil {
		t.Fatal("a failing Handle was not returned for a retry")
	}
	if got, _ := st.Webhooks().Get(ctx, rec.got[1].ID); got.Status != store.DeliveryProcessing {
		t.Fatalf("record after a failure with retries left: %s, want processing", got.Status)
	}
	tk.RetryCount = 3
	if _, err := d.Handle(ctx, tk); err == nil {
		t.Fatal("the last attempt's failure was not returned")
	}
	if rec.got[1].Progress != nil || string(rec.got[2].Progress) != `{"attempt":1}` {
		t.Fatalf("progress given to the attempts: %q then %q; want none, then what the first saved", rec.got[1].Progress, rec.got[2].Progress)
	}
	if got, _ := st.Webhooks().Get(ctx, rec.got[2].ID); got.Status != store.DeliveryFailed || got.Error != "github is down" || got.Attempts != 2 {
		t.Fatalf("record after the last attempt: %+v, want failed with the error after 2 attempts", got)
	}
}

func TestHandleUnlinked(t *testing.T) {
	svc, _ := setup(t)
	d := dispatch.New(dispatch.Config{Service: svc})
	if _, err := d.Link(t.Context(), "rec", "github.com/acme/api"); !errors.Is(err, integrations.ErrNotLinked) {
		t.Fatalf("Link of an unlinked source = %v, want ErrNotLinked", err)
	}
}

// TestStartRunOnADraftPRLink: a link that opens draft pull requests starts a run that pushes its branch (the
// integration opens the pull request itself); the run service refuses push.draft_pr from a plain request, and
// the dispatcher must not pass it on.
func TestStartRunOnADraftPRLink(t *testing.T) {
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "a.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	if err := st.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	bus := inproc.New()
	t.Cleanup(func() { _ = bus.Close() })
	q := embedded.New(st.Tasks(), bus, queue.Options{WorkerID: "w"}, slog.Default())
	key, err := secrets.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	kr, err := secrets.NewKeyring(key)
	if err != nil {
		t.Fatal(err)
	}
	mgr := secrets.NewManager(st.Secrets(), kr, slog.Default())
	svc := task.New(st, q, bus, task.DefaultLimits(), task.WithSecrets(mgr))
	ctx := t.Context()
	for name, value := range map[string]string{"ANTHROPIC_API_KEY": "sk-ant-test", "GITHUB_TOKEN": "ghp-test"} {
		if _, _, err := mgr.Put(ctx, "alice", name, value); err != nil {
			t.Fatal(err)
		}
	}
	d := dispatch.New(dispatch.Config{Service: svc})
	id, err := d.StartRun(ctx, "alice", integrations.RunRequest{RepoURL: "https://github.com/acme/api", Ref: "main",
		Prompt: "fix it", Branch: "aetherium/issue-7", DraftPR: true})
	if err != nil {
		t.Fatalf("StartRun on a draft-PR link: %v", err)
	}
	r, err := st.Runs().Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if r.OwnerID != "alice" || r.Spec.Push == nil || r.Spec.Push.Branch != "aetherium/issue-7" || r.Spec.Push.DraftPR {
		t.Fatalf("run: owner %s push %+v; want alice's run pushing aetherium/issue-7, no draft_pr", r.OwnerID, r.Spec.Push)
	}
}
