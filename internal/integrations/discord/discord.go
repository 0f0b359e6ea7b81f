// Package discord is the Discord integration: notifications through incoming webhooks (messages split at
// Discord's 2,000 characters, embeds within their limits, rate-limit buckets from the X-RateLimit-* headers and
// a 429's retry_after honoured), and an optional interactions endpoint for the /aetherium application command,
// verified with Ed25519 (X-Signature-Ed25519 over X-Signature-Timestamp + body, the application's public key).
package discord

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/aetherium/aetherium/internal/integrations"
	"github.com/aetherium/aetherium/internal/queue"
)

// Discord's limits.
const (
	MaxContent          = 2000
	MaxEmbedTitle       = 256
	MaxEmbedDescription = 4096
	MaxEmbedFields      = 25
	MaxFieldName        = 256
	MaxFieldValue       = 1024
	MaxEmbedTotal       = 6000
	maxBody             = 1 << 20
	// max429Waits bounds how often one Notify waits out a 429 before giving the retry to its caller.
	max429Waits = 5
	// maxRateWait bounds one wait for a bucket or retry_after; longer ones are the caller's to retry later.
	maxRateWait = time.Minute
)

// Interaction types and callback types.
const (
	interactionPing               = 1
	interactionApplicationCommand = 2
	callbackPong                  = 1
	callbackDeferredMessage       = 5
)

// EventCommand is the Acceptance.Event of an application command.
const EventCommand = "application_command"

// Config configures the integration.
type Config struct {
	// PublicKey is the application's Ed25519 public key in hex (discord.public_key); empty: the interactions
	// endpoint refuses everything (notifications need no key).
	PublicKey string
	// APIURL is Discord's API base for interaction follow-ups (default https://discord.com/api/v10). Webhook
	// destinations under it (APIURL/webhooks/{id}/{token}) are accepted besides Discord's own: an operator's
	// setting (a test's local Discord), never a rule's.
	APIURL     string
	HTTPClient *http.Client
	Logger     *slog.Logger
	// Sleep waits for rate limits (tests make it instant); default: a timer that ctx cancels.
	Sleep func(ctx context.Context, d time.Duration) error
}

// Discord implements integrations.Integration.
type Discord struct {
	pub   ed25519.PublicKey
	api   string
	hc    *http.Client
	log   *slog.Logger
	sleep func(context.Context, time.Duration) error

	mu sync.Mutex
	// bucketOf maps a webhook URL to its rate-limit bucket (X-RateLimit-Bucket); buckets to their state.
	bucketOf map[string]string
	buckets  map[string]*bucket
}

type bucket struct {
	remaining int
	reset     time.Time
}

var (
	_ integrations.Integration        = (*Discord)(nil)
	_ integrations.DestinationChecker = (*Discord)(nil)
	_ integrations.Parted             = (*Discord)(nil)
)

