package discord

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/aetherium/aetherium/internal/integrations"
)

type fakeActions struct {
	mu       sync.Mutex
	commands []string
}

func (a *fakeActions) Link(_ context.Context, integration, source string) (*integrations.Link, error) {
	if integration == "discord" && source == "discord:C1" {
		return &integrations.Link{OwnerID: "o1", Commands: true}, nil
	}
	return nil, integrations.ErrNotLinked
}

func (a *fakeActions) StartCommand(_ context.Context, _ string, req integrations.CommandRequest) (string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.commands = append(a.commands, req.Command)
	return "job-1", nil
}

func (a *fakeActions) StartRun(context.Context, string, integrations.RunRequest) (string, error) {
	return "run-1", nil
}

func (a *fakeActions) Wait(context.Context, string, string, string) (*integrations.Outcome, error) {
	return &integrations.Outcome{Status: "completed", OutputTail: "hi @everyone"}, nil
}

// TestHandle: a linked channel's command runs and its deferred answer is edited with the start and the result; an
// unlinked channel is told so and nothing runs; a run is refused by a link without runs.
func TestHandle(t *testing.T) {
	var mu sync.Mutex
	var edits []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var m message
		_ = json.NewDecoder(r.Body).Decode(&m)
		mu.Lock()
		edits = append(edits, r.Method+" "+r.URL.Path+" "+m.Content)
		mu.Unlock()
	}))
	defer srv.Close()
	d, _ := New(Config{APIURL: srv.URL})
	a := &fakeActions{}
	deliver := func(channel, text string) {
		t.Helper()
		body, _ := json.Marshal(map[string]any{"id": "9", "type": 2, "token": "itok", "application_id": "app", "channel_id": channel,
			"data": map[string]any{"name": "aetherium", "options": []map[string]any{{"name": "text", "value": text}}}})
		if err := d.Handle(context.Background(), &integrations.Delivery{Event: EventCommand, Body: body}, a); err != nil {
			t.Fatal(err)
		}
	}
	deliver("C1", "run echo hi")
	deliver("C2", "run echo hi")
	deliver("C1", "agent org/repo fix")
	if len(a.commands) != 1 || a.commands[0] != "echo hi" {
		t.Fatalf("commands %q", a.commands)
	}
	want := []string{"PATCH /webhooks/app/itok/messages/@original Started job job-1.", "PATCH /webhooks/app/itok/messages/@original **job job-1 completed**\n```\nhi @everyone\n```"}
	if len(edits) != 4 || edits[0] != want[0] || edits[1] != want[1] || !strings.Contains(edits[2], "not linked") || !strings.Contains(edits[3], "does not allow agent runs") {
		t.Fatalf("edits %q", edits)
	}
}
