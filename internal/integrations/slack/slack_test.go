package slack

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/integrations"
)

const secret = "8f742231b10e8888abcd99yyyzzz85a5"

// fakeSlack is a local Slack: the Web API (chat.postMessage, chat.update, auth.test) and response_url endpoints.
type fakeSlack struct {
	srv *httptest.Server
	mu  sync.Mutex
	// posts are the messages received, in order: "response:<text>", "postMessage:<channel>:<text>",
	// "update:<ts>:<text>".
	posts  []string
	tokens []string
	fail   int // answer this many requests with 500 first
	gotCh  chan string
}

func newFakeSlack(t *testing.T) *fakeSlack {
	f := &fakeSlack{gotCh: make(chan string, 100)}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeSlack) serve(w http.ResponseWriter, r *http.Request) {
	var body map[string]any
	_ = json.NewDecoder(r.Body).Decode(&body)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail > 0 {
		f.fail--
		w.WriteHeader(http.StatusInternalServerError)
		return
	}
	text, _ := body["text"].(string)
	var rec string
	switch r.URL.Path {
	case "/response":
		rec = "response:" + body["response_type"].(string) + ":" + text
	case "/api/chat.postMessage":
		f.tokens = append(f.tokens, r.Header.Get("Authorization"))
		rec = "postMessage:" + body["channel"].(string) + ":" + text
		_ = json.NewEncoder(w).Encode(map[string]any{"ok": true, "ts": "1700000000." + strconv.Itoa(len(f.posts))})
	case "/api/chat.update":
		rec = "update:" + body["ts"].(string) + ":" + text
		_ = json.NewEncoder(w).Encode(map[string]any{"ok": true})
	case "/api/auth.test":
		if r.Header.Get("Authorization") != "Bearer xoxb-test" {
			_ = json.NewEncoder(w).Encode(map[string]any{"ok": false, "error": "invalid_auth"})
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"ok": true})
		return
	default:
		http.NotFound(w, r)
		return
	}
	f.posts = append(f.posts, rec)
	f.gotCh <- rec
}

func (f *fakeSlack) recorded() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.posts...)
}

// fakeActions is a test double of integrations.Actions, true to its doc comments: Link answers ErrNotLinked for
// unknown sources; Wait blocks until the job ends (here: at once, or never for ids in running).
type fakeActions struct {
	mu       sync.Mutex
	links    map[string]*integrations.Link
	commands []integrations.CommandRequest
	runs     []integrations.RunRequest
	running  map[string]bool
}

func (a *fakeActions) Link(_ context.Context, integration, source string) (*integrations.Link, error) {
	if l, ok := a.links[integration+":"+source]; ok {
		return l, nil
	}
	return nil, integrations.ErrNotLinked
}

func (a *fakeActions) StartCommand(_ context.Context, owner string, req integrations.CommandRequest) (string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.commands = append(a.commands, req)
	return "job-" + strconv.Itoa(len(a.commands)), nil
}

func (a *fakeActions) StartRun(_ context.Context, owner string, req integrations.RunRequest) (string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.runs = append(a.runs, req)
	return "run-" + strconv.Itoa(len(a.runs)), nil
}

