package slack

// Socket Mode: for a host Slack cannot reach, the gateway dials out instead. apps.connections.open (with the
// app-level token) returns a WebSocket URL; Slack sends its slash commands and events over that connection as
// envelopes, each to be acknowledged within 3 s. Every envelope is turned into the webhook Slack would have POSTed
// (socketWebhook) and goes through the same Accept, the same record (integrations.DeliveryRecord: deduplicated on
// the same delivery id) and later the same Handle as an HTTP delivery; only Verify is skipped, because the
// connection itself is authenticated by the token.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/aetherium/aetherium/internal/integrations"
)

// Socket Mode's limits and the client's own bounds.
const (
	// AckWithin is how soon Slack wants an envelope acknowledged before it counts it as failed and retries.
	AckWithin = 3 * time.Second
	// helloTimeout bounds the wait for a new connection's hello: without it, it is not known to be serving.
	helloTimeout = 10 * time.Second
	// recordTimeout bounds recording a delivery. It is not cut short by the connection's end: the envelope was
	// accepted, and Slack would otherwise redeliver it as a duplicate of nothing (the gateway route does the same).
	recordTimeout = 30 * time.Second
	// aliveFor is how long a connection must have served for its drop to count as a new failure series rather than
	// one more of the same (a link that drops at once keeps backing off).
	aliveFor = time.Minute
	// HeaderSocketEnvelope is set on deliveries that came over Socket Mode (the envelope's id), for the record.
	HeaderSocketEnvelope = "X-Aetherium-Slack-Envelope-Id"
)

// ErrLinkDisabled is returned (wrapped) by SocketClient.Run when Slack disconnects with link_disabled: Socket Mode
// was turned off for the app, and reconnecting would only be refused again.
var ErrLinkDisabled = errors.New("slack socket mode: link disabled by Slack (is Socket Mode on in the app's settings?)")

// SocketConfig configures a SocketClient.
type SocketConfig struct {
	// Recorder records accepted deliveries and queues them for Handle (the gateway's task.Service).
	Recorder integrations.Recorder
	// MinBackoff and MaxBackoff bound the wait before a reconnection after a failure (default 1 s and 1 min).
	MinBackoff, MaxBackoff time.Duration
	Logger                 *slog.Logger
}

// SocketClient receives the app's deliveries over Socket Mode. Several (one per gateway) may run at once: Slack
// allows up to 10 connections per app and gives each envelope to one of them, and a redelivery that lands on
// another gateway is deduplicated by the record like an HTTP retry.
type SocketClient struct {
	s        *Slack
	rec      integrations.Recorder
	min, max time.Duration
	log      *slog.Logger
}

// SocketClient returns the Socket Mode client of s, which needs the app token (Config.AppToken).
func (s *Slack) SocketClient(cfg SocketConfig) (*SocketClient, error) {
	if s.appToken == "" {
		return nil, errors.New("slack: Socket Mode needs an app-level token (slack_app_token)")
	}
	if cfg.Recorder == nil {
		return nil, errors.New("slack: Socket Mode needs a recorder")
	}
	c := &SocketClient{s: s, rec: cfg.Recorder, min: cfg.MinBackoff, max: cfg.MaxBackoff, log: cfg.Logger}
	if c.min <= 0 {
		c.min = time.Second
	}
	if c.max < c.min {
		c.max = max(time.Minute, c.min)
	}
	if c.log == nil {
		c.log = s.log
	}
	return c, nil
}

