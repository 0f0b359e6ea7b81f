package credproxy

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"sync"
	"time"
)

// Usage is what one model request through the proxy consumed, as the upstream reported it.
type Usage struct {
	VMID     string    `json:"vm_id"`
	RunID    string    `json:"run_id,omitempty"`
	OwnerID  string    `json:"owner_id"`
	Provider string    `json:"provider"` // "anthropic" or "openai"
	Path     string    `json:"path"`     // upstream path, e.g. /v1/messages
	Model    string    `json:"model,omitempty"`
	Status   int       `json:"status"`
	Streamed bool      `json:"streamed"`
	Time     time.Time `json:"time"`
	// Tokens. InputTokens excludes cached input for Anthropic (cache reads and writes are counted apart, as the
	// API reports them); for OpenAI it is prompt_tokens and CacheReadInputTokens its cached_tokens part.
	InputTokens              int64 `json:"input_tokens"`
	OutputTokens             int64 `json:"output_tokens"`
	CacheCreationInputTokens int64 `json:"cache_creation_input_tokens,omitempty"`
	CacheReadInputTokens     int64 `json:"cache_read_input_tokens,omitempty"`
}

// UsageSink receives one Usage per model response that reported usage. Record must not block for long: it runs
// when the response ends, on the request's goroutine.
type UsageSink interface {
	Record(ctx context.Context, u Usage)
}

// MemoryUsage is a UsageSink that keeps every record in memory and sums them per run and per VM.
type MemoryUsage struct {
	mu      sync.Mutex
	records []Usage
}

func (m *MemoryUsage) Record(_ context.Context, u Usage) {
	m.mu.Lock()
	m.records = append(m.records, u)
	m.mu.Unlock()
}

// Records returns a copy of what was recorded, oldest first.
func (m *MemoryUsage) Records() []Usage {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]Usage(nil), m.records...)
}

// Totals sums the records for which match is true (nil: all).
func (m *MemoryUsage) Totals(match func(Usage) bool) Usage {
	m.mu.Lock()
	defer m.mu.Unlock()
	var t Usage
	for _, u := range m.records {
		if match != nil && !match(u) {
			continue
		}
		t.InputTokens += u.InputTokens
		t.OutputTokens += u.OutputTokens
		t.CacheCreationInputTokens += u.CacheCreationInputTokens
		t.CacheReadInputTokens += u.CacheReadInputTokens
	}
	return t
}

// ---- reading usage from responses as they pass

// apiUsage is the union of the usage objects of Anthropic (input_tokens, output_tokens, cache_*) and OpenAI
// (prompt_tokens, completion_tokens, prompt_tokens_details.cached_tokens; the Responses API uses input_tokens and
// output_tokens too).
type apiUsage struct {
	InputTokens              *int64 `json:"input_tokens"`
	OutputTokens             *int64 `json:"output_tokens"`
	CacheCreationInputTokens *int64 `json:"cache_creation_input_tokens"`
	CacheReadInputTokens     *int64 `json:"cache_read_input_tokens"`
	PromptTokens             *int64 `json:"prompt_tokens"`
	CompletionTokens         *int64 `json:"completion_tokens"`
	PromptTokensDetails      *struct {
		CachedTokens *int64 `json:"cached_tokens"`
	} `json:"prompt_tokens_details"`
	InputTokensDetails *struct {
		CachedTokens *int64 `json:"cached_tokens"`
	} `json:"input_tokens_details"`
}

// merge takes the fields u reports into dst. Anthropic's message_delta usage is cumulative, so a later report of a
// field replaces an earlier one rather than adding to it.
func (u *apiUsage) merge(dst *Usage) bool {
	if u == nil {
		return false
	}
	seen := false
	set := func(d *int64, v *int64) {
		if v != nil {
			*d, seen = *v, true
		}
	}
	set(&dst.InputTokens, u.InputTokens)
	set(&dst.OutputTokens, u.OutputTokens)
	set(&dst.CacheCreationInputTokens, u.CacheCreationInputTokens)
	set(&dst.CacheReadInputTokens, u.CacheReadInputTokens)
	set(&dst.InputTokens, u.PromptTokens)
	set(&dst.OutputTokens, u.CompletionTokens)
	if u.PromptTokensDetails != nil {
		set(&dst.CacheReadInputTokens, u.PromptTokensDetails.CachedTokens)
	}
	if u.InputTokensDetails != nil {
		set(&dst.CacheReadInputTokens, u.InputTokensDetails.CachedTokens)
	}
	return seen
}

