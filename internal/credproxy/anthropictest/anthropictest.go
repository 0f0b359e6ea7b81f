// Package anthropictest is a scripted Anthropic Messages API server for tests: it plays a fixed conversation to
// a real agent (claude-code) or to the credential proxy, and records what it was sent.
//
// It speaks the API as Anthropic documents it (https://docs.anthropic.com/en/api/messages-streaming): POST
// /v1/messages as Server-Sent Events (message_start, content_block_start, ping, content_block_delta with
// text_delta or input_json_delta split into several partial_json chunks, content_block_stop, message_delta with
// the stop reason and the output tokens, message_stop, each with its event: line) or as one JSON message when the
// request does not stream; POST /v1/messages/count_tokens; GET /v1/models. Paths match by suffix, so a test may
// mount it under a prefix (a corporate gateway's /corp/v1/messages).
//
// A Script is the assistant's side of the main conversation, one Turn per model call. Which turn answers a request
// is read from the request itself, so that retries and claude-code's side requests do not shift the script: a
// request of the agent loop (it offers tools) gets turn k, k being the number of tool_result blocks in its
// messages (each turn but the last asks for tools, each answer adds their results); any other request (no tools:
// claude-code's title, topic and quota calls) gets a short text, Script.SideText.
package anthropictest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Block is one content block of an assistant turn: text, or a tool_use (Tool and Input).
type Block struct {
	Text  string
	Tool  string
	Input json.RawMessage
}

// Text is a text block.
func Text(s string) Block { return Block{Text: s} }

// ToolUse is a tool_use block calling tool with input (marshalled to JSON; it panics when input cannot be,
// which is a bug in the test).
func ToolUse(tool string, input any) Block {
	b, err := json.Marshal(input)
	if err != nil {
		panic(fmt.Sprintf("anthropictest: tool input for %s: %v", tool, err))
	}
	return Block{Tool: tool, Input: b}
}

// Usage is the token usage a response reports: input and cache tokens in message_start, output tokens in
// message_delta (or all of them in a JSON answer's usage).
type Usage struct {
	InputTokens              int64 `json:"input_tokens"`
	OutputTokens             int64 `json:"output_tokens"`
	CacheCreationInputTokens int64 `json:"cache_creation_input_tokens"`
	CacheReadInputTokens     int64 `json:"cache_read_input_tokens"`
}

// DefaultUsage is what a response reports when its turn and script set none.
var DefaultUsage = Usage{InputTokens: 100, OutputTokens: 10}

// Turn is one assistant answer. Its stop reason is tool_use when it has a tool_use block, end_turn otherwise.
type Turn struct {
	Blocks []Block
	// Usage reported for this turn; zero means Script.Usage.
	Usage Usage
	// Status, when not 0, answers the request with this HTTP status and an Anthropic error body instead
	// (401 authentication_error, 429 rate_limit_error, 529 overloaded_error, other api_error).
	Status int
	// Hold, when not nil, holds the answer back until it is released (or the request is cancelled).
	Hold *Hold
}

// Script is a conversation to play.
type Script struct {
	Turns []Turn
	// SideText answers requests outside the agent loop; "" means "OK".
	SideText string
	// Usage is the default usage of every response; zero means DefaultUsage.
	Usage Usage
	// Model names the model of the answers when the request names none, and the one model of GET /v1/models;
	// "" means "claude-sonnet-4-5".
	Model string
	// APIKey, when set, is the only credential accepted (as x-api-key or Authorization: Bearer); other requests
	// get 401 authentication_error.
	APIKey string
}

// Hold keeps a turn's answer back: the server blocks when it is about to answer it, and Reached says so.
type Hold struct {
	reached, release chan struct{}
	reachOnce, once  sync.Once
}

// NewHold returns a Hold not yet reached nor released.
func NewHold() *Hold { return &Hold{reached: make(chan struct{}), release: make(chan struct{})} }

// Reached is closed when a request waits on the hold.
func (h *Hold) Reached() <-chan struct{} { return h.reached }

// Release lets the held answer (and every later request of the same turn) through.
func (h *Hold) Release() { h.once.Do(func() { close(h.release) }) }

