package discord

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/aetherium/aetherium/internal/integrations"
	"github.com/aetherium/aetherium/internal/queue"
)

const token = "wXbYk2nQ3r-Jd_7hZ0aLmPq9sTuVxYz1AbCdEfGhIjKlMnOpQrStUvWxYz0123456789ab"

func TestCheckDestination(t *testing.T) {
	d, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	for _, ok := range []string{
		"https://discord.com/api/webhooks/1180000000000000001/" + token,
		"https://discordapp.com/api/webhooks/1/" + token,
		"https://canary.discord.com/api/webhooks/1/tok",
		"https://ptb.discord.com/api/v10/webhooks/1/tok",
		"https://DISCORD.com/api/v9/webhooks/1/tok",
		"https://discord.com/api/webhooks/1/tok?thread_id=1190000000000000000",
	} {
		if err := d.CheckDestination(ok); err != nil {
			t.Errorf("%s refused: %v", ok, err)
		}
	}
	for dest, why := range map[string]string{
		"http://discord.com/api/webhooks/1/s3cr3tT0ken":                 "scheme",
		"https://evil.example/api/webhooks/1/s3cr3tT0ken":               "host",
		"https://discord.com.evil.example/api/webhooks/1/s3cr3tT0ken":   "host",
		"https://evildiscord.com/api/webhooks/1/s3cr3tT0ken":            "host",
		"https://discord.com./api/webhooks/1/s3cr3tT0ken":               "host",
		"https://127.0.0.1/api/webhooks/1/s3cr3tT0ken":                  "host",
		"https://169.254.169.254/latest/meta-data":                      "host",
		"https://localhost/api/webhooks/1/s3cr3tT0ken":                  "host",
		"https://discord.com:8443/api/webhooks/1/s3cr3tT0ken":           "port",
		"https://user:pw@discord.com/api/webhooks/1/s3cr3tT0ken":        "user",
		"https://discord.com/api/webhooks/1":                            "path",
		"https://discord.com/api/webhooks/x/s3cr3tT0ken":                "path",
		"https://discord.com/api/webhooks/1/s3cr3tT0ken/slack":          "path",
		"https://discord.com/api/webhooks/1/s3cr3tT0ken/github":         "path",
		"https://discord.com/webhooks/1/s3cr3tT0ken":                    "path",
		"https://discord.com/api/vx/webhooks/1/s3cr3tT0ken":             "path",
		"https://discord.com/api/v/webhooks/1/s3cr3tT0ken":              "path",
		"https://discord.com/api/v10/channels/1/messages":               "path",
		"https://discord.com/api/webhooks/1/../../users/@me":            "path",
		"https://discord.com/api/webhooks/1/t%2Fok":                     "path",
		"https://discord.com/api/webhooks/1/s3cr3tT0ken?wait=false":     "query",
		"https://discord.com/api/webhooks/1/s3cr3tT0ken?thread_id=x":    "query",
		"https://discord.com/api/webhooks/1/s3cr3tT0ken#frag":           "fragment",
		"discord.com/api/webhooks/1/s3cr3tT0ken":                        "scheme",
		"C0123456789":                                                   "scheme",
		"":                                                              "scheme",
		"https://[::1]/api/webhooks/1/s3cr3tT0ken":                      "host",
		"https://discord.com\\@evil.example/api/webhooks/1/s3cr3tT0ken": "URL",
		"https://xn--discord-9ya.com/api/webhooks/1/s3cr3tT0ken":        "host",
		"file:///etc/passwd":                                            "scheme",
		"https:discord.com/api/webhooks/1/s3cr3tT0ken":                  "URL",
	} {
		err := d.CheckDestination(dest)
		if err == nil {
			t.Errorf("%q (bad %s) accepted", dest, why)
			continue
		}
		if strings.Contains(err.Error(), "s3cr3t") {
			t.Errorf("%q: the error repeats the token: %v", dest, err)
		}
	}

	// A configured API base (a test's local Discord) adds destinations under it, and only those.
	local, _ := New(Config{APIURL: "http://127.0.0.1:4567/api/"})
	for dest, want := range map[string]bool{
		"http://127.0.0.1:4567/api/webhooks/1/tok":        true,
		"https://discord.com/api/webhooks/1/tok":          true,
		"http://127.0.0.1:4567/api/webhooks/1/tok/x":      false,
		"http://127.0.0.1:4568/api/webhooks/1/tok":        false,
		"http://127.0.0.1:4567/other/webhooks/1/tok":      false,
		"https://127.0.0.1:4567/api/webhooks/1/tok":       false,
		"http://u@127.0.0.1:4567/api/webhooks/1/tok":      false,
		"http://127.0.0.1:4567/api/webhooks/1/tok?x=1":    false,
		"http://127.0.0.1:4567/api/webhooks/1/%74ok%2F..": false,
	} {
		if err := local.CheckDestination(dest); (err == nil) != want {
			t.Errorf("with a local API base, %s: %v, want accepted %v", dest, err, want)
		}
	}
}

type countingTransport struct{ n atomic.Int32 }

func (c *countingTransport) RoundTrip(*http.Request) (*http.Response, error) {
	c.n.Add(1)
	return nil, errors.New("no network in this test")
}

// TestNotifyRefusesOtherDestinations: a destination that is not Discord's is refused permanently at send time
// (a rule stored before the check, or written to the store directly) and nothing is requested.
func TestNotifyRefusesOtherDestinations(t *testing.T) {
	rt := &countingTransport{}
	d, _ := New(Config{HTTPClient: &http.Client{Transport: rt}})
	for _, dest := range []string{"http://169.254.169.254/latest/meta-data/", "https://internal.example/api/webhooks/1/tok", "http://localhost:8080/api/webhooks/1/tok"} {
		err := d.Notify(context.Background(), integrations.Notification{Destination: dest, Title: "t", Text: "x"})
		if err == nil || !queue.IsPermanent(err) || !strings.Contains(err.Error(), "Discord webhook URL") {
			t.Errorf("Notify to %s: %v, want a permanent refusal naming what is wanted", dest, err)
		}
	}
	if n := rt.n.Load(); n != 0 {
		t.Fatalf("%d requests made to refused destinations", n)
	}
	// A Discord URL is sent to.
	_ = d.Notify(context.Background(), integrations.Notification{Destination: "https://discord.com/api/webhooks/1/tok", Title: "t"})
	if n := rt.n.Load(); n != 1 {
		t.Fatalf("%d requests to a Discord webhook URL, want 1", n)
	}
}

// TestNotifyFollowsNoRedirect: the checked destination is the only place requested; a redirect elsewhere is a
// failed send.
func TestNotifyFollowsNoRedirect(t *testing.T) {
	var elsewhere atomic.Int32
	other := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { elsewhere.Add(1) }))
	defer other.Close()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL+"/internal", http.StatusTemporaryRedirect)
	}))
	defer srv.Close()
	d, _ := New(Config{APIURL: srv.URL + "/api"})
	if err := d.Notify(context.Background(), integrations.Notification{Destination: srv.URL + "/api/webhooks/1/tok", Title: "t"}); err == nil {
		t.Fatal("a redirected send succeeded")
	}
	if n := elsewhere.Load(); n != 0 {
		t.Fatalf("the redirect was followed (%d requests)", n)
	}
}
