package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"

	"github.com/aetherium/aetherium/pkg/client"
)

// A run's transcript, rendered for people: one line per step rather than the raw events. Everything shown comes
// from the guest (the agent's words, its tools' output), so it is cleaned of control characters first: a hostile
// agent must not be able to move the cursor, retitle the terminal or hide lines.

// Limits of the rendering.
const (
	maxShownLine     = 200 // runes of one rendered line
	maxShownInput    = 120 // runes of a tool input shown as JSON
	maxResultLines   = 3   // lines shown of a tool's result
	ansiDim, ansiOff = "\x1b[2m", "\x1b[0m"
)

// transcript renders run events as readable lines.
type transcript struct {
	w   io.Writer
	dim bool // dim the lines of lesser interest (stderr), on a terminal
}

func (t *transcript) line(s string) { fmt.Fprintln(t.w, s) }

func (t *transcript) dimmed(s string) {
	if t.dim {
		s = ansiDim + s + ansiOff
	}
	t.line(s)
}

// event renders one event of a run's transcript.
func (t *transcript) event(ev client.RunEvent) {
	switch ev.Type {
	case "status":
		var d struct{ Status, Message string }
		_ = json.Unmarshal(ev.Data, &d)
		if d.Message == "" {
			t.line("· " + clean(d.Status))
		} else {
			t.line("· " + clean(d.Status) + ": " + clean(d.Message))
		}
	case "output":
		t.line(clean(textOf(ev.Data)))
	case "stderr":
		t.dimmed("stderr: " + clean(textOf(ev.Data)))
	case "agent":
		t.agentEvent(ev.Data)
	case "end":
		var end client.RunEnd
		_ = json.Unmarshal(ev.Data, &end)
		if end.Error != "" {
			t.line("· " + clean(end.Status) + ": " + clean(end.Error))
		} else {
			t.line("· " + clean(end.Status))
		}
	}
	// Other types: a newer server's; nothing to say about them.
}

func textOf(data json.RawMessage) string {
	var d struct{ Text string }
	if json.Unmarshal(data, &d) != nil {
		return string(data)
	}
	return d.Text
}

// claudeEvent is the part of a line of claude-code's stream-json that is rendered.
type claudeEvent struct {
	Type    string `json:"type"`
	Subtype string `json:"subtype"`
	Model   string `json:"model"`
	Cwd     string `json:"cwd"`
	Tools   []any  `json:"tools"`
	Message struct {
		Content json.RawMessage `json:"content"`
	} `json:"message"`
	// result
	IsError  bool    `json:"is_error"`
	Result   string  `json:"result"`
	NumTurns int     `json:"num_turns"`
	CostUSD  float64 `json:"total_cost_usd"`
}

type contentBlock struct {
	Type    string          `json:"type"`
	Text    string          `json:"text"`
	Name    string          `json:"name"`
	Input   json.RawMessage `json:"input"`
	Content json.RawMessage `json:"content"`
	IsError bool            `json:"is_error"`
}

func (t *transcript) agentEvent(data json.RawMessage) {
	var e claudeEvent
	if err := json.Unmarshal(data, &e); err != nil || e.Type == "" {
		t.line(clean(compactJSON(data))) // an agent of another output format
		return
	}
	switch e.Type {
	case "system":
		if e.Subtype == "init" {
			t.line(fmt.Sprintf("· agent session: model %s, %d tools, in %s", orDash(clean(e.Model)), len(e.Tools), orDash(clean(e.Cwd))))
		}
	case "assistant":
		for _, b := range blocks(e.Message.Content) {
			switch b.Type {
			case "text":
				if s := strings.TrimSpace(clean(b.Text)); s != "" {
					t.line(s)
				}
			case "tool_use":
				t.line("→ " + toolLine(clean(b.Name), b.Input))
			}
		}
	case "user":
		for _, b := range blocks(e.Message.Content) {
			if b.Type == "tool_result" {
				t.toolResult(b)
			}
		}
	case "result":
		head := "── result ──"
		if e.IsError || (e.Subtype != "" && e.Subtype != "success") {
			head = "── result: error (" + orDash(clean(e.Subtype)) + ") ──"
		}
		t.line("")
		t.line(head)
		if s := strings.TrimSpace(clean(e.Result)); s != "" {
			t.line(s)
		}
	}
}

// blocks reads a message's content: an array of blocks, or a plain string (one text block).
func blocks(raw json.RawMessage) []contentBlock {
	var bs []contentBlock
	if json.Unmarshal(raw, &bs) == nil {
		return bs
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return []contentBlock{{Type: "text", Text: s}}
	}
	return nil
}

// toolLine is how a tool call is shown: the argument that says what it does for the common tools, else the input
// as short JSON.
func toolLine(name string, input json.RawMessage) string {
	var in map[string]any
	_ = json.Unmarshal(input, &in)
	str := func(k string) string { s, _ := in[k].(string); return clean(s) }
	switch name {
	case "Bash":
		if cmd := str("command"); cmd != "" {
			first, _, more := strings.Cut(strings.TrimSpace(cmd), "\n")
			if more {
				first += " …"
			}
			return "Bash: " + truncate(first, maxShownLine)
		}
	case "Write", "Edit", "MultiEdit", "Read":
		if p := str("file_path"); p != "" {
			return name + ": " + truncate(p, maxShownLine)
		}
	case "NotebookEdit":
		if p := str("notebook_path"); p != "" {
			return name + ": " + truncate(p, maxShownLine)
		}
	}
	return name + " " + truncate(clean(compactJSON(input)), maxShownInput)
}

// toolResult shows the first lines of a tool's result, marking errors.
func (t *transcript) toolResult(b contentBlock) {
	var text string
	for _, c := range blocks(b.Content) {
		switch c.Type {
		case "text":
			text += c.Text
		case "image":
			text += "[image]"
		}
	}
	var lines []string
	for l := range strings.SplitSeq(strings.TrimSpace(clean(text)), "\n") {
		if l = strings.TrimRight(l, " \t"); l != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) == 0 {
		lines = []string{"(no output)"}
	}
	prefix := "  ← "
	if b.IsError {
		prefix = "  ← error: "
	}
	for i, l := range lines {
		if i == maxResultLines {
			t.line(fmt.Sprintf("    … %d more lines", len(lines)-i))
			break
		}
		t.line(prefix + truncate(l, maxShownLine))
		prefix = "    "
	}
}

// clean makes text from the guest safe to print: no control characters but newlines and tabs (ESC, CSI, the C1
// controls, carriage returns, backspaces), and valid UTF-8.
func clean(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	return strings.Map(func(r rune) rune {
		switch {
		case r == '\n' || r == '\t':
			return r
		case r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0):
			return -1
		case r == '\u2028' || r == '\u2029' || (r >= '\u202a' && r <= '\u202e') || (r >= '\u2066' && r <= '\u2069'):
			return -1 // line separators and bidirectional overrides, which can disguise what a line says
		}
		return r
	}, s)
}

// truncate shortens s to n runes, marking the cut.
func truncate(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}