func (h *Hold) wait(ctx context.Context) error {
	h.reachOnce.Do(func() { close(h.reached) })
	select {
	case <-h.release:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Turn values of Request for requests that are not turns of the script.
const (
	SideRequest  = -1 // a /v1/messages request outside the agent loop
	OtherRequest = -2 // count_tokens, models, or a request refused
)

// Request is one request the server received.
type Request struct {
	Time   time.Time
	Method string
	Path   string
	Query  string
	Header http.Header
	Body   []byte
	// Turn is the script turn that answered a main-loop request (possibly len(Turns) or more when the agent asked
	// past the script, answered with an error), SideRequest or OtherRequest.
	Turn int
}

// Server is the scripted API; it is an http.Handler (use it with httptest.NewServer).
type Server struct {
	script Script

	mu       sync.Mutex
	vars     map[string]string
	reqs     []Request
	seq      int
	first    chan struct{}
	firstOne sync.Once
}

// New returns a server playing script.
func New(script Script) *Server {
	if script.SideText == "" {
		script.SideText = "OK"
	}
	if script.Usage == (Usage{}) {
		script.Usage = DefaultUsage
	}
	if script.Model == "" {
		script.Model = "claude-sonnet-4-5"
	}
	return &Server{script: script, first: make(chan struct{})}
}

// Set makes every later answer replace placeholder with value in its text and tool inputs: a script can name
// what is only known once the agent runs (its working directory, say). In tool inputs the value is JSON-escaped.
func (s *Server) Set(placeholder, value string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.vars == nil {
		s.vars = map[string]string{}
	}
	s.vars[placeholder] = value
}

// substitute returns blocks with the placeholders of Set replaced.
func (s *Server) substitute(blocks []Block) []Block {
	s.mu.Lock()
	vars := make(map[string]string, len(s.vars))
	for k, v := range s.vars {
		vars[k] = v
	}
	s.mu.Unlock()
	if len(vars) == 0 {
		return blocks
	}
	out := make([]Block, len(blocks))
	for i, b := range blocks {
		for k, v := range vars {
			b.Text = strings.ReplaceAll(b.Text, k, v)
			if len(b.Input) > 0 {
				esc, _ := json.Marshal(v)
				b.Input = json.RawMessage(strings.ReplaceAll(string(b.Input), k, string(esc[1:len(esc)-1])))
			}
		}
		out[i] = b
	}
	return out
}

// FirstMessage is closed when the first POST /v1/messages arrives (before it is answered).
func (s *Server) FirstMessage() <-chan struct{} { return s.first }

// Requests returns a copy of every request received, oldest first.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.reqs...)
}

// TurnRequests returns the requests that were answered with a script turn (retries included), oldest first.
func (s *Server) TurnRequests() []Request {
	var out []Request
	for _, r := range s.Requests() {
		if r.Turn >= 0 {
			out = append(out, r)
		}
	}
	return out
}

// maxBody bounds a request body: claude-code's requests carry the whole conversation and its tool schemas
// (some hundred KB).
const maxBody = 32 << 20

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody))
	if err != nil {
		writeError(w, http.StatusBadRequest, "invalid_request_error", "reading body: "+err.Error())
		return
	}
	rec := Request{Time: time.Now(), Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery,
		Header: r.Header.Clone(), Body: body, Turn: OtherRequest}
	idx := s.record(rec)
	if s.script.APIKey != "" && !s.authorized(r) {
		writeError(w, http.StatusUnauthorized, "authentication_error", "invalid x-api-key")
		return
	}
	path := r.URL.Path
	switch {
	case strings.HasSuffix(path, "/v1/messages/count_tokens") && r.Method == http.MethodPost:
		// Deterministic: a token per four bytes of the request.
		writeJSON(w, http.StatusOK, map[string]any{"input_tokens": len(body)/4 + 1})
	case strings.HasSuffix(path, "/v1/messages") && r.Method == http.MethodPost:
		s.firstOne.Do(func() { close(s.first) })
		s.messages(w, r, body, idx)
	case strings.HasSuffix(path, "/v1/models") && r.Method == http.MethodGet:
		writeJSON(w, http.StatusOK, map[string]any{
			"data": []map[string]any{{"type": "model", "id": s.script.Model, "display_name": s.script.Model,
				"created_at": "2025-09-29T00:00:00Z"}},
			"has_more": false, "first_id": s.script.Model, "last_id": s.script.Model,
		})
	default:
		writeError(w, http.StatusNotFound, "not_found_error", "no route "+r.Method+" "+path)
	}
}

