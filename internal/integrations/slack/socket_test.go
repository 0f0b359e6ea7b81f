package slack

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/aetherium/aetherium/internal/integrations"
	"github.com/aetherium/aetherium/internal/store"
)

const appToken = "xapp-1-A111-222-test"

// fakeSocket is a local Slack for Socket Mode: apps.connections.open (answering only the expected app token) and
// the WebSocket it points to. Each connection runs script(n, conn) after its hello; what the client sends back
// (acknowledgements) and when a connection ends are reported on events.
type fakeSocket struct {
	t      *testing.T
	srv    *httptest.Server
	opens  atomic.Int32
	conns  atomic.Int32
	script func(n int, c *fakeConn)
	events chan string // "open:<n>", "closed:<n>"
	acks   chan fakeAck
}

type fakeAck struct {
	conn    int
	id      string
	payload json.RawMessage
	took    time.Duration // since the envelope was sent
}

// fakeConn is the server's side of one connection.
type fakeConn struct {
	ws     *websocket.Conn
	acked  chan string // the envelope ids this connection acknowledged
	mu     sync.Mutex
	sentAt map[string]time.Time
}

func newFakeSocket(t *testing.T, script func(n int, c *fakeConn)) *fakeSocket {
	f := &fakeSocket{t: t, script: script, events: make(chan string, 20), acks: make(chan fakeAck, 20)}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/apps.connections.open", f.open)
	mux.HandleFunc("GET /link/", f.link)
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeSocket) open(w http.ResponseWriter, r *http.Request) {
	f.opens.Add(1)
	w.Header().Set("Content-Type", "application/json")
	if r.Header.Get("Authorization") != "Bearer "+appToken {
		_ = json.NewEncoder(w).Encode(map[string]any{"ok": false, "error": "invalid_auth"})
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/x-www-form-urlencoded" {
		_ = json.NewEncoder(w).Encode(map[string]any{"ok": false, "error": "invalid_form_data", "got": ct})
		return
	}
	u := "ws://" + r.Host + "/link/?ticket=t" + fmt.Sprint(f.opens.Load()) + "&app_id=A111"
	_ = json.NewEncoder(w).Encode(map[string]any{"ok": true, "url": u})
}

func (f *fakeSocket) link(w http.ResponseWriter, r *http.Request) {
	if r.URL.Query().Get("ticket") == "" {
		http.Error(w, "no ticket", http.StatusUnauthorized)
		return
	}
	ws, err := websocket.Accept(w, r, nil)
	if err != nil {
		f.t.Errorf("accept: %v", err)
		return
	}
	n := int(f.conns.Add(1))
	c := &fakeConn{ws: ws, acked: make(chan string, 20), sentAt: map[string]time.Time{}}
	// The server keeps reading, as Slack does, so that the client's close handshake completes.
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		for {
			_, b, err := ws.Read(context.Background())
			if err != nil {
				return
			}
			var a struct {
				EnvelopeID string          `json:"envelope_id"`
				Payload    json.RawMessage `json:"payload"`
			}
			if err := json.Unmarshal(b, &a); err != nil {
				f.t.Errorf("conn %d: malformed acknowledgement %q", n, b)
				continue
			}
			c.mu.Lock()
			took := time.Since(c.sentAt[a.EnvelopeID])
			c.mu.Unlock()
			f.acks <- fakeAck{conn: n, id: a.EnvelopeID, payload: a.Payload, took: took}
			c.acked <- a.EnvelopeID
		}
	}()
	// Reported before the hello: the client closes an old connection only after this one's hello.
	f.events <- fmt.Sprintf("open:%d", n)
	c.send(map[string]any{"type": "hello", "num_connections": n, "connection_info": map[string]any{"app_id": "A111"},
		"debug_info": map[string]any{"host": "applink-test", "approximate_connection_time": 18060}})
	if f.script != nil {
		f.script(n, c)
	}
	<-readDone
	f.events <- fmt.Sprintf("closed:%d", n)
}

func (c *fakeConn) send(m map[string]any) {
	b, _ := json.Marshal(m)
	c.mu.Lock()
	if id, ok := m["envelope_id"].(string); ok {
		c.sentAt[id] = time.Now()
	}
	c.mu.Unlock()
	_ = c.ws.Write(context.Background(), websocket.MessageText, b)
}