// usageEvent is the part of a response body or of one event's data that carries usage: at the top (a message,
// message_delta, an OpenAI completion or chunk), under "message" (message_start) or under "response" (the
// Responses API's response.completed).
type usageEvent struct {
	Model   string    `json:"model"`
	Usage   *apiUsage `json:"usage"`
	Message *struct {
		Model string    `json:"model"`
		Usage *apiUsage `json:"usage"`
	} `json:"message"`
	Response *struct {
		Model string    `json:"model"`
		Usage *apiUsage `json:"usage"`
	} `json:"response"`
}

func (e *usageEvent) apply(dst *Usage) bool {
	seen := e.Usage.merge(dst)
	if e.Model != "" {
		dst.Model = e.Model
	}
	if e.Message != nil {
		seen = e.Message.Usage.merge(dst) || seen
		if e.Message.Model != "" {
			dst.Model = e.Message.Model
		}
	}
	if e.Response != nil {
		seen = e.Response.Usage.merge(dst) || seen
		if e.Response.Model != "" {
			dst.Model = e.Response.Model
		}
	}
	return seen
}

// maxScanLine bounds one SSE line the usage reader looks at, and maxScanJSON a whole JSON body: what is longer
// still passes through, unread for usage (usage lines are short; a huge body is not a usage report).
const (
	maxScanLine = 1 << 20
	maxScanJSON = 16 << 20
)

// usageReader passes a response body through unchanged, one Read at a time (nothing is held back), and reads the
// usage out of what passes: the data lines of an event stream, or a JSON body. done runs once, at EOF or Close.
type usageReader struct {
	rc     io.ReadCloser
	sse    bool
	u      Usage
	seen   bool
	line   []byte // SSE: the current line so far; JSON: the body so far
	skip   bool   // the current line or body is too long to read
	once   sync.Once
	finish func(u Usage, seen bool)
}

func (r *usageReader) Read(p []byte) (int, error) {
	n, err := r.rc.Read(p)
	if n > 0 {
		r.scan(p[:n])
	}
	if err == io.EOF {
		r.end()
	}
	return n, err
}

func (r *usageReader) Close() error {
	err := r.rc.Close()
	r.end()
	return err
}

func (r *usageReader) end() {
	r.once.Do(func() {
		if r.sse {
			r.scanLine()
		} else if !r.skip && len(r.line) > 0 {
			var e usageEvent
			if json.Unmarshal(r.line, &e) == nil {
				r.seen = e.apply(&r.u) || r.seen
			}
		}
		r.line = nil
		r.finish(r.u, r.seen)
	})
}

func (r *usageReader) scan(b []byte) {
	if !r.sse {
		if r.skip {
			return
		}
		if len(r.line)+len(b) > maxScanJSON {
			r.skip, r.line = true, nil
			return
		}
		r.line = append(r.line, b...)
		return
	}
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			r.addLine(b)
			return
		}
		r.addLine(b[:i])
		r.scanLine()
		b = b[i+1:]
	}
}

func (r *usageReader) addLine(b []byte) {
	if r.skip {
		return
	}
	if len(r.line)+len(b) > maxScanLine {
		r.skip, r.line = true, r.line[:0]
		return
	}
	r.line = append(r.line, b...)
}

// scanLine reads one complete SSE line: only "data:" lines whose JSON has usage matter.
func (r *usageReader) scanLine() {
	line := bytes.TrimSuffix(r.line, []byte("\r"))
	skip := r.skip
	r.line, r.skip = r.line[:0], false
	if skip {
		return
	}
	data, ok := bytes.CutPrefix(line, []byte("data:"))
	if !ok || !bytes.Contains(data, []byte(`"usage"`)) && !bytes.Contains(data, []byte(`"model"`)) {
		return
	}
	var e usageEvent
	if json.Unmarshal(bytes.TrimSpace(data), &e) == nil {
		r.seen = e.apply(&r.u) || r.seen
	}
}