func (s *Server) authorized(r *http.Request) bool {
	if r.Header.Get("x-api-key") == s.script.APIKey {
		return true
	}
	a := r.Header.Get("Authorization")
	return strings.HasPrefix(a, "Bearer ") && strings.TrimPrefix(a, "Bearer ") == s.script.APIKey
}

func (s *Server) record(r Request) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reqs = append(s.reqs, r)
	return len(s.reqs) - 1
}

func (s *Server) setTurn(idx, turn int) {
	s.mu.Lock()
	s.reqs[idx].Turn = turn
	s.mu.Unlock()
}

func (s *Server) nextID(prefix string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seq++
	return fmt.Sprintf("%s_%024d", prefix, s.seq)
}

// messagesRequest is what the server reads of a Messages API request.
type messagesRequest struct {
	Model     string            `json:"model"`
	MaxTokens int               `json:"max_tokens"`
	Stream    bool              `json:"stream"`
	Tools     []json.RawMessage `json:"tools"`
	Messages  []struct {
		Role    string          `json:"role"`
		Content json.RawMessage `json:"content"`
	} `json:"messages"`
}

// toolResults counts the tool_result blocks of the user messages.
func (m *messagesRequest) toolResults() int {
	n := 0
	for _, msg := range m.Messages {
		if msg.Role != "user" {
			continue
		}
		var blocks []struct {
			Type string `json:"type"`
		}
		if json.Unmarshal(msg.Content, &blocks) != nil {
			continue // a plain string
		}
		for _, b := range blocks {
			if b.Type == "tool_result" {
				n++
			}
		}
	}
	return n
}

func (s *Server) messages(w http.ResponseWriter, r *http.Request, body []byte, idx int) {
	var req messagesRequest
	if err := json.Unmarshal(body, &req); err != nil {
		writeError(w, http.StatusBadRequest, "invalid_request_error", "body is not JSON: "+err.Error())
		return
	}
	if req.Model == "" {
		req.Model = s.script.Model
	}
	turn := Turn{Blocks: []Block{Text(s.script.SideText)}}
	if len(req.Tools) > 0 {
		k := req.toolResults()
		s.setTurn(idx, k)
		if k >= len(s.script.Turns) {
			writeError(w, http.StatusInternalServerError, "api_error",
				fmt.Sprintf("anthropictest: the script has %d turns, the request asks for turn %d", len(s.script.Turns), k))
			return
		}
		turn = s.script.Turns[k]
	} else {
		s.setTurn(idx, SideRequest)
	}
	if turn.Hold != nil {
		if turn.Hold.wait(r.Context()) != nil {
			return
		}
	}
	if turn.Status != 0 {
		writeError(w, turn.Status, errorType(turn.Status), "anthropictest: scripted error")
		return
	}
	usage := turn.Usage
	if usage == (Usage{}) {
		usage = s.script.Usage
	}
	blocks := s.substitute(turn.Blocks)
	msg := s.message(req.Model, blocks, usage)
	if !req.Stream {
		writeJSON(w, http.StatusOK, msg)
		return
	}
	s.stream(w, r, msg, blocks, usage)
}

// message is the complete (non-streamed) answer.
type message struct {
	ID           string         `json:"id"`
	Type         string         `json:"type"`
	Role         string         `json:"role"`
	Model        string         `json:"model"`
	Content      []contentBlock `json:"content"`
	StopReason   *string        `json:"stop_reason"`
	StopSequence *string        `json:"stop_sequence"`
	Usage        Usage          `json:"usage"`
}

type contentBlock struct {
	Type  string          `json:"type"`
	Text  *string         `json:"text,omitempty"`
	ID    string          `json:"id,omitempty"`
	Name  string          `json:"name,omitempty"`
	Input json.RawMessage `json:"input,omitempty"`
}

