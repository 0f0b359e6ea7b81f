// Package slack is the Slack integration: the /aetherium slash command and the Events API arrive as signed
// webhooks (Verify checks Slack's v0 HMAC-SHA256 signature over the raw body within a five-minute window), their
// results go back through the command's response_url (at most five uses within thirty minutes, Slack's limit) and
// then chat.postMessage / chat.update with the bot token, and notifications are chat.postMessage to a channel.
//
// With an app-level token (AppToken, xapp-...) the same deliveries can arrive over Socket Mode instead, for hosts
// without a public URL: SocketClient (socket.go) turns each envelope into the webhook Slack would have sent and
// feeds it to the same Accept, recording and Handle.
//
// It speaks plain HTTP to Slack's Web API (APIURL, https://slack.com/api/ by default: a test's local server or an
// Enterprise Grid proxy in its place). Secrets (signing secret, bot token, app token) are never logged.
package slack

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/aetherium/aetherium/internal/integrations"
)

// DefaultAPIURL is Slack's Web API.
const DefaultAPIURL = "https://slack.com/api/"

// Slack's limits and windows.
const (
	// MaxClockSkew is how far a request's timestamp may be from the receiver's clock (Slack: five minutes).
	MaxClockSkew = 5 * time.Minute
	// ResponseURLUses is how often a slash command's response_url may be used, within ResponseURLWindow.
	ResponseURLUses   = 5
	ResponseURLWindow = 30 * time.Minute
	// maxBody bounds a webhook: slash commands and events are a few kilobytes.
	maxBody = 1 << 20
	// statusWait is how long `status <id>` waits for an end before saying the work is still going.
	statusWait = 2 * time.Second
)

// Events of Acceptance.Event and Delivery.Event.
const (
	EventSlashCommand   = "slash_command"
	EventCallbackPrefix = "event_callback:"
)

// Config configures the integration.
type Config struct {
	SigningSecret string // slack.signing_secret: verifies webhooks
	BotToken      string // slack.bot_token (xoxb-...): chat.postMessage, chat.update, auth.test
	AppToken      string // slack.app_token (xapp-...): Socket Mode; without a signing secret HTTP webhooks are refused
	APIURL        string // slack_api_url: the Web API base (default DefaultAPIURL)
	HTTPClient    *http.Client
	Logger        *slog.Logger
	// Now is the clock Verify compares timestamps with when the webhook has no ReceivedAt (tests set it).
	Now func() time.Time
}

// Slack implements integrations.Integration.
type Slack struct {
	secret   []byte
	token    string
	appToken string
	api      string
	hc       *http.Client
	log      *slog.Logger
	now      func() time.Time
}

var _ integrations.Integration = (*Slack)(nil)

// New returns the Slack integration. It needs a way for deliveries to arrive: a signing secret (HTTP webhooks are
// verified with it) or an app token (Socket Mode, whose connection is authenticated by the token itself).
func New(cfg Config) (*Slack, error) {
	if cfg.SigningSecret == "" && cfg.AppToken == "" {
		return nil, errors.New("slack: a signing secret (slack_signing_secret, HTTP webhooks) or an app token " +
			"(slack_app_token, Socket Mode) is required")
	}
	if cfg.AppToken != "" && !strings.HasPrefix(cfg.AppToken, "xapp-") {
		// A bot or user token here would only fail later, at apps.connections.open, with a vaguer not_allowed_token_type.
		return nil, errors.New("slack: slack_app_token must be an app-level token (xapp-...), made under Basic Information → App-Level Tokens")
	}
	s := &Slack{secret: []byte(cfg.SigningSecret), token: cfg.BotToken, appToken: cfg.AppToken, api: cfg.APIURL,
		hc: cfg.HTTPClient, log: cfg.Logger, now: cfg.Now}
	if s.api == "" {
		s.api = DefaultAPIURL
	}
	if !strings.HasSuffix(s.api, "/") {
		s.api += "/"
	}
	if s.hc == nil {
		s.hc = &http.Client{Timeout: 30 * time.Second}
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.now == nil {
		s.now = time.Now
	}
	return s, nil
}

// Name is the webhook path segment.
func (s *Slack) Name() string { return "slack" }

// MaxBodyBytes bounds a webhook's body.
func (s *Slack) MaxBodyBytes() int64 { return maxBody }

// Verify checks X-Slack-Signature = "v0=" + hex(HMAC-SHA256(secret, "v0:" + timestamp + ":" + body)) in constant
// time, and that X-Slack-Request-Timestamp is within MaxClockSkew of the receipt (a replayed old request fails).
func (s *Slack) Verify(_ context.Context, w *integrations.Webhook) error {
	if len(s.secret) == 0 {
		// Socket Mode only: an HMAC with an empty key is one anybody can compute, so nothing over HTTP is genuine.
		return fmt.Errorf("%w: no signing secret is configured (Socket Mode only); HTTP webhooks are refused", integrations.ErrBadSignature)
	}
	tsHeader := w.Header.Get("X-Slack-Request-Timestamp")
	sig := w.Header.Get("X-Slack-Signature")
	if tsHeader == "" || sig == "" {
		return fmt.Errorf("%w: missing X-Slack-Request-Timestamp or X-Slack-Signature", integrations.ErrBadSignature)
	}
	ts, err := strconv.ParseInt(tsHeader, 10, 64)
	if err != nil {
		return fmt.Errorf("%w: malformed timestamp", integrations.ErrBadSignature)
	}
	now := w.ReceivedAt
	if now.IsZero() {
		now = s.now()
	}
	if skew := now.Sub(time.Unix(ts, 0)); skew > MaxClockSkew || skew < -MaxClockSkew {
		return fmt.Errorf("%w: timestamp %s off", integrations.ErrBadSignature, skew.Round(time.Second))
	}
	if !hmac.Equal([]byte(sig), []byte(Sign(s.secret, tsHeader, w.Body))) {
		return fmt.Errorf("%w: signature does not match", integrations.ErrBadSignature)
	}
	return nil
}

// Sign returns the X-Slack-Signature of body sent at timestamp (seconds since the epoch, as a string).
func Sign(secret []byte, timestamp string, body []byte) string {
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte("v0:" + timestamp + ":"))
	mac.Write(body)
	return "v0=" + hex.EncodeToString(mac.Sum(nil))
}

