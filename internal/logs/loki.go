package logs

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// PushPath is where Loki (and VictoriaLogs under its /insert prefix) accepts pushes, relative to the configured URL.
const PushPath = "/loki/api/v1/push"

// LokiConfig configures a Loki push client. Zero values take the defaults given.
type LokiConfig struct {
	// URL is Loki's base URL, e.g. http://loki:3100 (for VictoriaLogs: http://vl:9428/insert); PushPath is appended.
	URL string
	// Format is the push format: FormatProtobuf (the default: Loki's native one, snappy-compressed protobuf) or
	// FormatJSON.
	Format string
	// Tenant, when set, is sent as X-Scope-OrgID (Loki's multi-tenancy).
	Tenant string
	// Username and Password: HTTP basic auth. BearerToken: Authorization: Bearer. At most one of the two.
	Username, Password string
	BearerToken        string

	BatchEntries int           // entries per push (default 1000)
	BatchBytes   int           // bytes per push, roughly (default 1 MiB)
	BatchWait    time.Duration // longest an entry waits for its batch to fill (default 1 s)

	// The buffer of entries waiting to be pushed, bounded in entries and bytes (defaults 50000 and 16 MiB): when
	// it is full, new entries are dropped and counted, and the caller never waits.
	MaxBufferEntries int
	MaxBufferBytes   int

	MinBackoff  time.Duration // first retry delay (default 250 ms), doubled each attempt, with jitter
	MaxBackoff  time.Duration // longest retry delay (default 10 s)
	MaxRetryFor time.Duration // how long one batch is retried before it is dropped (default 10 min)

	// HTTPClient sends the pushes (default: a client with a 15 s timeout).
	HTTPClient *http.Client
	// Logger reports the client's own trouble. It must not feed back into this client (use the plain stdout logger).
	Logger *slog.Logger
}

// Stats are a client's counters since it was made. Every entry pushed is, eventually, exactly one of Sent or
// Dropped (Queued until then).
type Stats struct {
	Sent    int64 // entries the server acknowledged
	Dropped int64 // entries lost: buffer full, rejected by the server (4xx), retried too long, or left at Close
	Queued  int64 // entries waiting or in flight
	// Rejected counts the batches the server refused with a 4xx other than 429 (their entries are in Dropped).
	Rejected int64
}

// Push formats, LokiConfig.Format.
const (
	// FormatProtobuf is Loki's native push format: a protobuf PushRequest, snappy block-compressed, sent as
	// application/x-protobuf. Smaller and cheaper to parse than JSON.
	FormatProtobuf = "protobuf"
	// FormatJSON is Loki's JSON push format, sent as application/json.
	FormatJSON = "json"
)

// Loki is a Sink pushing to Loki's HTTP push API (protobuf or JSON), with structured metadata. Push only enqueues; one
// goroutine batches by size and age and sends, retrying 429, 5xx and network errors with exponential backoff and
// jitter.
type Loki struct {
	cfg         LokiConfig
	pushURL     string
	log         *slog.Logger
	encode      func([]Entry) ([]byte, error)
	contentType string

	mu       sync.Mutex
	queue    []Entry
	qBytes   int
	oldest   time.Time // when the oldest queued entry was enqueued
	closing  bool
	inFlight int

	wake     chan struct{}
	done     chan struct{}
	abortCtx context.Context // ended when Close's deadline passes: in-flight sends stop and count as dropped
	abort    context.CancelFunc

	sent, dropped, rejected atomic.Int64
	loggedReject            atomic.Bool
}

// NewLoki validates cfg and starts the client.
func NewLoki(cfg LokiConfig) (*Loki, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.User != nil {
		return nil, fmt.Errorf("loki url must be http(s)://HOST[:PORT][/PREFIX] without credentials or query (got %q)", redact(cfg.URL))
	}
	if cfg.BearerToken != "" && (cfg.Username != "" || cfg.Password != "") {
		return nil, errors.New("loki: set basic auth (username, password) or a bearer token, not both")
	}
	if cfg.Password != "" && cfg.Username == "" {
		return nil, errors.New("loki: a password needs a username")
	}
	var encode func([]Entry) ([]byte, error)
	var contentType string
	switch cfg.Format {
	case "", FormatProtobuf:
		cfg.Format, encode, contentType = FormatProtobuf, EncodePushProtobuf, ContentTypeProtobuf
	case FormatJSON:
		encode, contentType = EncodePush, "application/json"
	default:
		return nil, fmt.Errorf("loki: format must be %s or %s (got %q)", FormatProtobuf, FormatJSON, cfg.Format)
	}
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	defd := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&cfg.BatchEntries, 1000)
	def(&cfg.BatchBytes, 1<<20)
	def(&cfg.MaxBufferEntries, 50000)
	def(&cfg.MaxBufferBytes, 16<<20)
	defd(&cfg.BatchWait, time.Second)
	defd(&cfg.MinBackoff, 250*time.Millisecond)
	defd(&cfg.MaxBackoff, 10*time.Second)
	defd(&cfg.MaxRetryFor, 10*time.Minute)
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: 15 * time.Second}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	l := &Loki{cfg: cfg, pushURL: strings.TrimRight(cfg.URL, "/") + PushPath, log: log, encode: encode,
		contentType: contentType, wake: make(chan struct{}, 1), done: make(chan struct{})}
	l.abortCtx, l.abort = context.WithCancel(context.Background())
	go l.run()
	return l, nil
}