func envelope(id, typ string, retry int, payload any) map[string]any {
	reason := ""
	if retry > 0 {
		reason = "timeout"
	}
	return map[string]any{"envelope_id": id, "type": typ, "accepts_response_payload": typ == "slash_commands",
		"payload": payload, "retry_attempt": retry, "retry_reason": reason}
}

func eventPayload(eventID string) map[string]any {
	return map[string]any{"token": "unused", "team_id": "T1", "api_app_id": "A111", "type": "event_callback",
		"event_id": eventID, "event_time": 1700000000,
		"event": map[string]any{"type": "app_mention", "user": "U1", "text": "<@UBOT> hi", "channel": "C1", "ts": "1700000000.000100"}}
}

// fakeRecorder is task.Service.RecordWebhook as far as the caller can tell: unique on (integration, delivery id).
type fakeRecorder struct {
	mu    sync.Mutex
	calls []*store.WebhookDelivery
	byKey map[string]*store.WebhookDelivery
}

func (r *fakeRecorder) RecordWebhook(_ context.Context, d *store.WebhookDelivery) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, d)
	key := d.Integration + "\x00" + d.DeliveryID
	if old, ok := r.byKey[key]; ok {
		d.ID = old.ID
		return true, nil
	}
	d.ID = fmt.Sprintf("wh-%d", len(r.byKey)+1)
	r.byKey[key] = d
	return false, nil
}

func (r *fakeRecorder) snapshot() (calls int, recorded map[string]*store.WebhookDelivery) {
	r.mu.Lock()
	defer r.mu.Unlock()
	recorded = map[string]*store.WebhookDelivery{}
	for _, d := range r.byKey {
		recorded[d.DeliveryID] = d
	}
	return len(r.calls), recorded
}