func (a *fakeActions) Wait(ctx context.Context, owner, kind, id string) (*integrations.Outcome, error) {
	if a.running[id] {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	if !strings.HasPrefix(id, kind+"-") {
		return nil, errors.New("not found")
	}
	code := 0
	return &integrations.Outcome{Status: "completed", ExitCode: &code, OutputTail: "hello from " + id}, nil
}

func newActions() *fakeActions {
	return &fakeActions{links: map[string]*integrations.Link{
		"slack:T1/C1": {OwnerID: "owner-1", Integration: "slack", Source: "T1/C1", Commands: true, Runs: true},
	}, running: map[string]bool{}}
}

func newSlack(t *testing.T, f *fakeSlack) *Slack {
	t.Helper()
	api := ""
	if f != nil {
		api = f.srv.URL + "/api/"
	}
	s, err := New(Config{SigningSecret: secret, BotToken: "xoxb-test", APIURL: api})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func signed(body string, at time.Time) *integrations.Webhook {
	ts := strconv.FormatInt(at.Unix(), 10)
	h := http.Header{}
	h.Set("X-Slack-Request-Timestamp", ts)
	h.Set("X-Slack-Signature", Sign([]byte(secret), ts, []byte(body)))
	h.Set("Content-Type", "application/x-www-form-urlencoded")
	return &integrations.Webhook{Header: h, Body: []byte(body), ReceivedAt: time.Now()}
}

func slashBody(text, responseURL string) string {
	return url.Values{
		"command": {"/aetherium"}, "text": {text}, "team_id": {"T1"}, "channel_id": {"C1"}, "user_id": {"U1"},
		"trigger_id": {"13345224609.738474920.8088930838d88f008e0"}, "response_url": {responseURL},
	}.Encode()
}

func TestVerify(t *testing.T) {
	s := newSlack(t, nil)
	ctx := context.Background()
	body := slashBody("run echo hi", "https://hooks.slack.com/x")
	if err := s.Verify(ctx, signed(body, time.Now())); err != nil {
		t.Fatalf("a good signature is refused: %v", err)
	}
	// Slack's documented example: the algorithm matches Slack's, not only itself.
	ex := "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
	if got := Sign([]byte(secret), "1531420618", []byte(ex)); got != "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503" {
		t.Fatalf("Sign of Slack's example = %s", got)
	}
	cases := map[string]func() *integrations.Webhook{
		"stale timestamp":  func() *integrations.Webhook { return signed(body, time.Now().Add(-MaxClockSkew-time.Second)) },
		"future timestamp": func() *integrations.Webhook { return signed(body, time.Now().Add(MaxClockSkew+time.Minute)) },
		"wrong signature": func() *integrations.Webhook {
			w := signed(body, time.Now())
			w.Header.Set("X-Slack-Signature", Sign([]byte("another secret"), w.Header.Get("X-Slack-Request-Timestamp"), w.Body))
			return w
		},
		"body changed by one byte": func() *integrations.Webhook {
			w := signed(body, time.Now())
			w.Body[len(w.Body)/2] ^= 1
			return w
		},
		"no signature": func() *integrations.Webhook {
			w := signed(body, time.Now())
			w.Header.Del("X-Slack-Signature")
			return w
		},
		"malformed timestamp": func() *integrations.Webhook {
			w := signed(body, time.Now())
			w.Header.Set("X-Slack-Request-Timestamp", "yesterday")
			return w
		},
	}
	for name, mk := range cases {
		if err := s.Verify(ctx, mk()); !errors.Is(err, integrations.ErrBadSignature) {
			t.Errorf("%s: Verify = %v, want ErrBadSignature", name, err)
		}
	}
}

func TestAccept(t *testing.T) {
	s := newSlack(t, nil)
	ctx := context.Background()
	acc, err := s.Accept(ctx, signed(slashBody("run echo hi", "https://x"), time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	var reply map[string]string
	if err := json.Unmarshal(acc.Reply.Body, &reply); err != nil {
		t.Fatal(err)
	}
	if acc.DeliveryID != "13345224609.738474920.8088930838d88f008e0" || acc.Event != EventSlashCommand || reply["response_type"] != "ephemeral" || !strings.Contains(reply["text"], "echo hi") {
		t.Fatalf("slash command accepted as %+v %v", acc, reply)
	}
	for _, text := range []string{"help", "", "frobnicate", "run", "agent org/repo"} {
		acc, err := s.Accept(ctx, signed(slashBody(text, "https://x"), time.Now()))
		if err != nil || acc.DeliveryID != "" || acc.Reply == nil || !strings.Contains(string(acc.Reply.Body), "Usage") {
			t.Errorf("%q: accepted as %+v, %v; want a usage reply and nothing recorded", text, acc, err)
		}
	}
	acc, err = s.Accept(ctx, signed(`{"token":"x","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}`, time.Now()))
	if err != nil || acc.DeliveryID != "" || string(acc.Reply.Body) != `{"challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"}` {
		t.Fatalf("url_verification: %+v %v", acc, err)
	}
	ev := `{"type":"event_callback","team_id":"T1","event_id":"Ev0PV52K21","event":{"type":"app_mention","text":"hi"}}`
	w := signed(ev, time.Now())
	w.Header.Set("X-Slack-Retry-Num", "1")
	acc, err = s.Accept(ctx, w)
	if err != nil || acc.DeliveryID != "Ev0PV52K21" || acc.Event != "event_callback:app_mention" || acc.Reply != nil {
		t.Fatalf("event_callback (a retry dedupes on its event_id): %+v %v", acc, err)
	}
	for _, bad := range []string{`{"type":"event_callback"}`, `{nope`, "text=hi"} {
		if _, err := s.Accept(ctx, signed(bad, time.Now())); err == nil {
			t.Errorf("Accept(%q) succeeded", bad)
		}
	}
}

// TestSlashCommandEndToEnd plays the webhook route (Verify, Accept, answer, then Handle on a "worker") against a
// local Slack: the acknowledgement is the ephemeral reply, and the result arrives through response_url.
func TestSlashCommandEndToEnd(t *testing.T) {
	f := newFakeSlack(t)
	s := newSlack(t, f)
	a := newActions()
	var handled sync.WaitGroup
	route := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, s.MaxBodyBytes()))
		wh := &integrations.Webhook{Header: r.Header, Body: body, ReceivedAt: time.Now()}
		if err := s.Verify(r.Context(), wh); err != nil {
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		acc, err := s.Accept(r.Context(), wh)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if acc.DeliveryID != "" {
			handled.Add(1)
			go func() {
				defer handled.Done()
				d := &integrations.Delivery{Integration: "slack", DeliveryID: acc.DeliveryID, Event: acc.Event, Header: wh.Header, Body: wh.Body, ReceivedAt: wh.ReceivedAt}
				if err := s.Handle(context.Background(), d, a); err != nil {
					t.Errorf("Handle: %v", err)
				}
			}()
		}
		w.Header().Set("Content-Type", acc.Reply.ContentType)
		w.WriteHeader(acc.Reply.Status)
		_, _ = w.Write(acc.Reply.Body)
	}))
	defer route.Close()

	send := func(body string, at time.Time, mutate func(*http.Request)) (*http.Response, time.Duration) {
		t.Helper()
		wh := signed(body, at)
		req, _ := http.NewRequest(http.MethodPost, route.URL, strings.NewReader(body))
		req.Header = wh.Header
		if mutate != nil {
			mutate(req)
		}
		start := time.Now()
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		return res, time.Since(start)
	}

	var acks []time.Duration
	for i := 0; i < 11; i++ {
		res, took := send(slashBody("run echo "+strconv.Itoa(i), f.srv.URL+"/response"), time.Now(), nil)
		if res.StatusCode != http.StatusOK {
			t.Fatalf("signed slash command answered %d", res.StatusCode)
		}
		acks = append(acks, took)
	}
	handled.Wait()
	sort.Slice(acks, func(i, j int) bool { return acks[i] < acks[j] })
	t.Logf("slash command acknowledged in %s (median of %d)", acks[len(acks)/2], len(acks))

	posts := f.recorded()
	for i := 0; i < 11; i++ {
		if !contains(posts, "response:in_channel:*job job-") || !containsSub(posts, "hello from job-"+strconv.Itoa(i+1)) {
			t.Fatalf("result of job-%d did not reach response_url: %q", i+1, posts)
		}
	}
	if len(a.commands) != 11 {
		t.Fatalf("%d commands started, want 11", len(a.commands))
	}

	before := len(f.recorded())
	body := slashBody("run rm -rf /", f.srv.URL+"/response")
	for name, mutate := range map[string]func(*http.Request){
		"wrong signature": func(r *http.Request) { r.Header.Set("X-Slack-Signature", "v0="+strings.Repeat("0", 64)) },
		"body changed by one byte": func(r *http.Request) {
			r.Body = io.NopCloser(strings.NewReader(strings.Replace(body, "rm", "rn", 1)))
		},
	} {
		if res, _ := send(body, time.Now(), mutate); res.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s: answered %d, want 401", name, res.StatusCode)
		}
	}
	if res, _ := send(body, time.Now().Add(-6*time.Minute), nil); res.StatusCode != http.StatusUnauthorized {
		t.Errorf("stale timestamp: answered %d, want 401", res.StatusCode)
	}
	handled.Wait()
	if len(a.commands) != 11 || len(f.recorded()) != before {
		t.Fatalf("a refused request ran something: %d commands, %d posts", len(a.commands), len(f.recorded())-before)
	}
}

