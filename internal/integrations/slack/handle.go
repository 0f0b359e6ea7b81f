package slack

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/aetherium/aetherium/internal/integrations"
	"github.com/aetherium/aetherium/internal/queue"
)

// Handle does a slash command's work: it finds the owner the team/channel is linked to (an unlinked channel is
// told how to link it), starts the command or run, and posts progress and the result. Events API callbacks are
// recorded but not acted on yet.
func (s *Slack) Handle(ctx context.Context, d *integrations.Delivery, a integrations.Actions) error {
	if strings.HasPrefix(d.Event, EventCallbackPrefix) {
		s.log.DebugContext(ctx, "slack event ignored", "event", d.Event, "delivery", d.DeliveryID)
		return nil
	}
	if d.Event != EventSlashCommand {
		return queue.Permanent(fmt.Errorf("slack: unknown delivery event %q", d.Event))
	}
	form, err := url.ParseQuery(string(d.Body))
	if err != nil {
		return queue.Permanent(fmt.Errorf("slack: slash command body: %w", err))
	}
	cmd, err := integrations.ParseChatCommand(form.Get("text"))
	if err != nil {
		return queue.Permanent(fmt.Errorf("slack: %w", err))
	}
	received := d.ReceivedAt
	if received.IsZero() {
		received = s.now()
	}
	r := &responder{s: s, responseURL: form.Get("response_url"), channel: form.Get("channel_id"), expires: received.Add(ResponseURLWindow)}
	source := form.Get("team_id") + "/" + form.Get("channel_id")
	link, err := a.Link(ctx, s.Name(), source)
	if errors.Is(err, integrations.ErrNotLinked) {
		return r.post(ctx, fmt.Sprintf("This channel (%s) is not linked to an Aetherium owner. An owner links it with "+
			"`aetherium integration link slack %s` (or POST /api/v1/integrations/links); then try again.", source, source), false)
	}
	if err != nil {
		return fmt.Errorf("slack: link of %s: %w", source, err)
	}
	switch cmd.Verb {
	case "run":
		if !link.AllowsCommand(cmd.Command) {
			return r.post(ctx, link.RefuseCommand(), false)
		}
		id, err := a.StartCommand(ctx, link.OwnerID, integrations.CommandRequest{Command: cmd.Command})
		if err != nil {
			return fmt.Errorf("slack: start command: %w", err)
		}
		return s.follow(ctx, r, a, link.OwnerID, "job", id, "`"+cmd.Command+"`")
	case "agent":
		if !link.Runs {
			return r.post(ctx, "This channel's link does not allow agent runs.", false)
		}
		id, err := a.StartRun(ctx, link.OwnerID, integrations.RunRequest{RepoURL: repoURL(cmd.Repo), Prompt: cmd.Prompt})
		if err != nil {
			return fmt.Errorf("slack: start run: %w", err)
		}
		return s.follow(ctx, r, a, link.OwnerID, "run", id, "agent run on "+cmd.Repo)
	case "status":
		for _, kind := range []string{"job", "run"} {
			wctx, cancel := context.WithTimeout(ctx, statusWait)
			out, err := a.Wait(wctx, link.OwnerID, kind, cmd.ID)
			cancel()
			if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
				return r.post(ctx, fmt.Sprintf("%s %s is still going.", kind, cmd.ID), true)
			}
			if err == nil {
				return r.post(ctx, formatOutcome(kind, cmd.ID, "", out), true)
			}
		}
		return r.post(ctx, fmt.Sprintf("No job or run %s of this channel's owner.", cmd.ID), false)
	}
	return r.post(ctx, integrations.HelpText, false)
}

// follow reports the start of a job or run, waits for its end and reports that.
func (s *Slack) follow(ctx context.Context, r *responder, a integrations.Actions, owner, kind, id, what string) error {
	if err := r.post(ctx, fmt.Sprintf("Started %s %s (%s).", kind, id, what), false); err != nil {
		// The work runs: a failed progress message must not start it again on a retry.
		s.log.WarnContext(ctx, "slack progress message failed", "kind", kind, "id", id, "err", err)
	}
	out, err := a.Wait(ctx, owner, kind, id)
	if err != nil {
		return queue.Permanent(fmt.Errorf("slack: wait for %s %s: %w", kind, id, err))
	}
	// Retried here, not by the queue: a retried delivery would start the work again.
	text := formatOutcome(kind, id, what, out)
	for attempt := 0; ; attempt++ {
		err = r.post(ctx, text, true)
		if err == nil || queue.IsPermanent(err) || attempt == 4 {
			break
		}
		wait := RetryAfter(err)
		if wait == 0 {
			wait = time.Duration(1<<attempt) * 500 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return queue.Permanent(ctx.Err())
		case <-time.After(wait):
		}
	}
	if err != nil {
		return queue.Permanent(fmt.Errorf("slack: result of %s %s not delivered: %w", kind, id, err))
	}
	return nil
}

