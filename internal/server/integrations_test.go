package server

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/config"
	"github.com/aetherium/aetherium/internal/integrations"
	"github.com/aetherium/aetherium/internal/store"
)

type nopRecorder struct{}

func (nopRecorder) RecordWebhook(context.Context, *store.WebhookDelivery) (bool, error) {
	return false, nil
}

// TestSlackSocketModeWithoutSigningSecret: slack_app_token alone enables Slack (HTTP webhooks refused, Socket Mode
// started on the gateway), Socket Mode keeps retrying what may pass and stops with ctx; without the token it is
// not started.
func TestSlackSocketModeWithoutSigningSecret(t *testing.T) {
	var opens atomic.Int32
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/apps.connections.open" || r.Header.Get("Authorization") != "Bearer xapp-1-test" {
			http.Error(w, "unexpected "+r.URL.Path, http.StatusBadRequest)
			return
		}
		opens.Add(1)
		_ = json.NewEncoder(w).Encode(map[string]any{"ok": false, "error": "internal_error"}) // retried
	}))
	defer api.Close()
	var logs bytes.Buffer
	lw := &syncWriter{w: &logs}
	log := slog.New(slog.NewTextHandler(lw, nil))
	cfg := config.Config{SlackAppToken: "xapp-1-test", SlackAPIURL: api.URL}

	registry, err := openIntegrations(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	in, err := registry.Get("slack")
	if err != nil {
		t.Fatalf("slack is not enabled by slack_app_token alone: %v", err)
	}
	if err := in.Verify(t.Context(), &integrations.Webhook{Header: http.Header{}}); err == nil {
		t.Error("an HTTP webhook was accepted without a signing secret")
	}

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done, err := startSlackSocket(ctx, cfg, registry, nopRecorder{}, log)
	if err != nil || done == nil {
		t.Fatalf("startSlackSocket = %v, %v", done, err)
	}
	for deadline := time.Now().Add(5 * time.Second); opens.Load() < 2; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("apps.connections.open called %d times in 5 s; an internal_error is retried", opens.Load())
		}
	}
	cancel()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		t.Fatal("Socket Mode did not stop within 3 s of its context")
	}
	lw.mu.Lock()
	logged := logs.String()
	lw.mu.Unlock()
	if strings.Contains(logged, "xapp-1-test") || !strings.Contains(logged, "internal_error") {
		t.Errorf("logs show the app token, or not why Socket Mode reconnects:\n%s", logged)
	}

	cfg.SlackAppToken, cfg.SlackSigningSecret = "", "signing-secret"
	if done, err := startSlackSocket(t.Context(), cfg, registry, nopRecorder{}, log); done != nil || err != nil {
		t.Errorf("startSlackSocket without an app token = %v, %v; want not started", done, err)
	}
}

// syncWriter serialises the writes of the goroutines that log.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}