// Run serves Socket Mode until ctx ends (then nil). It reconnects with backoff after any failure or drop and, when
// Slack asks for a refresh, opens the new connection before closing the old one so that no envelope waits. It
// returns an error only when retrying cannot help: the app token is refused, or Slack disabled the link.
func (c *SocketClient) Run(ctx context.Context) error {
	var cur *socketConn
	defer func() {
		if cur != nil {
			cur.close()
		}
	}()
	failures := 0
	// retry counts a failure and waits its backoff; false: stop (ctx ended, or err is one retrying cannot fix).
	retry := func(err error) (bool, error) {
		if ctx.Err() != nil {
			return false, nil
		}
		var pe *permanentError
		if errors.As(err, &pe) {
			return false, err
		}
		failures++
		return c.sleep(ctx, failures, err), nil
	}
	for {
		if cur == nil {
			sc, err := c.connect(ctx)
			if err != nil || ctx.Err() != nil {
				if ok, err := retry(err); !ok {
					return err
				}
				continue
			}
			cur = sc
		}
		var reason string
		select {
		case <-ctx.Done():
			return nil
		case reason = <-cur.disconnect:
		case <-cur.done:
			// Slack says why before it closes; the two may be seen together.
			select {
			case reason = <-cur.disconnect:
			default:
			}
		}
		if reason == "link_disabled" {
			c.log.ErrorContext(ctx, "slack socket mode stopped: Slack disabled the link; turn Socket Mode on in the app's settings and restart")
			return ErrLinkDisabled
		}
		if reason != "" {
			// refresh_requested (the connection's time is up), warning (it soon will be) or a reason not known yet:
			// the old connection keeps serving while the new one opens.
			c.log.InfoContext(ctx, "slack socket mode: reconnecting at Slack's request", "reason", reason)
			next, err := c.connect(ctx)
			cur.close()
			cur = next
			if err != nil || ctx.Err() != nil {
				if ok, err := retry(err); !ok {
					return err
				}
				continue
			}
			failures = 0
			continue
		}
		if time.Since(cur.opened) > aliveFor {
			failures = 0
		}
		err := fmt.Errorf("slack socket mode: connection dropped: %w", cur.err)
		cur.close()
		cur = nil
		if ok, err := retry(err); !ok {
			return err
		}
	}
}