func formatOutcome(kind, id, what string, o *integrations.Outcome) string {
	var b strings.Builder
	fmt.Fprintf(&b, "*%s %s %s*", kind, id, o.Status)
	if what != "" {
		fmt.Fprintf(&b, " (%s)", what)
	}
	if o.ExitCode != nil {
		fmt.Fprintf(&b, ", exit code %d", *o.ExitCode)
	}
	if o.CostUSD != nil {
		fmt.Fprintf(&b, ", $%.4f", *o.CostUSD)
	}
	if o.DiffStat != "" {
		fmt.Fprintf(&b, "\n%s", o.DiffStat)
	}
	if o.Branch != "" {
		fmt.Fprintf(&b, "\nbranch `%s`", o.Branch)
	}
	if o.Error != "" {
		fmt.Fprintf(&b, "\nerror: %s", o.Error)
	}
	if o.OutputTail != "" {
		// Output is the guest's: shown as code, never as markup Slack would act on.
		fmt.Fprintf(&b, "\n```%s```", strings.ReplaceAll(tail(o.OutputTail, 2500), "```", "` ` `"))
	}
	return b.String()
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

func repoURL(repo string) string {
	if strings.Contains(repo, "://") {
		return repo
	}
	if strings.Count(repo, "/") == 1 && !strings.Contains(strings.Split(repo, "/")[0], ".") {
		return "https://github.com/" + repo
	}
	return "https://" + repo
}

// responder answers one slash command: through its response_url while uses remain (ResponseURLUses within
// ResponseURLWindow of the command), then with the bot token: chat.postMessage once, chat.update after.
type responder struct {
	s           *Slack
	responseURL string
	channel     string
	expires     time.Time
	uses        int
	ts          string // the bot's message, once posted
}

func (r *responder) post(ctx context.Context, text string, inChannel bool) error {
	if r.responseURL != "" && !requestable(r.responseURL) {
		// Not a URL a request can go to (Slack sends https://hooks.slack.com/...): the bot token answers, rather
		// than retrying what can never succeed.
		r.responseURL = ""
	}
	if r.responseURL != "" && r.uses < ResponseURLUses && r.s.now().Before(r.expires) {
		r.uses++
		kind := "ephemeral"
		if inChannel {
			kind = "in_channel"
		}
		err := r.s.postJSON(ctx, r.responseURL, "", map[string]any{"response_type": kind, "text": text, "replace_original": false})
		var he *httpError
		if err == nil || !(errors.As(err, &he) && (he.Status == http.StatusNotFound || he.Status == http.StatusGone)) {
			return err
		}
		// An expired response_url: the bot token takes over.
		r.uses = ResponseURLUses
	}
	if r.ts == "" {
		ts, err := r.s.postMessage(ctx, r.channel, text)
		if err != nil {
			return err
		}
		r.ts = ts
		return nil
	}
	return r.s.call(ctx, "chat.update", map[string]any{"channel": r.channel, "ts": r.ts, "text": text}, nil)
}

// requestable reports whether u is an absolute http(s) URL.
func requestable(u string) bool {
	p, err := url.Parse(u)
	return err == nil && (p.Scheme == "https" || p.Scheme == "http") && p.Host != ""
}

// Notify posts the notification to a channel (Destination is its id) with chat.postMessage.
func (s *Slack) Notify(ctx context.Context, n integrations.Notification) error {
	if n.Destination == "" {
		return queue.Permanent(errors.New("slack: notification without a channel"))
	}
	args := map[string]any{"channel": n.Destination, "text": FormatNotification(n)}
	if n.IdempotencyKey != "" {
		args["metadata"] = map[string]any{"event_type": "aetherium_notification", "event_payload": map[string]string{"idempotency_key": n.IdempotencyKey, "event": n.Event}}
	}
	return s.call(ctx, "chat.postMessage", args, nil)
}

// FormatNotification renders a notification as Slack mrkdwn.
func FormatNotification(n integrations.Notification) string {
	var b strings.Builder
	fmt.Fprintf(&b, "*%s*", escape(n.Title))
	if n.Text != "" {
		fmt.Fprintf(&b, "\n%s", escape(n.Text))
	}
	keys := make([]string, 0, len(n.Fields))
	for k := range n.Fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "\n• %s: %s", escape(k), escape(n.Fields[k]))
	}
	if n.URL != "" {
		fmt.Fprintf(&b, "\n<%s|details>", n.URL)
	}
	return b.String()
}

