package e2e

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/integrations/slack"
	"github.com/aetherium/aetherium/pkg/client"
)

// slackAPI is Slack as the product meets it in this test: a response_url and the Web API's chat.postMessage and
// chat.update, on a local server; it keeps what it was sent.
type slackAPI struct {
	*httptest.Server
	mu   sync.Mutex
	got  []string // "response:<type>:<text>", "post:<channel>:<text>", "update:<text>"
	auth []string
}

func newSlackAPI(t *testing.T) *slackAPI {
	s := &slackAPI{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body map[string]any
		_ = json.NewDecoder(r.Body).Decode(&body)
		text, _ := body["text"].(string)
		s.mu.Lock()
		defer s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		switch r.URL.Path {
		case "/response":
			rt, _ := body["response_type"].(string)
			s.got = append(s.got, "response:"+rt+":"+text)
		case "/api/chat.postMessage":
			s.auth = append(s.auth, r.Header.Get("Authorization"))
			ch, _ := body["channel"].(string)
			s.got = append(s.got, "post:"+ch+":"+text)
			_ = json.NewEncoder(w).Encode(map[string]any{"ok": true, "channel": ch, "ts": "1700000000.000100"})
		case "/api/chat.update":
			s.auth = append(s.auth, r.Header.Get("Authorization"))
			s.got = append(s.got, "update:"+text)
			_ = json.NewEncoder(w).Encode(map[string]any{"ok": true})
		case "/api/auth.test":
			_ = json.NewEncoder(w).Encode(map[string]any{"ok": true})
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *slackAPI) messages() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.got...)
}

// TestSlackCommandEndToEnd: through serve's real webhook route, a signed `/aetherium run echo hi-from-slack` from a
// linked channel is acknowledged at once with an ephemeral message, runs in a real VM (Docker) and its result (the
// output and exit code) reaches the command's response_url; a stale timestamp, a wrong signature and a body changed
// by one byte are each refused with 401 and run nothing (the same trigger id then is new); a retry of the signed
// command is answered without running it twice.
func TestSlackCommandEndToEnd(t *testing.T) {
	requireDocker(t)
	api := newSlackAPI(t)
	const secret = "e2e slack signing secret"
	dataDir := t.TempDir()
	addr := freePort(t)
	const workerID = "e2e-slack"
	removeWorkerContainers(t, workerID)
	p := start(t, "serve", serveEnv(dataDir, addr, "AETHERIUM_WORKER_ID="+workerID, "AETHERIUM_SLACK_SIGNING_SECRET="+secret,
		"AETHERIUM_SLACK_BOT_TOKEN=xoxb-e2e", "AETHERIUM_SLACK_API_URL="+api.URL+"/api/"), "serve")
	waitHTTP(t, addr, p)
	c := newClient(t, addr, readLine(t, filepath.Join(dataDir, "admin-api-key")))
	waitReady(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := c.CreateIntegrationLink(ctx, client.CreateIntegrationLinkRequest{Integration: "slack", Source: "T0E2E/C0E2E"}); err != nil {
		t.Fatal(err)
	}
	body := url.Values{"command": {"/aetherium"}, "text": {"run echo hi-from-slack"}, "team_id": {"T0E2E"},
		"channel_id": {"C0E2E"}, "user_id": {"U0E2E"}, "trigger_id": {"13345224609.738474920.e2e"},
		"response_url": {api.URL + "/response"}}.Encode()
	send := func(b string, at time.Time, sig string) (int, string, time.Duration) {
		t.Helper()
		ts := strconv.FormatInt(at.Unix(), 10)
		if sig == "" {
			sig = slack.Sign([]byte(secret), ts, []byte(body))
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+"/api/v1/webhooks/slack", strings.NewReader(b))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("X-Slack-Request-Timestamp", ts)
		req.Header.Set("X-Slack-Signature", sig)
		start := time.Now()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(out), time.Since(start)
	}
	changed := strings.Replace(body, "hi-from-slack", "hi-from-slacK", 1)
	for name, c := range map[string]struct {
		body string
		at   time.Time
		sig  string
	}{
		"stale timestamp": {body, time.Now().Add(-6 * time.Minute), slack.Sign([]byte(secret), strconv.FormatInt(time.Now().Add(-6*time.Minute).Unix(), 10), []byte(body))},
		"wrong signature": {body, time.Now(), slack.Sign([]byte("another secret"), strconv.FormatInt(time.Now().Unix(), 10), []byte(body))},
		"changed body":    {changed, time.Now(), ""},
	} {
		if code, out, _ := send(c.body, c.at, c.sig); code != http.StatusUnauthorized {
			t.Fatalf("%s: %d %s, want 401", name, code, out)
		}
	}
	code, ack, took := send(body, time.Now(), "")
	if code != http.StatusOK || !strings.Contains(ack, `"ephemeral"`) {
		t.Fatalf("the signed command: %d %s, want 200 with an ephemeral acknowledgement", code, ack)
	}
	t.Logf("acknowledged in %s (Slack allows 3 s)", took.Round(time.Millisecond))
	var result string
	for ctx.Err() == nil && result == "" {
		for _, m := range api.messages() {
			if strings.HasPrefix(m, "response:") && strings.Contains(m, "hi-from-slack") && strings.Contains(m, "exit") {
				result = m
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	if result == "" {
		t.Fatalf("no result at response_url; Slack got %q\nserve:\n%s", api.messages(), p.out.String())
	}
	// The retry Slack sends when an acknowledgement is late: the same trigger, answered, not run again.
	before := len(api.messages())
	if code, out, _ := send(body, time.Now(), ""); code != http.StatusOK {
		t.Fatalf("the retried command: %d %s", code, out)
	}
	time.Sleep(2 * time.Second)
	ran := 0
	for _, m := range api.messages() {
		if strings.Contains(m, "hi-from-slack") && strings.Contains(m, "exit") {
			ran++
		}
	}
	if ran != 1 || len(api.messages()) > before+1 {
		t.Fatalf("after the retry: %d results, messages %q", ran, api.messages())
	}
	if strings.Contains(p.out.String(), secret) || strings.Contains(p.out.String(), "xoxb-e2e") {
		t.Fatal("serve logged the signing secret or the bot token")
	}
}