// Accept says what a verified webhook is: a slash command (acknowledged at once with an ephemeral message; its
// trigger_id is the delivery), an Events API url_verification (answered with its challenge, nothing recorded) or
// an event_callback (its event_id is the delivery, so Slack's retries, X-Slack-Retry-Num, are deduplicated).
// Socket Mode envelopes arrive here too, as the webhook HTTP would have delivered (socketWebhook).
func (s *Slack) Accept(_ context.Context, w *integrations.Webhook) (*integrations.Acceptance, error) {
	body := bytes.TrimSpace(w.Body)
	if len(body) > 0 && body[0] == '{' {
		return acceptEvent(body)
	}
	form, err := url.ParseQuery(string(w.Body))
	if err != nil {
		return nil, fmt.Errorf("slack: body is neither an event nor a slash command: %w", err)
	}
	if form.Get("command") == "" {
		return nil, errors.New("slack: form body without a command")
	}
	if form.Get("trigger_id") == "" {
		return nil, errors.New("slack: slash command without a trigger_id")
	}
	cmd, err := integrations.ParseChatCommand(form.Get("text"))
	if err != nil {
		return &integrations.Acceptance{Event: EventSlashCommand, Reply: ephemeral(err.Error() + "\n" + integrations.HelpText)}, nil
	}
	if cmd.Verb == "help" {
		return &integrations.Acceptance{Event: EventSlashCommand, Reply: ephemeral(integrations.HelpText)}, nil
	}
	return &integrations.Acceptance{
		DeliveryID: form.Get("trigger_id"),
		Event:      EventSlashCommand,
		Reply:      ephemeral(fmt.Sprintf("Working on `%s %s`; the result follows here.", form.Get("command"), cmd.String())),
	}, nil
}

func acceptEvent(body []byte) (*integrations.Acceptance, error) {
	var env struct {
		Type      string `json:"type"`
		Challenge string `json:"challenge"`
		EventID   string `json:"event_id"`
		Event     struct {
			Type string `json:"type"`
		} `json:"event"`
	}
	if err := json.Unmarshal(body, &env); err != nil {
		return nil, fmt.Errorf("slack: malformed event: %w", err)
	}
	switch env.Type {
	case "url_verification":
		b, _ := json.Marshal(map[string]string{"challenge": env.Challenge})
		return &integrations.Acceptance{Event: "url_verification", Reply: &integrations.Reply{Status: http.StatusOK, ContentType: "application/json", Body: b}}, nil
	case "event_callback":
		if env.EventID == "" {
			return nil, errors.New("slack: event_callback without an event_id")
		}
		return &integrations.Acceptance{DeliveryID: env.EventID, Event: EventCallbackPrefix + env.Event.Type}, nil
	default:
		return nil, fmt.Errorf("slack: unknown event type %q", env.Type)
	}
}

func ephemeral(text string) *integrations.Reply {
	b, _ := json.Marshal(map[string]string{"response_type": "ephemeral", "text": text})
	return &integrations.Reply{Status: http.StatusOK, ContentType: "application/json", Body: b}
}