// New returns the Discord integration.
func New(cfg Config) (*Discord, error) {
	d := &Discord{api: strings.TrimSuffix(cfg.APIURL, "/"), hc: cfg.HTTPClient, log: cfg.Logger, sleep: cfg.Sleep,
		bucketOf: map[string]string{}, buckets: map[string]*bucket{}}
	if cfg.PublicKey != "" {
		k, err := hex.DecodeString(cfg.PublicKey)
		if err != nil || len(k) != ed25519.PublicKeySize {
			return nil, errors.New("discord: public key must be 32 bytes in hex (discord.public_key)")
		}
		d.pub = k
	}
	if d.api == "" {
		d.api = "https://discord.com/api/v10"
	}
	if d.hc == nil {
		// No redirects: a destination is checked (CheckDestination), the place it might redirect to is not.
		d.hc = &http.Client{Timeout: 30 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	if d.log == nil {
		d.log = slog.Default()
	}
	if d.sleep == nil {
		d.sleep = func(ctx context.Context, t time.Duration) error {
			tm := time.NewTimer(t)
			defer tm.Stop()
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-tm.C:
				return nil
			}
		}
	}
	return d, nil
}

// Name is the webhook path segment.
func (d *Discord) Name() string { return "discord" }

// MaxBodyBytes bounds an interaction's body.
func (d *Discord) MaxBodyBytes() int64 { return maxBody }

// Verify checks X-Signature-Ed25519 over X-Signature-Timestamp + body with the application's public key.
func (d *Discord) Verify(_ context.Context, w *integrations.Webhook) error {
	if d.pub == nil {
		return fmt.Errorf("%w: no discord.public_key configured: the interactions endpoint is off", integrations.ErrBadSignature)
	}
	sig, err := hex.DecodeString(w.Header.Get("X-Signature-Ed25519"))
	ts := w.Header.Get("X-Signature-Timestamp")
	if err != nil || len(sig) != ed25519.SignatureSize || ts == "" {
		return fmt.Errorf("%w: missing or malformed X-Signature-Ed25519 / X-Signature-Timestamp", integrations.ErrBadSignature)
	}
	msg := make([]byte, 0, len(ts)+len(w.Body))
	msg = append(append(msg, ts...), w.Body...)
	if !ed25519.Verify(d.pub, msg, sig) {
		return fmt.Errorf("%w: signature does not match", integrations.ErrBadSignature)
	}
	return nil
}

type interaction struct {
	ID            string `json:"id"`
	ApplicationID string `json:"application_id"`
	Type          int    `json:"type"`
	Token         string `json:"token"`
	ChannelID     string `json:"channel_id"`
	GuildID       string `json:"guild_id"`
	Data          struct {
		Name    string `json:"name"`
		Options []struct {
			Name  string `json:"name"`
			Value any    `json:"value"`
		} `json:"options"`
	} `json:"data"`
}

// text is the command's text: its options' values in order ("run" "echo hi", or one "text" option).
func (i *interaction) text() string {
	var parts []string
	for _, o := range i.Data.Options {
		parts = append(parts, fmt.Sprint(o.Value))
	}
	return strings.Join(parts, " ")
}

// Accept answers a PING with a PONG, and an application command with a deferred message (Discord shows "thinking"
// until Handle's follow-up edits it); the interaction id is the delivery.
func (d *Discord) Accept(_ context.Context, w *integrations.Webhook) (*integrations.Acceptance, error) {
	var in interaction
	if err := json.Unmarshal(w.Body, &in); err != nil {
		return nil, fmt.Errorf("discord: malformed interaction: %w", err)
	}
	switch in.Type {
	case interactionPing:
		return &integrations.Acceptance{Event: "ping", Reply: jsonReply(map[string]any{"type": callbackPong})}, nil
	case interactionApplicationCommand:
		if in.ID == "" || in.Token == "" {
			return nil, errors.New("discord: application command without id or token")
		}
		cmd, err := integrations.ParseChatCommand(in.text())
		if err != nil || cmd.Verb == "help" {
			msg := integrations.HelpText
			if err != nil {
				msg = err.Error() + "\n" + msg
			}
			return &integrations.Acceptance{Event: EventCommand, Reply: jsonReply(map[string]any{"type": 4, "data": map[string]any{"content": msg, "flags": 64}})}, nil
		}
		return &integrations.Acceptance{DeliveryID: in.ID, Event: EventCommand, Reply: jsonReply(map[string]any{"type": callbackDeferredMessage})}, nil
	}
	return nil, fmt.Errorf("discord: unsupported interaction type %d", in.Type)
}

func jsonReply(v any) *integrations.Reply {
	b, _ := json.Marshal(v)
	return &integrations.Reply{Status: http.StatusOK, ContentType: "application/json", Body: b}
}

// Handle does an application command's work and edits the deferred answer with the result (interaction tokens
// are valid for 15 minutes; a longer run's result is a follow-up message until then, and lost after).
func (d *Discord) Handle(ctx context.Context, dl *integrations.Delivery, a integrations.Actions) error {
	if dl.Event != EventCommand {
		return queue.Permanent(fmt.Errorf("discord: unknown delivery event %q", dl.Event))
	}
	var in interaction
	if err := json.Unmarshal(dl.Body, &in); err != nil {
		return queue.Permanent(fmt.Errorf("discord: interaction: %w", err))
	}
	cmd, err := integrations.ParseChatCommand(in.text())
	if err != nil {
		return queue.Permanent(err)
	}
	followup := d.api + "/webhooks/" + url.PathEscape(in.ApplicationID) + "/" + url.PathEscape(in.Token)
	reply := func(text string) error {
		return d.send(ctx, http.MethodPatch, followup+"/messages/@original", message{Content: truncate(text, MaxContent), AllowedMentions: allowedMentions{Parse: []string{}}})
	}
	source := "discord:" + in.ChannelID
	link, err := a.Link(ctx, d.Name(), source)
	if errors.Is(err, integrations.ErrNotLinked) {
		return reply(fmt.Sprintf("This channel (%s) is not linked to an Aetherium owner; an owner links it first.", source))
	}
	if err != nil {
		return fmt.Errorf("discord: link of %s: %w", source, err)
	}
	var kind, id string
	switch cmd.Verb {
	case "run":
		if !link.AllowsCommand(cmd.Command) {
			return reply(link.RefuseCommand())
		}
		kind = "job"
		id, err = a.StartCommand(ctx, link.OwnerID, integrations.CommandRequest{Command: cmd.Command})
	case "agent":
		if !link.Runs {
			return reply("This channel's link does not allow agent runs.")
		}
		kind = "run"
		id, err = a.StartRun(ctx, link.OwnerID, integrations.RunRequest{RepoURL: cmd.Repo, Prompt: cmd.Prompt})
	case "status":
		return reply("`status` is answered in Slack and the API for now: `aetherium job get " + cmd.ID + "`.")
	default:
		return reply(integrations.HelpText)
	}
	if err != nil {
		return fmt.Errorf("discord: start %s: %w", kind, err)
	}
	if err := reply(fmt.Sprintf("Started %s %s.", kind, id)); err != nil {
		d.log.WarnContext(ctx, "discord progress message failed", "kind", kind, "id", id, "err", err)
	}
	out, err := a.Wait(ctx, link.OwnerID, kind, id)
	if err != nil {
		return queue.Permanent(fmt.Errorf("discord: wait for %s %s: %w", kind, id, err))
	}
	text := fmt.Sprintf("**%s %s %s**", kind, id, out.Status)
	if out.Error != "" {
		text += "\nerror: " + out.Error
	}
	if out.OutputTail != "" {
		text += "\n```\n" + strings.ReplaceAll(out.OutputTail, "```", "` ` `") + "\n```"
	}
	if err := reply(text); err != nil {
		return queue.Permanent(fmt.Errorf("discord: result of %s %s not delivered: %w", kind, id, err))
	}
	return nil
}

// Health has nothing to check without a destination: webhooks are per notification rule.
func (d *Discord) Health(context.Context) error { return nil }

type message struct {
	Content         string          `json:"content,omitempty"`
	Embeds          []embed         `json:"embeds,omitempty"`
	AllowedMentions allowedMentions `json:"allowed_mentions"`
}

// allowedMentions is always empty: nothing in a notification (guest output included) pings anyone.
type allowedMentions struct {
	Parse []string `json:"parse"`
}

type embed struct {
	Title       string       `json:"title,omitempty"`
	Description string       `json:"description,omitempty"`
	URL         string       `json:"url,omitempty"`
	Timestamp   string       `json:"timestamp,omitempty"`
	Fields      []embedField `json:"fields,omitempty"`
}

type embedField struct {
	Name   string `json:"name"`
	Value  string `json:"value"`
	Inline bool   `json:"inline"`
}

// Notify executes the webhook URL (Destination) with the notification: an embed (title, fields, link) and the
// text in as many messages of at most 2,000 characters as it needs, split on line boundaries; with n.Part, only
// that one of them (the dispatcher's outbox holds one entry per part: see Parts).
func (d *Discord) Notify(ctx context.Context, n integrations.Notification) error {
	if err := d.CheckDestination(n.Destination); err != nil {
		return queue.Permanent(err)
	}
	u, err := url.Parse(n.Destination)
	if err != nil {
		return queue.Permanent(errors.New("discord: destination is not a webhook URL"))
	}
	msgs := messages(n)
	if n.Part > 0 {
		if n.Part > len(msgs) {
			return queue.Permanent(fmt.Errorf("discord: part %d of a notification of %d messages", n.Part, len(msgs)))
		}
		msgs = msgs[n.Part-1 : n.Part]
	}
	q := u.Query()
	q.Set("wait", "true")
	u.RawQuery = q.Encode()
	for _, m := range msgs {
		if err := d.send(ctx, http.MethodPost, u.String(), m); err != nil {
			return err
		}
	}
	return nil
}

// Parts is how many messages Notify sends for n: the dispatcher enqueues each as its own outbox entry, so a
// retry after a failed part resumes at that part instead of sending the earlier ones again.
func (d *Discord) Parts(n integrations.Notification) int { return len(messages(n)) }

// WebhookHosts are the hosts of Discord's incoming webhook URLs.
var WebhookHosts = []string{"discord.com", "discordapp.com", "canary.discord.com", "ptb.discord.com"}

// CheckDestination refuses a destination that is not an incoming webhook URL of Discord's (https, one of
// WebhookHosts, /api/webhooks/{id}/{token} or /api/v{n}/webhooks/{id}/{token}, at most a thread_id query), or
// one under the configured APIURL: notifications are sent nowhere else (a rule's URL is not a way into the
// gateway's network). The error never repeats the URL, whose token is a credential.
func (d *Discord) CheckDestination(dest string) error {
	u, err := url.Parse(dest)
	if err != nil {
		return errors.New("discord: the destination is not a URL; want a Discord webhook URL, https://discord.com/api/webhooks/{id}/{token}")
	}
	if base, err := url.Parse(d.api); err == nil && base.Host != "" && strings.EqualFold(u.Scheme, base.Scheme) &&
		strings.EqualFold(u.Host, base.Host) && u.User == nil && u.RawPath == "" && u.Fragment == "" {
		if rest, ok := strings.CutPrefix(u.Path, strings.TrimSuffix(base.Path, "/")+"/webhooks/"); ok && webhookPath(rest) && checkQuery(u) == nil {
			return nil
		}
	}
	return CheckWebhookURL(dest)
}

// CheckWebhookURL refuses what is not an incoming webhook URL of Discord's (see CheckDestination).
func CheckWebhookURL(dest string) error {
	bad := func(why string) error {
		return fmt.Errorf("discord: the destination must be a Discord webhook URL, https://discord.com/api/webhooks/{id}/{token}: %s", why)
	}
	u, err := url.Parse(dest)
	switch {
	case err != nil || u.Opaque != "":
		return bad("it is not a URL")
	case u.Scheme != "https":
		return bad(fmt.Sprintf("the scheme is %q, not https", u.Scheme))
	case u.User != nil:
		return bad("it has user information")
	case u.Port() != "":
		return bad("it names a port")
	case !slices.Contains(WebhookHosts, strings.ToLower(u.Hostname())):
		return bad(fmt.Sprintf("the host %q is not Discord's (%s)", u.Hostname(), strings.Join(WebhookHosts, ", ")))
	case u.Fragment != "" || u.RawFragment != "":
		return bad("it has a fragment")
	}
	rest, ok := strings.CutPrefix(u.Path, "/api/")
	if ok && strings.HasPrefix(rest, "v") {
		v, after, _ := strings.Cut(rest[1:], "/")
		if v == "" || len(v) > 3 || strings.Trim(v, "0123456789") != "" {
			return bad("the path is not /api/webhooks/{id}/{token} or /api/v{n}/webhooks/{id}/{token}")
		}
		rest = after
	}
	rest, ok2 := strings.CutPrefix(rest, "webhooks/")
	if !ok || !ok2 || u.RawPath != "" || !webhookPath(rest) {
		return bad("the path is not /api/webhooks/{id}/{token} or /api/v{n}/webhooks/{id}/{token}")
	}
	return checkQuery(u)
}

// webhookPath reports whether p is "{id}/{token}": a snowflake and a token of Discord's alphabet.
func webhookPath(p string) bool {
	id, token, ok := strings.Cut(p, "/")
	return ok && id != "" && len(id) <= 20 && strings.Trim(id, "0123456789") == "" &&
		token != "" && len(token) <= 200 && strings.Trim(token, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") == ""
}

// checkQuery allows a webhook URL's thread_id (a message in a thread of a forum channel) and nothing else.
func checkQuery(u *url.URL) error {
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return errors.New("discord: the destination's query is malformed")
	}
	for k, v := range q {
		if k != "thread_id" || len(v) != 1 || v[0] == "" || strings.Trim(v[0], "0123456789") != "" {
			return fmt.Errorf("discord: the destination's query may only be thread_id={id}, not %q", k)
		}
	}
	return nil
}

// messages renders a notification as webhook messages within Discord's limits.
func messages(n integrations.Notification) []message {
	e := embed{Title: truncate(n.Title, MaxEmbedTitle), URL: n.URL}
	if !n.Time.IsZero() {
		e.Timestamp = n.Time.UTC().Format(time.RFC3339)
	}
	keys := make([]string, 0, len(n.Fields))
	for k := range n.Fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	total := utf8.RuneCountInString(e.Title)
	for _, k := range keys {
		if len(e.Fields) == MaxEmbedFields {
			break
		}
		f := embedField{Name: truncate(k, MaxFieldName), Value: truncate(n.Fields[k], MaxFieldValue), Inline: true}
		if f.Value == "" {
			f.Value = "-"
		}
		size := utf8.RuneCountInString(f.Name) + utf8.RuneCountInString(f.Value)
		if total+size > MaxEmbedTotal {
			break
		}
		total += size
		e.Fields = append(e.Fields, f)
	}
	chunks := Split(n.Text, MaxContent)
	if len(chunks) == 0 {
		chunks = []string{""}
	}
	out := make([]message, len(chunks))
	for i, c := range chunks {
		out[i] = message{Content: c, AllowedMentions: allowedMentions{Parse: []string{}}}
	}
	out[0].Embeds = []embed{e}
	return out
}

// Split cuts text into pieces of at most max characters, at line boundaries where it can (a longer line is cut
// at a character boundary).
func Split(text string, max int) []string {
	var out []string
	var cur strings.Builder
	curLen := 0
	flush := func() {
		if curLen > 0 {
			out = append(out, cur.String())
			cur.Reset()
			curLen = 0
		}
	}
	for _, line := range strings.SplitAfter(text, "\n") {
		n := utf8.RuneCountInString(line)
		if curLen+n > max {
			flush()
		}
		for n > max {
			r := []rune(line)
			out = append(out, string(r[:max]))
			line = string(r[max:])
			n -= max
		}
		cur.WriteString(line)
		curLen += n
	}
	flush()
	for i := range out {
		out[i] = strings.TrimSuffix(out[i], "\n")
	}
	return out
}

func truncate(s string, max int) string {
	if utf8.RuneCountInString(s) <= max {
		return s
	}
	r := []rune(s)
	return string(r[:max-1]) + "…"
}

// StatusError is an HTTP failure of Discord's API.
type StatusError struct {
	Status     int
	RetryAfter time.Duration
}

func (e *StatusError) Error() string {
	if e.RetryAfter > 0 {
		return fmt.Sprintf("discord: HTTP %d (retry after %s)", e.Status, e.RetryAfter)
	}
	return fmt.Sprintf("discord: HTTP %d", e.Status)
}

// send posts one message, waiting out an exhausted bucket first and a 429's retry_after after (up to
// max429Waits times); other failures are returned for the caller to retry.
func (d *Discord) send(ctx context.Context, method, u string, m message) error {
	body, err := json.Marshal(m)
	if err != nil {
		return err
	}
	for waits := 0; ; waits++ {
		if wait := d.bucketWait(u); wait > 0 {
			if wait > maxRateWait {
				return &StatusError{Status: http.StatusTooManyRequests, RetryAfter: wait}
			}
			if err := d.sleep(ctx, wait); err != nil {
				return err
			}
		}
		req, err := http.NewRequestWithContext(ctx, method, u, bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		res, err := d.hc.Do(req)
		if err != nil {
			// The URL holds the webhook's token: only the cause is kept.
			var ue *url.Error
			if errors.As(err, &ue) {
				err = ue.Err
			}
			return fmt.Errorf("discord: %s: %w", redact(u), err)
		}
		raw, _ := io.ReadAll(io.LimitReader(res.Body, 64<<10))
		res.Body.Close()
		d.observe(u, res.Header)
		switch {
		case res.StatusCode/100 == 2:
			return nil
		case res.StatusCode == http.StatusTooManyRequests:
			wait := retryAfter(res.Header, raw)
			if waits >= max429Waits || wait > maxRateWait {
				return &StatusError{Status: res.StatusCode, RetryAfter: wait}
			}
			if err := d.sleep(ctx, wait); err != nil {
				return err
			}
		case res.StatusCode == http.StatusNotFound || res.StatusCode == http.StatusUnauthorized || res.StatusCode == http.StatusBadRequest:
			// A deleted webhook, a bad token, a message Discord refuses: retrying cannot help.
			return queue.Permanent(&StatusError{Status: res.StatusCode})
		default:
			return &StatusError{Status: res.StatusCode}
		}
	}
}

// retryAfter reads a 429's wait: the JSON body's retry_after (seconds, fractional), else Retry-After.
func retryAfter(h http.Header, body []byte) time.Duration {
	var b struct {
		RetryAfter float64 `json:"retry_after"`
	}
	if json.Unmarshal(body, &b) == nil && b.RetryAfter > 0 {
		return time.Duration(b.RetryAfter * float64(time.Second))
	}
	if s, err := strconv.ParseFloat(h.Get("Retry-After"), 64); err == nil && s > 0 {
		return time.Duration(s * float64(time.Second))
	}
	return time.Second
}

// bucketWait is how long to wait before calling u: its bucket is used up until its reset.
func (d *Discord) bucketWait(u string) time.Duration {
	d.mu.Lock()
	defer d.mu.Unlock()
	b := d.buckets[d.bucketOf[routeKey(u)]]
	if b == nil || b.remaining > 0 {
		return 0
	}
	return time.Until(b.reset)
}

// observe records the rate-limit headers of an answer.
func (d *Discord) observe(u string, h http.Header) {
	name := h.Get("X-RateLimit-Bucket")
	rem, err1 := strconv.Atoi(h.Get("X-RateLimit-Remaining"))
	after, err2 := strconv.ParseFloat(h.Get("X-RateLimit-Reset-After"), 64)
	if name == "" || err1 != nil || err2 != nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.bucketOf[routeKey(u)] = name
	d.buckets[name] = &bucket{remaining: rem, reset: time.Now().Add(time.Duration(after * float64(time.Second)))}
}

// routeKey is a URL without its query: the webhook, whichever parameters a call adds.
func routeKey(u string) string {
	k, _, _ := strings.Cut(u, "?")
	return k
}

// redact hides a webhook URL's token (its last path segment) in errors and logs.
func redact(u string) string {
	k := routeKey(u)
	if i := strings.LastIndex(k, "/"); i > 0 {
		return k[:i] + "/xxxxx"
	}
	return "(webhook)"
}