// ErrClosed is returned by Push after Close.
var ErrClosed = errors.New("logs: sink closed")

// Push enqueues entries; those that do not fit in the buffer are dropped and counted.
func (l *Loki) Push(_ context.Context, entries ...Entry) error {
	l.mu.Lock()
	if l.closing {
		l.mu.Unlock()
		return ErrClosed
	}
	var dropped int64
	for _, e := range entries {
		sz := e.size()
		if len(l.queue) >= l.cfg.MaxBufferEntries || l.qBytes+sz > l.cfg.MaxBufferBytes {
			dropped++
			continue
		}
		if e.Time.IsZero() {
			e.Time = time.Now()
		}
		if len(l.queue) == 0 {
			l.oldest = time.Now()
		}
		l.queue = append(l.queue, e)
		l.qBytes += sz
	}
	l.mu.Unlock()
	l.dropped.Add(dropped)
	l.signal()
	return nil
}

func (l *Loki) signal() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// Stats returns the counters.
func (l *Loki) Stats() Stats {
	l.mu.Lock()
	queued := int64(len(l.queue) + l.inFlight)
	l.mu.Unlock()
	return Stats{Sent: l.sent.Load(), Dropped: l.dropped.Load(), Queued: queued, Rejected: l.rejected.Load()}
}

// Health pushes an empty request: it proves the server is reachable and accepts this client's credentials (and,
// with protobuf, that it reads snappy-compressed protobuf).
func (l *Loki) Health(ctx context.Context) error {
	body, err := l.encode(nil)
	if err != nil {
		return err
	}
	_, err = l.post(ctx, body)
	return err
}

// Close stops accepting entries and sends what is buffered, until ctx ends; what is still unsent then is dropped
// and counted.
func (l *Loki) Close(ctx context.Context) error {
	l.mu.Lock()
	already := l.closing
	l.closing = true
	l.mu.Unlock()
	if already {
		<-l.done
		return nil
	}
	l.signal()
	select {
	case <-l.done:
		l.abort()
		return nil
	case <-ctx.Done():
		l.abort()
		<-l.done
		st := l.Stats()
		return fmt.Errorf("loki: flush at close cut short (%d entries dropped in all): %w", st.Dropped, ctx.Err())
	}
}

func (l *Loki) run() {
	defer close(l.done)
	for {
		batch, ok := l.next()
		if !ok {
			return
		}
		l.send(batch)
	}
}

// next waits for a batch: full by entries or bytes, old enough, or whatever is left at close.
func (l *Loki) next() ([]Entry, bool) {
	for {
		l.mu.Lock()
		n := len(l.queue)
		if l.abortCtx.Err() != nil { // Close gave up: everything left is dropped
			l.dropped.Add(int64(n))
			l.queue, l.qBytes = nil, 0
			l.mu.Unlock()
			return nil, false
		}
		wait := l.cfg.BatchWait - time.Since(l.oldest)
		if n > 0 && (n >= l.cfg.BatchEntries || l.qBytes >= l.cfg.BatchBytes || wait <= 0 || l.closing) {
			batch := l.take()
			l.mu.Unlock()
			return batch, true
		}
		if n == 0 && l.closing {
			l.mu.Unlock()
			return nil, false
		}
		l.mu.Unlock()
		if n == 0 {
			select {
			case <-l.wake:
			case <-l.abortCtx.Done():
			}
			continue
		}
		t := time.NewTimer(wait)
		select {
		case <-l.wake:
		case <-t.C:
		case <-l.abortCtx.Done():
		}
		t.Stop()
	}
}

// take removes one batch from the front of the queue; l.mu is held.
func (l *Loki) take() []Entry {
	n, bytes := 0, 0
	for n < len(l.queue) && n < l.cfg.BatchEntries {
		sz := l.queue[n].size()
		if n > 0 && bytes+sz > l.cfg.BatchBytes {
			break
		}
		bytes += sz
		n++
	}
	batch := make([]Entry, n)
	copy(batch, l.queue[:n])
	rest := len(l.queue) - n
	copy(l.queue, l.queue[n:])
	clear(l.queue[rest:])
	l.queue = l.queue[:rest]
	l.qBytes -= bytes
	l.inFlight = n
	if rest > 0 {
		l.oldest = time.Now() // the rest waited already; a fresh age keeps batches full without starving them
	}
	return batch
}