func TestHandleUnlinkedAndPermissions(t *testing.T) {
	f := newFakeSlack(t)
	s := newSlack(t, f)
	a := newActions()
	a.links["slack:T1/C2"] = &integrations.Link{OwnerID: "o2", Source: "T1/C2"}
	deliver := func(text, channel string) {
		t.Helper()
		body := strings.Replace(slashBody(text, f.srv.URL+"/response"), "channel_id=C1", "channel_id="+channel, 1)
		if err := s.Handle(context.Background(), &integrations.Delivery{Event: EventSlashCommand, Body: []byte(body), ReceivedAt: time.Now()}, a); err != nil {
			t.Fatal(err)
		}
	}
	deliver("run echo hi", "C9")
	deliver("run echo hi", "C2")
	deliver("agent org/repo fix it", "C2")
	posts := f.recorded()
	if len(posts) != 3 || !strings.Contains(posts[0], "not linked") || !strings.Contains(posts[0], "T1/C9") ||
		!strings.Contains(posts[1], "does not allow commands") || !strings.Contains(posts[2], "does not allow agent runs") {
		t.Fatalf("posts: %q", posts)
	}
	if len(a.commands)+len(a.runs) != 0 {
		t.Fatal("an unlinked or unpermitted channel started work")
	}
	deliver("agent org/repo fix the tests", "C1")
	if len(a.runs) != 1 || a.runs[0].RepoURL != "https://github.com/org/repo" || a.runs[0].Prompt != "fix the tests" {
		t.Fatalf("runs: %+v", a.runs)
	}
	a.running["job-7"] = true
	deliver("status job-7", "C1")
	deliver("status run-1", "C1")
	posts = f.recorded()
	if !strings.Contains(posts[len(posts)-2], "still going") || !strings.Contains(posts[len(posts)-1], "run run-1 completed") {
		t.Fatalf("status posts: %q", posts[len(posts)-2:])
	}
}

