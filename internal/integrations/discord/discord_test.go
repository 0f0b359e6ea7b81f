package discord

import (
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/aetherium/aetherium/internal/integrations"
	"github.com/aetherium/aetherium/internal/queue"
)

func TestVerifyAndPing(t *testing.T) {
	pub, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	d, err := New(Config{PublicKey: hex.EncodeToString(pub)})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	body := []byte(`{"id":"1","type":1,"application_id":"app"}`)
	sign := func(ts string, b []byte) *integrations.Webhook {
		h := http.Header{}
		h.Set("X-Signature-Timestamp", ts)
		h.Set("X-Signature-Ed25519", hex.EncodeToString(ed25519.Sign(priv, append([]byte(ts), b...))))
		return &integrations.Webhook{Header: h, Body: append([]byte(nil), b...)}
	}
	w := sign("1700000000", body)
	if err := d.Verify(ctx, w); err != nil {
		t.Fatalf("good signature refused: %v", err)
	}
	acc, err := d.Accept(ctx, w)
	if err != nil || acc.DeliveryID != "" || string(acc.Reply.Body) != `{"type":1}` {
		t.Fatalf("PING accepted as %+v, %v; want PONG", acc, err)
	}
	changed := sign("1700000000", body)
	changed.Body[5] ^= 1
	otherTS := sign("1700000000", body)
	otherTS.Header.Set("X-Signature-Timestamp", "1700000001")
	_, otherPriv, _ := ed25519.GenerateKey(nil)
	wrongKey := sign("1700000000", body)
	wrongKey.Header.Set("X-Signature-Ed25519", hex.EncodeToString(ed25519.Sign(otherPriv, append([]byte("1700000000"), body...))))
	missing := sign("1700000000", body)
	missing.Header.Del("X-Signature-Ed25519")
	for name, w := range map[string]*integrations.Webhook{"body changed by one byte": changed, "other timestamp": otherTS, "wrong key": wrongKey, "no signature": missing} {
		if err := d.Verify(ctx, w); !errors.Is(err, integrations.ErrBadSignature) {
			t.Errorf("%s: Verify = %v", name, err)
		}
	}
	off, _ := New(Config{})
	if err := off.Verify(ctx, sign("1700000000", body)); !errors.Is(err, integrations.ErrBadSignature) {
		t.Errorf("without a public key Verify = %v", err)
	}
	cmd := sign("1", []byte(`{"id":"99","type":2,"token":"tok","application_id":"app","channel_id":"C","data":{"name":"aetherium","options":[{"name":"text","value":"run echo hi"}]}}`))
	acc, err = d.Accept(ctx, cmd)
	if err != nil || acc.DeliveryID != "99" || string(acc.Reply.Body) != `{"type":5}` {
		t.Fatalf("command accepted as %+v, %v", acc, err)
	}
}

func TestSplit(t *testing.T) {
	line := strings.Repeat("x", 999) + "\n"
	text := strings.Repeat(line, 5) + strings.Repeat("é", 4500)
	parts := Split(text, MaxContent)
	joined := 0
	for i, p := range parts {
		if n := utf8.RuneCountInString(p); n > MaxContent {
			t.Fatalf("part %d has %d characters", i, n)
		}
		joined += utf8.RuneCountInString(p)
	}
	// Two lines per part (1,000 each incl. newline ≤ 2,000), then the long line cut in 2,000s.
	if len(parts) != 6 || parts[0] != strings.Repeat(line, 2)[:1999] || utf8.RuneCountInString(parts[5]) != 500 {
		t.Fatalf("%d parts: %d %d", len(parts), len(parts[0]), utf8.RuneCountInString(parts[len(parts)-1]))
	}
	fields := map[string]string{}
	for i := 0; i < 40; i++ {
		fields["f"+strconv.Itoa(i)] = strings.Repeat("v", 2000)
	}
	msgs := messages(integrations.Notification{Title: strings.Repeat("t", 300), Fields: fields, Text: "short"})
	e := msgs[0].Embeds[0]
	total := utf8.RuneCountInString(e.Title)
	for _, f := range e.Fields {
		total += utf8.RuneCountInString(f.Name) + utf8.RuneCountInString(f.Value)
		if utf8.RuneCountInString(f.Value) > MaxFieldValue {
			t.Fatal("field value over the limit")
		}
	}
	if len(msgs) != 1 || utf8.RuneCountInString(e.Title) != MaxEmbedTitle || len(e.Fields) > MaxEmbedFields || total > MaxEmbedTotal || len(e.Fields) == 0 {
		t.Fatalf("embed: title %d, %d fields, total %d", utf8.RuneCountInString(e.Title), len(e.Fields), total)
	}
}