// escape keeps text from being read as Slack links or mentions (&, <, > are Slack's control characters).
func escape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}

// Health checks the bot token with auth.test.
func (s *Slack) Health(ctx context.Context) error {
	if s.token == "" {
		return errors.New("slack: no bot token (slack.bot_token)")
	}
	return s.call(ctx, "auth.test", map[string]any{}, nil)
}

func (s *Slack) postMessage(ctx context.Context, channel, text string) (string, error) {
	var out struct {
		TS string `json:"ts"`
	}
	if err := s.call(ctx, "chat.postMessage", map[string]any{"channel": channel, "text": text}, &out); err != nil {
		return "", err
	}
	return out.TS, nil
}

// APIError is a Web API answer of ok=false.
type APIError struct{ Method, Code string }

func (e *APIError) Error() string { return "slack: " + e.Method + ": " + e.Code }

// httpError is an HTTP failure; RetryAfter is set from a 429's Retry-After.
type httpError struct {
	Status     int
	RetryAfter time.Duration
}

func (e *httpError) Error() string {
	if e.RetryAfter > 0 {
		return fmt.Sprintf("slack: HTTP %d (retry after %s)", e.Status, e.RetryAfter)
	}
	return fmt.Sprintf("slack: HTTP %d", e.Status)
}

// RetryAfter reports how long a rate-limited call asked to wait (0: not rate limited).
func RetryAfter(err error) time.Duration {
	var he *httpError
	if errors.As(err, &he) {
		return he.RetryAfter
	}
	return 0
}

// call invokes a Web API method with the bot token.
func (s *Slack) call(ctx context.Context, method string, args map[string]any, out any) error {
	if s.token == "" {
		return queue.Permanent(fmt.Errorf("slack: %s needs a bot token (slack.bot_token)", method))
	}
	var resp struct {
		OK    bool   `json:"ok"`
		Error string `json:"error"`
	}
	raw, err := s.postJSONRaw(ctx, s.api+method, s.token, args)
	if err != nil {
		return fmt.Errorf("slack: %s: %w", method, err)
	}
	if err := json.Unmarshal(raw, &resp); err != nil {
		return fmt.Errorf("slack: %s: malformed answer: %w", method, err)
	}
	if !resp.OK {
		e := &APIError{Method: method, Code: resp.Error}
		switch resp.Error {
		case "channel_not_found", "not_in_channel", "invalid_auth", "not_authed", "account_inactive", "is_archived", "msg_too_long":
			return queue.Permanent(e)
		}
		return e
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return fmt.Errorf("slack: %s: malformed answer: %w", method, err)
		}
	}
	return nil
}

func (s *Slack) postJSON(ctx context.Context, u, token string, body any) error {
	_, err := s.postJSONRaw(ctx, u, token, body)
	return err
}

func (s *Slack) postJSONRaw(ctx context.Context, u, token string, body any) ([]byte, error) {
	b, err := json.Marshal(body)
	if err != nil {
		return nil, err
	}
	return s.postRaw(ctx, u, token, "application/json; charset=utf-8", b)
}

// postRaw POSTs body and returns the answer's body; an answer other than 2xx is an *httpError.
func (s *Slack) postRaw(ctx context.Context, u, token, contentType string, body []byte) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", contentType)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	res, err := s.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	if res.StatusCode/100 != 2 {
		he := &httpError{Status: res.StatusCode}
		if secs, err := strconv.Atoi(res.Header.Get("Retry-After")); err == nil && secs >= 0 {
			he.RetryAfter = time.Duration(secs) * time.Second
		}
		return nil, he
	}
	return raw, nil
}
