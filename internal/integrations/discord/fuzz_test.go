package discord

import (
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"log/slog"
	"net/http"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/integrations"
	"github.com/aetherium/aetherium/internal/integrations/integrationstest"
)

// nowhere is a Discord that is not on the network: every request is answered 404 (an unknown webhook).
var nowhere = integrationstest.Offline(func(*http.Request) (int, string) {
	return http.StatusNotFound, `{"message":"Unknown Webhook","code":10015}`
})

// FuzzDiscordInteraction sends any body, signed with a generated application key, through the route's steps:
// Verify accepts it, Accept answers or refuses it, and Handle (against a Discord that is not on the network and
// Actions that start nothing) never panics, returns within its context's time and fails only with an error that
// says something. The same body signed by another key or under another timestamp is refused by Verify.
func FuzzDiscordInteraction(f *testing.F) {
	cmd := func(channel, text string) string {
		return `{"id":"1180000000000000001","application_id":"1170000000000000000","type":2,"token":"aW50ZXJhY3Rpb24","version":1,` +
			`"channel_id":"` + channel + `","guild_id":"1160000000000000000","member":{"user":{"id":"80351110224678912","username":"nelly"}},` +
			`"data":{"id":"1190000000000000000","name":"aetherium","type":1,"options":[{"name":"text","type":3,"value":` + text + `}]}}`
	}
	for _, s := range []string{
		`{"id":"1","application_id":"1170000000000000000","type":1,"token":"t","version":1}`,
		cmd("C1", `"run echo hi"`),
		cmd("C1", `"agent org/repo fix it"`),
		cmd("C1", `"status job-1"`),
		cmd("C1", `"help"`),
		cmd("C2", `"run echo hi"`),
		cmd("C1", `42`),
		cmd("C1", `{"nested":["run"]}`),
		`{"id":"2","type":2,"token":"t","data":{"options":[{"name":"verb","value":"run"},{"name":"command","value":"ls"}]}}`,
		`{"id":"3","type":3,"token":"t","data":{"custom_id":"button"}}`,
		`{"type":2}`,
		`{"type":"1"}`,
		`null`,
		``,
	} {
		f.Add("1700000000", []byte(s))
	}
	pub, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		f.Fatal(err)
	}
	_, otherPriv, _ := ed25519.GenerateKey(nil)
	quiet := slog.New(slog.DiscardHandler)
	f.Fuzz(func(t *testing.T, ts string, body []byte) {
		d, err := New(Config{PublicKey: hex.EncodeToString(pub), APIURL: "https://discord.invalid/api/v10",
			HTTPClient: &http.Client{Transport: nowhere}, Logger: quiet,
			Sleep: func(ctx context.Context, _ time.Duration) error { return ctx.Err() }})
		if err != nil {
			t.Fatal(err)
		}
		signed := func(key ed25519.PrivateKey, signedTS, sentTS string) *integrations.Webhook {
			h := http.Header{}
			h.Set("X-Signature-Timestamp", sentTS)
			h.Set("X-Signature-Ed25519", hex.EncodeToString(ed25519.Sign(key, append([]byte(signedTS), body...))))
			return &integrations.Webhook{Header: h, Body: body, ReceivedAt: time.Now()}
		}
		ctx := context.Background()
		for name, bad := range map[string]*integrations.Webhook{"other key": signed(otherPriv, ts, ts), "other timestamp": signed(priv, ts, ts+"0")} {
			if err := d.Verify(ctx, bad); !errors.Is(err, integrations.ErrBadSignature) {
				t.Fatalf("%s: Verify = %v, want ErrBadSignature", name, err)
			}
		}
		w := signed(priv, ts, ts)
		err = d.Verify(ctx, w)
		if ts == "" {
			if !errors.Is(err, integrations.ErrBadSignature) {
				t.Fatalf("no timestamp: Verify = %v, want ErrBadSignature", err)
			}
			return
		}
		if err != nil {
			t.Fatalf("Verify of a signed body: %v", err)
		}
		acc, err := d.Accept(ctx, w)
		if !integrationstest.Accepted(t, acc, err, true) { // Discord waits for a reply to every interaction
			return
		}
		a := &fakeActions{}
		integrationstest.HandleWithin(t, func(ctx context.Context) error {
			return d.Handle(ctx, &integrations.Delivery{ID: "rec-1", Integration: "discord", DeliveryID: acc.DeliveryID,
				Event: acc.Event, Header: w.Header, Body: body, ReceivedAt: w.ReceivedAt, Attempts: 1}, a)
		})
	})
}