func newSocketClient(t *testing.T, f *fakeSocket, token string, rec integrations.Recorder) *SocketClient {
	t.Helper()
	// The test's own output: shown with a failure (or -v), not interleaved with other tests'.
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	s, err := New(Config{AppToken: token, BotToken: "xoxb-test", APIURL: f.srv.URL + "/api/", Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	c, err := s.SocketClient(SocketConfig{Recorder: rec, MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// waitFor reads events until want (failing on a timeout) and returns those seen before it.
func waitFor(t *testing.T, ch <-chan string, want string) []string {
	t.Helper()
	var seen []string
	deadline := time.After(5 * time.Second)
	for {
		select {
		case e := <-ch:
			if e == want {
				return seen
			}
			seen = append(seen, e)
		case <-deadline:
			t.Fatalf("no %q within 5 s (seen %v)", want, seen)
		}
	}
}

// noSocketGoroutines fails when a goroutine of the socket client outlives Run.
func noSocketGoroutines(t *testing.T) {
	t.Helper()
	var stacks string
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		buf := make([]byte, 1<<20)
		stacks = string(buf[:runtime.Stack(buf, true)])
		if !strings.Contains(stacks, "slack.(*SocketClient)") && !strings.Contains(stacks, "slack.(*socketConn)") {
			return
		}
	}
	t.Errorf("socket client goroutines left after Run returned:\n%s", stacks)
}

func TestSocketMode(t *testing.T) {
	web := newFakeSlack(t) // the response_url the command's results go to
	slashFields := map[string]any{"command": "/aetherium", "text": "run echo hi", "team_id": "T1", "team_domain": "acme",
		"channel_id": "C1", "channel_name": "general", "user_id": "U1", "user_name": "ana", "api_app_id": "A111",
		"is_enterprise_install": "false", "response_url": web.srv.URL + "/response",
		"trigger_id": "13345224609.738474920.8088930838d88f008e0"}
	fs := newFakeSocket(t, func(n int, c *fakeConn) {
		switch n {
		case 1:
			c.send(envelope("env-slash", "slash_commands", 0, slashFields))
			c.send(envelope("env-ev1", "events_api", 0, eventPayload("Ev01")))
			c.send(envelope("env-ev1-retry", "events_api", 1, eventPayload("Ev01")))
			// Slack asks for a refresh only once the three are acknowledged, so that the test knows which
			// connection acknowledged what.
			for i := 0; i < 3; i++ {
				select {
				case <-c.acked:
				case <-time.After(5 * time.Second):
					t.Error("connection 1: three acknowledgements not within 5 s")
				}
			}
			c.send(map[string]any{"type": "disconnect", "reason": "refresh_requested", "debug_info": map[string]any{"host": "applink-test"}})
		case 2:
			c.send(envelope("env-ev2", "events_api", 0, eventPayload("Ev02")))
		}
	})
	rec := &fakeRecorder{byKey: map[string]*store.WebhookDelivery{}}
	sc := newSocketClient(t, fs, appToken, rec)

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	runErr := make(chan error, 1)
	go func() { runErr <- sc.Run(ctx) }()

	acks := map[string]fakeAck{}
	deadline := time.After(5 * time.Second)
	for len(acks) < 4 {
		select {
		case a := <-fs.acks:
			if _, dup := acks[a.id]; dup {
				t.Errorf("envelope %s acknowledged twice", a.id)
			}
			acks[a.id] = a
		case err := <-runErr:
			t.Fatalf("Run ended early: %v", err)
		case <-deadline:
			t.Fatalf("acknowledgements within 5 s: %v", acks)
		}
	}
	for id, a := range acks {
		if a.took > AckWithin {
			t.Errorf("envelope %s acknowledged after %s (Slack waits %s)", id, a.took, AckWithin)
		}
	}
	for id, conn := range map[string]int{"env-slash": 1, "env-ev1": 1, "env-ev1-retry": 1, "env-ev2": 2} {
		if acks[id].conn != conn {
			t.Errorf("envelope %s acknowledged on connection %d, want %d", id, acks[id].conn, conn)
		}
	}

	// The slash command's acknowledgement carries exactly the answer Accept gives the same command over HTTP.
	httpForm := url.Values{}
	for k, v := range slashFields {
		httpForm.Set(k, v.(string))
	}
	httpAcc, err := sc.s.Accept(t.Context(), &integrations.Webhook{Body: []byte(httpForm.Encode())})
	if err != nil {
		t.Fatal(err)
	}
	var got, want map[string]any
	if err := json.Unmarshal(acks["env-slash"].payload, &got); err != nil {
		t.Fatalf("slash acknowledgement payload %q: %v", acks["env-slash"].payload, err)
	}
	_ = json.Unmarshal(httpAcc.Reply.Body, &want)
	if got["response_type"] != "ephemeral" || got["text"] != want["text"] || !strings.HasPrefix(got["text"].(string), "Working on `/aetherium run echo hi`") {
		t.Errorf("slash acknowledgement payload = %v, want %v", got, want)
	}
	for _, id := range []string{"env-ev1", "env-ev1-retry", "env-ev2"} {
		if len(acks[id].payload) != 0 {
			t.Errorf("event envelope %s acknowledged with payload %s", id, acks[id].payload)
		}
	}

	// Reconnection: the second connection opened before the first was closed.
	ev := waitFor(t, fs.events, "closed:1")
	if !contains(ev, "open:2") {
		t.Errorf("connection 1 closed before connection 2 opened (events %v)", ev)
	}
	if n := fs.opens.Load(); n != 2 {
		t.Errorf("apps.connections.open called %d times, want 2", n)
	}

	calls, recorded := rec.snapshot()
	if calls != 4 || len(recorded) != 3 {
		t.Errorf("recorder: %d calls, %d deliveries %v; want 4 calls (the retry a duplicate) and 3 deliveries", calls, len(recorded), recorded)
	}
	slash := recorded[httpAcc.DeliveryID]
	if slash == nil || slash.Integration != "slack" || slash.Event != EventSlashCommand || slash.Header.Get(HeaderSocketEnvelope) != "env-slash" {
		t.Fatalf("slash command delivery = %+v (want one keyed %s, as over HTTP)", slash, httpAcc.DeliveryID)
	}
	if f, _ := url.ParseQuery(string(slash.Body)); !equalForms(f, httpForm) {
		t.Errorf("slash command body %q, want the HTTP form %q", slash.Body, httpForm.Encode())
	}
	for _, id := range []string{"Ev01", "Ev02"} {
		if d := recorded[id]; d == nil || d.Event != EventCallbackPrefix+"app_mention" {
			t.Errorf("event %s: delivery %+v", id, d)
		}
	}

	// Handle does the recorded command's work as it would an HTTP one.
	a := newActions()
	d := &integrations.Delivery{ID: slash.ID, Integration: slash.Integration, DeliveryID: slash.DeliveryID, Event: slash.Event,
		Header: slash.Header, Body: slash.Body, ReceivedAt: slash.ReceivedAt}
	if err := sc.s.Handle(t.Context(), d, a); err != nil {
		t.Fatalf("Handle: %v", err)
	}
	if len(a.commands) != 1 || a.commands[0].Command != "echo hi" {
		t.Errorf("commands started: %+v", a.commands)
	}
	if posts := web.recorded(); !contains(posts, "response:ephemeral:Started job job-1") || !contains(posts, "response:in_channel:*job job-1 completed*") {
		t.Errorf("posts: %q", posts)
	}

	cancel()
	select {
	case err := <-runErr:
		if err != nil {
			t.Errorf("Run after cancel: %v", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("Run did not end within 3 s of its context")
	}
	waitFor(t, fs.events, "closed:2")
	noSocketGoroutines(t)
}

func equalForms(a, b url.Values) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if a.Get(k) != b.Get(k) {
			return false
		}
	}
	return true
}

func TestSocketModeInvalidAuth(t *testing.T) {
	fs := newFakeSocket(t, nil)
	sc := newSocketClient(t, fs, "xapp-1-revoked", &fakeRecorder{byKey: map[string]*store.WebhookDelivery{}})
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	err := sc.Run(ctx)
	var ae *APIError
	if !errors.As(err, &ae) || ae.Code != "invalid_auth" || !strings.Contains(err.Error(), "slack_app_token") {
		t.Fatalf("Run with a refused token = %v, want an invalid_auth error naming slack_app_token", err)
	}
	if strings.Contains(err.Error(), "xapp-1-revoked") {
		t.Errorf("the error shows the token: %v", err)
	}
	if n := fs.opens.Load(); n != 1 {
		t.Errorf("apps.connections.open called %d times; a refused token is not retried", n)
	}
}

// A dropped connection is reconnected (after a backoff); link_disabled stops Run with ErrLinkDisabled.
func TestSocketModeDropAndLinkDisabled(t *testing.T) {
	fs := newFakeSocket(t, func(n int, c *fakeConn) {
		switch n {
		case 1:
			_ = c.ws.CloseNow() // a drop, without a disconnect message
		case 2:
			c.send(map[string]any{"type": "disconnect", "reason": "link_disabled"})
		}
	})
	sc := newSocketClient(t, fs, appToken, &fakeRecorder{byKey: map[string]*store.WebhookDelivery{}})
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := sc.Run(ctx); !errors.Is(err, ErrLinkDisabled) {
		t.Fatalf("Run = %v, want ErrLinkDisabled", err)
	}
	if n := fs.opens.Load(); n != 2 {
		t.Errorf("apps.connections.open called %d times, want 2 (one reconnection after the drop)", n)
	}
	noSocketGoroutines(t)
}

func TestSocketModeConfig(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Error("New without a signing secret or an app token succeeded")
	}
	if _, err := New(Config{AppToken: "xoxb-not-an-app-token"}); err == nil || strings.Contains(err.Error(), "xoxb-not") {
		t.Errorf("New with a bot token as app token = %v, want an error that does not show it", err)
	}
	s, err := New(Config{AppToken: appToken})
	if err != nil {
		t.Fatal(err)
	}
	// Socket Mode only: an HTTP webhook "signed" with the empty secret is refused.
	body := slashBody("run id", "")
	ts := fmt.Sprint(time.Now().Unix())
	h := http.Header{}
	h.Set("X-Slack-Request-Timestamp", ts)
	h.Set("X-Slack-Signature", Sign(nil, ts, []byte(body)))
	if err := s.Verify(t.Context(), &integrations.Webhook{Header: h, Body: []byte(body), ReceivedAt: time.Now()}); !errors.Is(err, integrations.ErrBadSignature) {
		t.Errorf("Verify without a signing secret = %v, want ErrBadSignature", err)
	}
	if _, err := newSlack(t, nil).SocketClient(SocketConfig{Recorder: &fakeRecorder{}}); err == nil {
		t.Error("SocketClient without an app token succeeded")
	}
}

// The WebSocket URL's ticket is a credential of its own: a failed dial does not show it.
func TestSocketModeDialErrorHidesTicket(t *testing.T) {
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"ok": true, "url": "ws://127.0.0.1:1/link/?ticket=secret-ticket-1"})
	}))
	defer web.Close()
	s, err := New(Config{AppToken: appToken, APIURL: web.URL})
	if err != nil {
		t.Fatal(err)
	}
	c, err := s.SocketClient(SocketConfig{Recorder: &fakeRecorder{}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.connect(t.Context())
	if err == nil || strings.Contains(err.Error(), "secret-ticket-1") || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Fatalf("connect to a closed port = %v; want an error naming the host, not the ticket", err)
	}
}