// TestResponseURLLimit: after five uses of response_url the bot token takes over (chat.postMessage, then
// chat.update of that message), and also once the thirty minutes have passed.
func TestResponseURLLimit(t *testing.T) {
	f := newFakeSlack(t)
	s := newSlack(t, f)
	r := &responder{s: s, responseURL: f.srv.URL + "/response", channel: "C1", expires: time.Now().Add(ResponseURLWindow)}
	for i := 0; i < 7; i++ {
		if err := r.post(context.Background(), "m"+strconv.Itoa(i), false); err != nil {
			t.Fatal(err)
		}
	}
	posts := f.recorded()
	want := []string{"response:ephemeral:m0", "response:ephemeral:m1", "response:ephemeral:m2", "response:ephemeral:m3", "response:ephemeral:m4", "postMessage:C1:m5", "update:1700000000.5:m6"}
	if strings.Join(posts, "|") != strings.Join(want, "|") {
		t.Fatalf("posts %q, want %q", posts, want)
	}
	f.tokens = nil
	r = &responder{s: s, responseURL: f.srv.URL + "/response", channel: "C3", expires: time.Now().Add(-time.Second)}
	if err := r.post(context.Background(), "late", false); err != nil {
		t.Fatal(err)
	}
	if p := f.recorded(); p[len(p)-1] != "postMessage:C3:late" || f.tokens[0] != "Bearer xoxb-test" {
		t.Fatalf("after the window: %q, tokens %q", p, f.tokens)
	}
}

func TestNotifyAndHealth(t *testing.T) {
	f := newFakeSlack(t)
	s := newSlack(t, f)
	ctx := context.Background()
	n := integrations.Notification{Event: "run.finished", Destination: "C1", Title: "Run <!channel> finished", Text: "ok", Fields: map[string]string{"status": "completed"}, URL: "https://aeth.example/runs/1"}
	f.fail = 1
	if err := s.Notify(ctx, n); err == nil {
		t.Fatal("Notify against a failing Slack succeeded")
	}
	if err := s.Notify(ctx, n); err != nil {
		t.Fatal(err)
	}
	p := f.recorded()
	if len(p) != 1 || p[0] != "postMessage:C1:*Run &lt;!channel&gt; finished*\nok\n• status: completed\n<https://aeth.example/runs/1|details>" {
		t.Fatalf("posts %q", p)
	}
	if err := s.Health(ctx); err != nil {
		t.Fatal(err)
	}
	bad, _ := New(Config{SigningSecret: secret, BotToken: "xoxb-wrong", APIURL: f.srv.URL + "/api"})
	if err := bad.Health(ctx); err == nil {
		t.Fatal("Health with a wrong token succeeded")
	}
}

func contains(ss []string, prefix string) bool {
	for _, s := range ss {
		if strings.HasPrefix(s, prefix) {
			return true
		}
	}
	return false
}

func containsSub(ss []string, sub string) bool {
	for _, s := range ss {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// TestUnrequestableResponseURL: a response_url no request can go to (found by FuzzSlackWebhook: each post was
// retried with backoff until the context ended) is skipped for the bot token at once.
func TestUnrequestableResponseURL(t *testing.T) {
	f := newFakeSlack(t)
	s := newSlack(t, f)
	for _, u := range []string{"http://[::1", "ftp://hooks.slack.com/x", "/relative"} {
		start := time.Now()
		body := slashBody("run echo hi", u)
		if err := s.Handle(context.Background(), &integrations.Delivery{Event: EventSlashCommand, Body: []byte(body), ReceivedAt: time.Now()}, newActions()); err != nil {
			t.Fatalf("%q: %v", u, err)
		}
		if took := time.Since(start); took > 400*time.Millisecond {
			t.Errorf("%q: Handle took %s", u, took)
		}
	}
	for _, p := range f.recorded() {
		if strings.HasPrefix(p, "response:") {
			t.Fatalf("posted to a response_url: %q", p)
		}
	}
	if p := f.recorded(); len(p) != 6 || !strings.HasPrefix(p[0], "postMessage:C1:Started job") || !strings.HasPrefix(p[1], "update:") {
		t.Fatalf("posts %q, want the start posted and the result updated with the bot token, per command", p)
	}
}