func (s *Server) message(model string, blocks []Block, u Usage) message {
	stop := "end_turn"
	content := make([]contentBlock, 0, len(blocks))
	for _, b := range blocks {
		if b.Tool != "" {
			stop = "tool_use"
			content = append(content, contentBlock{Type: "tool_use", ID: s.nextID("toolu"), Name: b.Tool, Input: b.Input})
			continue
		}
		text := b.Text
		content = append(content, contentBlock{Type: "text", Text: &text})
	}
	return message{ID: s.nextID("msg"), Type: "message", Role: "assistant", Model: model, Content: content,
		StopReason: &stop, Usage: u}
}

// chunks splits s into n pieces or fewer, so that a client must reassemble text and tool input.
func chunks(s string, n int) []string {
	if len(s) <= n {
		if s == "" {
			return nil
		}
		return []string{s}
	}
	size := (len(s) + n - 1) / n
	var out []string
	for len(s) > size {
		out = append(out, s[:size])
		s = s[size:]
	}
	return append(out, s)
}

func (s *Server) stream(w http.ResponseWriter, r *http.Request, msg message, blocks []Block, u Usage) {
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("request-id", s.nextID("req"))
	w.WriteHeader(http.StatusOK)
	fl, _ := w.(http.Flusher)
	send := func(event string, data any) bool {
		b, err := json.Marshal(data)
		if err != nil {
			panic(fmt.Sprintf("anthropictest: marshal %s: %v", event, err))
		}
		if _, err := fmt.Fprintf(w, "event: %s\ndata: %s\n\n", event, b); err != nil {
			return false
		}
		if fl != nil {
			fl.Flush()
		}
		return r.Context().Err() == nil
	}
	start := msg
	start.Content, start.StopReason = []contentBlock{}, nil
	start.Usage = Usage{InputTokens: u.InputTokens, CacheCreationInputTokens: u.CacheCreationInputTokens,
		CacheReadInputTokens: u.CacheReadInputTokens, OutputTokens: 1}
	if !send("message_start", map[string]any{"type": "message_start", "message": start}) {
		return
	}
	for i, b := range msg.Content {
		first := b
		var pieces []string
		var delta func(string) map[string]any
		if b.Type == "tool_use" {
			first.Input = json.RawMessage(`{}`)
			pieces = chunks(string(b.Input), 3)
			delta = func(p string) map[string]any { return map[string]any{"type": "input_json_delta", "partial_json": p} }
		} else {
			empty := ""
			first.Text = &empty
			pieces = chunks(*b.Text, 3)
			delta = func(p string) map[string]any { return map[string]any{"type": "text_delta", "text": p} }
		}
		if !send("content_block_start", map[string]any{"type": "content_block_start", "index": i, "content_block": first}) {
			return
		}
		if i == 0 && !send("ping", map[string]any{"type": "ping"}) {
			return
		}
		for _, p := range pieces {
			if !send("content_block_delta", map[string]any{"type": "content_block_delta", "index": i, "delta": delta(p)}) {
				return
			}
		}
		if !send("content_block_stop", map[string]any{"type": "content_block_stop", "index": i}) {
			return
		}
	}
	if !send("message_delta", map[string]any{"type": "message_delta",
		"delta": map[string]any{"stop_reason": *msg.StopReason, "stop_sequence": nil},
		"usage": map[string]any{"output_tokens": u.OutputTokens}}) {
		return
	}
	send("message_stop", map[string]any{"type": "message_stop"})
}

func errorType(status int) string {
	switch status {
	case http.StatusBadRequest:
		return "invalid_request_error"
	case http.StatusUnauthorized:
		return "authentication_error"
	case http.StatusForbidden:
		return "permission_error"
	case http.StatusNotFound:
		return "not_found_error"
	case http.StatusTooManyRequests:
		return "rate_limit_error"
	case 529:
		return "overloaded_error"
	default:
		return "api_error"
	}
}

func writeError(w http.ResponseWriter, status int, typ, msg string) {
	writeJSON(w, status, map[string]any{"type": "error", "error": map[string]any{"type": typ, "message": msg}})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	var buf bytes.Buffer
	if err := json.NewEncoder(&buf).Encode(v); err != nil {
		panic(fmt.Sprintf("anthropictest: marshal answer: %v", err))
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}