// fakeWebhook is a Discord webhook that answers 429 (retry_after in the body or Retry-After) and 500 when told,
// and reports rate-limit buckets.
type fakeWebhook struct {
	mu       sync.Mutex
	script   []int // status codes to answer first
	got      []string
	bucketAt int // remaining reported after each success
}

func (f *fakeWebhook) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r.URL.Query().Get("wait") != "true" {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	if len(f.script) > 0 {
		code := f.script[0]
		f.script = f.script[1:]
		if code == 429 {
			if len(f.script)%2 == 0 {
				w.Header().Set("Retry-After", "0.01")
				w.WriteHeader(429)
				return
			}
			w.WriteHeader(429)
			_, _ = w.Write([]byte(`{"message":"You are being rate limited.","retry_after":0.02,"global":false}`))
			return
		}
		w.WriteHeader(code)
		return
	}
	var m message
	_ = json.NewDecoder(r.Body).Decode(&m)
	f.got = append(f.got, m.Content)
	w.Header().Set("X-RateLimit-Bucket", "b1")
	w.Header().Set("X-RateLimit-Remaining", strconv.Itoa(f.bucketAt))
	w.Header().Set("X-RateLimit-Reset-After", "0.05")
	w.WriteHeader(http.StatusOK)
}

func TestNotifyRateLimits(t *testing.T) {
	f := &fakeWebhook{script: []int{429, 429}}
	srv := httptest.NewServer(f)
	defer srv.Close()
	var mu sync.Mutex
	var slept []time.Duration
	d, _ := New(Config{APIURL: srv.URL + "/api", Sleep: func(ctx context.Context, t time.Duration) error {
		mu.Lock()
		slept = append(slept, t)
		mu.Unlock()
		time.Sleep(t)
		return nil
	}})
	ctx := context.Background()
	dest := srv.URL + "/api/webhooks/1/secret-token"
	if err := d.Notify(ctx, integrations.Notification{Destination: dest, Title: "t", Text: "one"}); err != nil {
		t.Fatal(err)
	}
	if len(slept) != 2 || slept[0] != 20*time.Millisecond || slept[1] != 10*time.Millisecond {
		t.Fatalf("429 waits %v, want the body's 20ms then the header's 10ms", slept)
	}
	// The bucket is now used up (remaining 0, reset after 50ms): the next send waits for it.
	if err := d.Notify(ctx, integrations.Notification{Destination: dest, Title: "t", Text: "two"}); err != nil {
		t.Fatal(err)
	}
	if len(slept) != 3 || slept[2] <= 0 || slept[2] > 50*time.Millisecond {
		t.Fatalf("bucket wait %v", slept)
	}
	f.script = []int{500}
	err := d.Notify(ctx, integrations.Notification{Destination: dest, Title: "t", Text: "three"})
	if err == nil || strings.Contains(err.Error(), "secret-token") {
		t.Fatalf("500: %v (want an error without the token)", err)
	}
	f.script = []int{404}
	if err := d.Notify(ctx, integrations.Notification{Destination: dest, Title: "t"}); err == nil {
		t.Fatal("404 succeeded")
	}
	if strings.Join(f.got, "|") != "one|two" {
		t.Fatalf("got %q", f.got)
	}
}

// TestNotifyPart: with Part set, Notify sends that one message of the notification (the first carries the
// embed); a part beyond Parts is refused for good.
func TestNotifyPart(t *testing.T) {
	f := &fakeWebhook{}
	srv := httptest.NewServer(f)
	defer srv.Close()
	d, _ := New(Config{APIURL: srv.URL + "/api"})
	n := integrations.Notification{Destination: srv.URL + "/api/webhooks/1/tok", Title: "t",
		Text: strings.Repeat("a", 1500) + "\n" + strings.Repeat("b", 1500) + "\n" + strings.Repeat("c", 1500)}
	if got := d.Parts(n); got != 3 {
		t.Fatalf("Parts = %d, want 3", got)
	}
	for _, part := range []int{2, 3} {
		n.Part = part
		if err := d.Notify(context.Background(), n); err != nil {
			t.Fatal(err)
		}
	}
	if len(f.got) != 2 || f.got[0] != strings.Repeat("b", 1500) || f.got[1] != strings.Repeat("c", 1500) {
		t.Fatalf("sent %d messages: %.10q", len(f.got), f.got)
	}
	n.Part = 4
	if err := d.Notify(context.Background(), n); !queue.IsPermanent(err) {
		t.Fatalf("part 4 of 3: %v, want a permanent error", err)
	}
}
