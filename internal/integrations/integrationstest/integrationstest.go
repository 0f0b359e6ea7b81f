// Package integrationstest holds what the integrations' tests share: an outside service that is not on the network,
// and the checks of a delivery's steps that the webhook fuzzers make.
package integrationstest

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/integrations"
)

// Offline is an http.RoundTripper that never leaves the process: answer gives each request's status and body.
type Offline func(r *http.Request) (status int, body string)

// RoundTrip answers r as the service's answer function says.
func (o Offline) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Body != nil {
		_, _ = io.Copy(io.Discard, r.Body)
		_ = r.Body.Close()
	}
	status, body := o(r)
	return &http.Response{StatusCode: status, Header: http.Header{"Content-Type": {"application/json"}},
		Body: io.NopCloser(strings.NewReader(body)), Request: r}, nil
}

// Accepted checks what Accept returned for a verified body: an error that says something and nothing else, or an
// acceptance that records a delivery or replies (needReply: it must reply either way). It reports whether a
// delivery was recorded, which the caller then hands to Handle.
func Accepted(t testing.TB, acc *integrations.Acceptance, err error, needReply bool) bool {
	t.Helper()
	if err != nil {
		if acc != nil || err.Error() == "" {
			t.Fatalf("Accept: %+v, %q", acc, err)
		}
		return false
	}
	if (needReply || acc.DeliveryID == "") && acc.Reply == nil {
		t.Fatalf("Accept: no reply: %+v", acc)
	}
	return acc.DeliveryID != ""
}

// HandleWithin runs handle with a context that ends after 2 s and fails the test if it has not returned 8 s later,
// or fails with an error that says nothing.
func HandleWithin(t testing.TB, handle func(context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- handle(ctx) }()
	select {
	case err := <-done:
		if err != nil && err.Error() == "" {
			t.Fatalf("Handle failed with an error that says nothing: %#v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Handle did not return 8 s after its context ended")
	}
}