// send pushes one batch, retrying what is worth retrying; the batch ends Sent or Dropped.
func (l *Loki) send(batch []Entry) {
	defer func() {
		l.mu.Lock()
		l.inFlight = 0
		l.mu.Unlock()
	}()
	body, err := l.encode(batch)
	if err != nil { // cannot happen with strings only; counted all the same
		l.dropped.Add(int64(len(batch)))
		l.log.Error("loki: encoding a batch failed", "err", err)
		return
	}
	start := time.Now()
	backoff := l.cfg.MinBackoff
	for attempt := 1; ; attempt++ {
		retry, err := l.post(l.abortCtx, body)
		if err == nil {
			l.sent.Add(int64(len(batch)))
			return
		}
		if !retry {
			l.dropped.Add(int64(len(batch)))
			l.rejected.Add(1)
			if !l.loggedReject.Swap(true) { // once: a misconfiguration would otherwise log on every batch
				l.log.Error("loki rejected a batch; it is dropped (further rejections are counted, not logged)",
					"entries", len(batch), "err", err)
			}
			return
		}
		if l.abortCtx.Err() != nil || time.Since(start) > l.cfg.MaxRetryFor {
			l.dropped.Add(int64(len(batch)))
			l.log.Warn("loki: batch dropped after retries", "entries", len(batch), "attempts", attempt, "err", err)
			return
		}
		if attempt == 1 || attempt%10 == 0 {
			l.log.Warn("loki push failed; retrying", "attempt", attempt, "err", err)
		}
		// Full jitter over [backoff/2, backoff): spreads the retries of many workers after an outage.
		d := backoff/2 + rand.N(backoff/2+1)
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-l.abortCtx.Done():
			t.Stop()
		}
		backoff = min(backoff*2, l.cfg.MaxBackoff)
	}
}

// StatusError is a push the server answered with a status other than 2xx.
type StatusError struct {
	Code int
	Body string
}

func (e *StatusError) Error() string { return fmt.Sprintf("loki answered %d: %s", e.Code, e.Body) }

// post sends one push; retry tells whether a failure is worth retrying (429, 5xx, network).
func (l *Loki) post(ctx context.Context, body []byte) (retry bool, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, l.pushURL, bytes.NewReader(body))
	if err != nil {
		return false, err
	}
	req.Header.Set("Content-Type", l.contentType)
	l.authorize(req)
	resp, err := l.cfg.HTTPClient.Do(req)
	if err != nil {
		return true, err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode/100 == 2 {
		return false, nil
	}
	err = &StatusError{Code: resp.StatusCode, Body: strings.TrimSpace(string(msg))}
	return resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500, err
}

func (l *Loki) authorize(req *http.Request) {
	if l.cfg.Tenant != "" {
		req.Header.Set("X-Scope-OrgID", l.cfg.Tenant)
	}
	switch {
	case l.cfg.BearerToken != "":
		req.Header.Set("Authorization", "Bearer "+l.cfg.BearerToken)
	case l.cfg.Username != "":
		req.SetBasicAuth(l.cfg.Username, l.cfg.Password)
	}
}

// EncodePush renders entries in Loki's JSON push format, grouped into streams by label set:
// {"streams":[{"stream":{labels},"values":[["<unix ns>","line",{metadata}]]}]}. Structured metadata is the
// optional third element of a value (Loki 3).
func EncodePush(entries []Entry) ([]byte, error) {
	type stream struct {
		Stream map[string]string `json:"stream"`
		Values [][]any           `json:"values"`
	}
	groups := groupStreams(entries)
	out := struct {
		Streams []stream `json:"streams"`
	}{Streams: make([]stream, 0, len(groups))}
	for _, g := range groups {
		s := stream{Stream: g.labels, Values: make([][]any, 0, len(g.entries))}
		for _, e := range g.entries {
			v := []any{strconv.FormatInt(e.Time.UnixNano(), 10), e.Line}
			if len(e.Metadata) > 0 {
				v = append(v, e.Metadata)
			}
			s.Values = append(s.Values, v)
		}
		out.Streams = append(out.Streams, s)
	}
	return json.Marshal(out)
}

// streamGroup is the entries of one label set, in the order they came.
type streamGroup struct {
	labels  map[string]string
	entries []Entry
}

// groupStreams groups entries by label set, the groups in the order their first entry came.
func groupStreams(entries []Entry) []*streamGroup {
	byKey := map[string]*streamGroup{}
	var order []*streamGroup
	for _, e := range entries {
		labels := e.Labels.Map()
		key := labelKey(labels)
		g, ok := byKey[key]
		if !ok {
			g = &streamGroup{labels: labels}
			byKey[key] = g
			order = append(order, g)
		}
		g.entries = append(g.entries, e)
	}
	return order
}

func labelKey(m map[string]string) string {
	var b strings.Builder
	for _, k := range sortedKeys(m) {
		b.WriteString(k)
		b.WriteByte(0)
		b.WriteString(m[k])
		b.WriteByte(0)
	}
	return b.String()
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func redact(raw string) string {
	if u, err := url.Parse(raw); err == nil && u.User != nil {
		u.User = url.User("REDACTED")
		return u.String()
	}
	return raw
}