// sleep waits the backoff of the n-th failure in a row (false: ctx ended first).
func (c *SocketClient) sleep(ctx context.Context, n int, err error) bool {
	wait := c.min
	for i := 1; i < n && wait < c.max; i++ {
		wait *= 2
	}
	wait = min(wait, c.max)
	c.log.WarnContext(ctx, "slack socket mode: reconnecting", "in", wait, "failures", n, "err", err)
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// permanentError is a failure reconnecting cannot fix (a refused token).
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// openConnection calls apps.connections.open with the app token and returns the WebSocket URL.
func (c *SocketClient) openConnection(ctx context.Context) (string, error) {
	raw, err := c.s.postRaw(ctx, c.s.api+"apps.connections.open", c.s.appToken, "application/x-www-form-urlencoded", nil)
	if err != nil {
		return "", fmt.Errorf("slack: apps.connections.open: %w", err)
	}
	var resp struct {
		OK    bool   `json:"ok"`
		Error string `json:"error"`
		URL   string `json:"url"`
	}
	if err := json.Unmarshal(raw, &resp); err != nil {
		return "", fmt.Errorf("slack: apps.connections.open: malformed answer: %w", err)
	}
	if !resp.OK {
		e := &APIError{Method: "apps.connections.open", Code: resp.Error}
		switch resp.Error {
		case "invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired", "not_allowed_token_type", "missing_scope":
			return "", &permanentError{fmt.Errorf("%w (check slack_app_token: an app-level xapp- token with the connections:write scope, "+
				"of an app with Socket Mode enabled)", e)}
		}
		return "", e
	}
	if resp.URL == "" {
		return "", errors.New("slack: apps.connections.open: answer without a url")
	}
	return resp.URL, nil
}

// socketConn is one WebSocket connection and its reader.
type socketConn struct {
	ws     *websocket.Conn
	opened time.Time
	cancel context.CancelFunc
	hello  chan struct{} // closed at Slack's hello
	// disconnect gets the reason of Slack's disconnect message (the first one; the connection still serves).
	disconnect chan string
	done       chan struct{} // closed when reading ends; err says why
	err        error
	handlers   sync.WaitGroup
	closeOnce  sync.Once
}

// connect opens a connection and waits for its hello.
func (c *SocketClient) connect(ctx context.Context) (*socketConn, error) {
	u, err := c.openConnection(ctx)
	if err != nil {
		return nil, err
	}
	dctx, cancel := context.WithTimeout(ctx, helloTimeout)
	defer cancel()
	ws, res, err := websocket.Dial(dctx, u, &websocket.DialOptions{HTTPClient: c.s.hc})
	if res != nil && res.Body != nil {
		res.Body.Close()
	}
	if err != nil {
		// The URL carries a connection ticket, and the HTTP client's error quotes the URL.
		return nil, fmt.Errorf("slack socket mode: connect to %s: %w", urlHost(u), withoutQuery(err, u))
	}
	ws.SetReadLimit(maxBody)
	cctx, ccancel := context.WithCancel(ctx)
	sc := &socketConn{ws: ws, opened: time.Now(), cancel: ccancel, hello: make(chan struct{}),
		disconnect: make(chan string, 1), done: make(chan struct{})}
	go c.read(cctx, sc)
	select {
	case <-sc.hello:
		return sc, nil
	case <-sc.done:
		err = fmt.Errorf("slack socket mode: connection to %s ended before its hello: %w", urlHost(u), sc.err)
	case <-dctx.Done():
		err = fmt.Errorf("slack socket mode: no hello from %s: %w", urlHost(u), dctx.Err())
	}
	sc.close()
	return nil, err
}

// close ends the connection and waits for its reader and the envelopes being handled (their records finish; an
// unsent acknowledgement is redelivered by Slack on another connection and deduplicated).
func (sc *socketConn) close() {
	sc.closeOnce.Do(func() {
		_ = sc.ws.Close(websocket.StatusNormalClosure, "")
		sc.cancel()
		<-sc.done
		sc.handlers.Wait()
	})
}

// redactedError is err with a secret part of its text hidden; errors.Is and As still see err.
type redactedError struct {
	err    error
	secret string
}

func (e *redactedError) Error() string { return strings.ReplaceAll(e.err.Error(), e.secret, "xxxxx") }
func (e *redactedError) Unwrap() error { return e.err }

// withoutQuery hides u's query (the ticket) in err's text.
func withoutQuery(err error, u string) error {
	if p, perr := url.Parse(u); perr == nil && p.RawQuery != "" {
		return &redactedError{err: err, secret: p.RawQuery}
	}
	return err
}

func urlHost(u string) string {
	if p, err := url.Parse(u); err == nil && p.Host != "" {
		return p.Host
	}
	return "the socket url"
}

// socketMessage is anything Slack sends over the connection: hello, disconnect or an envelope.
type socketMessage struct {
	Type           string `json:"type"`
	Reason         string `json:"reason"`
	NumConnections int    `json:"num_connections"`
	ConnectionInfo struct {
		AppID string `json:"app_id"`
	} `json:"connection_info"`
	EnvelopeID             string          `json:"envelope_id"`
	AcceptsResponsePayload bool            `json:"accepts_response_payload"`
	Payload                json.RawMessage `json:"payload"`
	RetryAttempt           int             `json:"retry_attempt"`
	RetryReason            string          `json:"retry_reason"`
}

// read reads the connection until it ends, handing each envelope to its own goroutine so that a slow record never
// holds up the reading (and with it the pongs and the other envelopes' 3 s).
func (c *SocketClient) read(ctx context.Context, sc *socketConn) {
	defer close(sc.done)
	helloSeen := false
	for {
		typ, data, err := sc.ws.Read(ctx)
		if err != nil {
			sc.err = err
			return
		}
		if typ != websocket.MessageText {
			continue
		}
		m := new(socketMessage)
		if err := json.Unmarshal(data, m); err != nil {
			c.log.WarnContext(ctx, "slack socket mode: malformed message ignored", "err", err)
			continue
		}
		switch {
		case m.Type == "hello":
			c.log.InfoContext(ctx, "slack socket mode connected", "app_id", m.ConnectionInfo.AppID, "connections", m.NumConnections)
			if !helloSeen {
				helloSeen = true
				close(sc.hello)
			}
		case m.Type == "disconnect":
			select {
			case sc.disconnect <- m.Reason:
			default:
			}
		case m.EnvelopeID != "":
			sc.handlers.Add(1)
			go func() {
				defer sc.handlers.Done()
				c.envelope(ctx, sc.ws, m)
			}()
		default:
			c.log.DebugContext(ctx, "slack socket mode: message ignored", "type", m.Type)
		}
	}
}

// envelope accepts, records and acknowledges one envelope, in the HTTP route's order: the acknowledgement (Slack's
// 2xx) is sent only once the delivery is recorded, so a failed record is redelivered by Slack rather than lost.
func (c *SocketClient) envelope(ctx context.Context, ws *websocket.Conn, m *socketMessage) {
	log := c.log.With("envelope", m.EnvelopeID, "type", m.Type)
	reply, ack := c.deliver(ctx, log, m)
	if !ack {
		return
	}
	out := map[string]any{"envelope_id": m.EnvelopeID}
	if reply != nil && m.AcceptsResponsePayload {
		out["payload"] = reply
	}
	b, err := json.Marshal(out)
	if err != nil {
		log.ErrorContext(ctx, "slack socket mode: acknowledgement", "err", err)
		return
	}
	wctx, cancel := context.WithTimeout(ctx, AckWithin)
	defer cancel()
	if err := ws.Write(wctx, websocket.MessageText, b); err != nil && ctx.Err() == nil {
		log.WarnContext(ctx, "slack socket mode: acknowledgement not sent (Slack redelivers the envelope)", "err", err)
	}
}

// deliver does what the HTTP route does between Verify and its answer; it returns the reply to acknowledge with
// (nil: none) and whether to acknowledge at all.
func (c *SocketClient) deliver(ctx context.Context, log *slog.Logger, m *socketMessage) (json.RawMessage, bool) {
	hook, err := socketWebhook(m, time.Now().UTC())
	if err != nil {
		// Acknowledged all the same: it will never be anything else, and Slack would only redeliver it.
		log.InfoContext(ctx, "slack socket mode: envelope not handled", "err", err)
		return nil, true
	}
	acc, err := c.s.Accept(ctx, hook)
	if err != nil {
		log.WarnContext(ctx, "slack socket mode: envelope refused", "err", err)
		return nil, true
	}
	if acc.DeliveryID != "" {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recordTimeout)
		defer cancel()
		d := integrations.DeliveryRecord(c.s.Name(), hook, acc)
		dup, err := c.rec.RecordWebhook(rctx, d)
		if err != nil {
			log.ErrorContext(ctx, "slack socket mode: delivery not recorded; not acknowledged, so Slack redelivers it",
				"delivery", acc.DeliveryID, "err", err)
			return nil, false
		}
		if dup {
			// As over HTTP: a redelivery is acknowledged and does nothing again (no second "Working on").
			log.DebugContext(ctx, "slack socket mode: duplicate delivery", "delivery", acc.DeliveryID, "retry", m.RetryAttempt)
			return nil, true
		}
		log.DebugContext(ctx, "slack socket mode: delivery recorded", "delivery", acc.DeliveryID, "id", d.ID, "event", acc.Event)
	}
	if acc.Reply == nil || !strings.HasPrefix(acc.Reply.ContentType, "application/json") || !json.Valid(acc.Reply.Body) {
		return nil, true
	}
	return json.RawMessage(acc.Reply.Body), true
}

