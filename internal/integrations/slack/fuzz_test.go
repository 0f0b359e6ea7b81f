package slack

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/integrations"
	"github.com/aetherium/aetherium/internal/integrations/integrationstest"
)

// nowhere is a Slack that is not on the network: the Web API answers channel_not_found (a permanent failure, so
// nothing is retried), and every other URL (a body's response_url) 404.
var nowhere = integrationstest.Offline(func(r *http.Request) (int, string) {
	if r.URL.Host == "slack.invalid" && strings.HasPrefix(r.URL.Path, "/api/") {
		return http.StatusOK, `{"ok":false,"error":"channel_not_found"}`
	}
	return http.StatusNotFound, "no_service"
})

// FuzzSlackWebhook sends any body, signed with the signing secret and a current timestamp, through the route's
// steps: Verify accepts it, Accept answers or refuses it, and Handle (against a Slack that is not on the network,
// whatever response_url the body names, and Actions that start nothing) never panics, returns within its
// context's time and fails only with an error that says something. The same body under a wrong signature or a
// stale timestamp is refused by Verify.
func FuzzSlackWebhook(f *testing.F) {
	for _, s := range []string{
		slashBody("run echo hi", "https://hooks.slack.com/commands/T1/1/x"),
		slashBody("agent org/repo fix the tests", "https://hooks.slack.com/commands/T1/2/y"),
		slashBody("status job-1", ""),
		slashBody("status run-9", "https://hooks.slack.com/commands/T1/3/z"),
		slashBody("help", ""),
		slashBody("frobnicate", ""),
		strings.Replace(slashBody("run echo hi", ""), "channel_id=C1", "channel_id=C9", 1),
		"command=%2Faetherium&text=run+id&team_id=T1&channel_id=C1&trigger_id=1.2.3",
		"command=%2Faetherium&text=%zz",
		`{"token":"x","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}`,
		`{"type":"event_callback","team_id":"T1","event_id":"Ev0PV52K21","event":{"type":"app_mention","text":"<@U1> hi","channel":"C1"}}`,
		`{"type":"event_callback","event":{}}`,
		`{"type":"app_rate_limited"}`,
		` {"type":1}`,
		"",
	} {
		f.Add([]byte(s))
	}
	quiet := slog.New(slog.DiscardHandler)
	f.Fuzz(func(t *testing.T, body []byte) {
		s, err := New(Config{SigningSecret: secret, BotToken: "xoxb-test", APIURL: "https://slack.invalid/api/",
			HTTPClient: &http.Client{Transport: nowhere}, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		now := time.Now()
		w := signed(string(body), now)
		wrongSecret := signed(string(body), now)
		wrongSecret.Header.Set("X-Slack-Signature", Sign([]byte("another secret"), wrongSecret.Header.Get("X-Slack-Request-Timestamp"), body))
		otherTS := signed(string(body), now)
		otherTS.Header.Set("X-Slack-Request-Timestamp", strconv.FormatInt(now.Unix()+1, 10))
		for name, bad := range map[string]*integrations.Webhook{"wrong secret": wrongSecret, "other timestamp": otherTS,
			"stale": signed(string(body), now.Add(-MaxClockSkew-time.Minute))} {
			if err := s.Verify(ctx, bad); !errors.Is(err, integrations.ErrBadSignature) {
				t.Fatalf("%s: Verify = %v, want ErrBadSignature", name, err)
			}
		}
		if err := s.Verify(ctx, w); err != nil {
			t.Fatalf("Verify of a signed body: %v", err)
		}
		acc, err := s.Accept(ctx, w)
		if !integrationstest.Accepted(t, acc, err, false) {
			return
		}
		a := newActions()
		integrationstest.HandleWithin(t, func(ctx context.Context) error {
			return s.Handle(ctx, &integrations.Delivery{ID: "rec-1", Integration: "slack", DeliveryID: acc.DeliveryID,
				Event: acc.Event, Header: w.Header, Body: body, ReceivedAt: w.ReceivedAt, Attempts: 1}, a)
		})
	})
}