// socketWebhook is the webhook Slack would have POSTed for an envelope: a slash command's JSON fields as the form
// body of the HTTP command, an events_api payload as the Events API body itself. The retry headers are Slack's
// HTTP ones, so a record reads the same either way.
func socketWebhook(m *socketMessage, at time.Time) (*integrations.Webhook, error) {
	h := http.Header{}
	h.Set(HeaderSocketEnvelope, m.EnvelopeID)
	if m.RetryAttempt > 0 {
		h.Set("X-Slack-Retry-Num", strconv.Itoa(m.RetryAttempt))
		h.Set("X-Slack-Retry-Reason", m.RetryReason)
	}
	var body []byte
	switch m.Type {
	case "slash_commands":
		form, err := payloadForm(m.Payload)
		if err != nil {
			return nil, err
		}
		h.Set("Content-Type", "application/x-www-form-urlencoded")
		body = []byte(form.Encode())
	case "events_api":
		if len(m.Payload) == 0 {
			return nil, errors.New("slack: events_api envelope without a payload")
		}
		h.Set("Content-Type", "application/json")
		body = m.Payload
	default:
		// interactive (buttons, modals) is not handled over HTTP either.
		return nil, fmt.Errorf("slack: %q envelopes are not handled", m.Type)
	}
	if len(body) > maxBody {
		return nil, fmt.Errorf("slack: envelope payload exceeds %d bytes", maxBody)
	}
	return &integrations.Webhook{Header: h, Body: body, ReceivedAt: at}, nil
}

// payloadForm turns a slash command's JSON payload into its HTTP form. The fields are strings; anything else is
// kept as its JSON text, and objects, arrays and nulls (not part of a slash command) are dropped.
func payloadForm(payload json.RawMessage) (url.Values, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(payload, &fields); err != nil {
		return nil, fmt.Errorf("slack: malformed slash_commands payload: %w", err)
	}
	form := url.Values{}
	for k, raw := range fields {
		var s string
		if err := json.Unmarshal(raw, &s); err == nil {
			form.Set(k, s)
			continue
		}
		switch t := strings.TrimSpace(string(raw)); {
		case t == "" || t == "null" || t[0] == '{' || t[0] == '[':
		default:
			form.Set(k, t)
		}
	}
	return form, nil
}
