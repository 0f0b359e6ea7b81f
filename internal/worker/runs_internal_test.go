package worker

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/aetherium/aetherium/internal/agents"
	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/secrets"
)

// collect is a transcript that keeps its events in memory (no store): add is all agentOutput uses.
func collectingTranscript(scrub *secrets.Scrubber) (*transcript, *[]*model.RunEvent) {
	t := &transcript{scrub: scrub, kick: make(chan struct{}, 1)}
	return t, &t.pending
}

func TestAgentOutputReadsClaudeStreamJSON(t *testing.T) {
	const secret = "sk-owner-secret-value-123"
	tr, evs := collectingTranscript(secrets.NewScrubber(secret))
	o := newAgentOutput(tr, agents.OutputClaudeStreamJSON)
	lines := []string{
		`{"type":"system","subtype":"init","cwd":"/w","tools":["Bash"]}`,
		`{"type":"assistant","message":{"content":[{"type":"text","text":"the key is ` + secret + `"}]}}`,
		`not json at all`,
		`{"type":"result","subtype":"success","is_error":false,"num_turns":3,"result":"Done.","total_cost_usd":0.25}`,
	}
	stream := strings.Join(lines, "\n") + "\n"
	// Written in awkward pieces: lines split across writes, several lines in one write.
	w := o.stdout()
	for _, piece := range []string{stream[:10], stream[10:90], stream[90:91], stream[91:]} {
		if _, err := w.Write([]byte(piece)); err != nil {
			t.Fatal(err)
		}
	}
	o.stderr().Write([]byte("warning: something\nlast words " + secret))
	o.finish()

	var types []string
	for _, e := range *evs {
		types = append(types, e.Type)
		if strings.Contains(string(e.Data), secret) {
			t.Fatalf("event %s shows the secret: %s", e.Type, e.Data)
		}
		if !json.Valid(e.Data) {
			t.Fatalf("event %s is not JSON: %s", e.Type, e.Data)
		}
	}
	want := []string{"agent", "agent", "output", "agent", "stderr", "stderr"}
	if strings.Join(types, ",") != strings.Join(want, ",") {
		t.Fatalf("event types %v, want %v", types, want)
	}
	res := o.result()
	if res.Text != "Done." || res.IsError || res.Subtype != "success" || res.Turns != 3 || res.AgentCostUSD == nil || *res.AgentCostUSD != 0.25 {
		t.Fatalf("result: %+v", res)
	}
	if !strings.Contains(res.StderrTail, "last words") || strings.Contains(res.StderrTail, secret) {
		t.Fatalf("stderr tail: %q", res.StderrTail)
	}
}

func TestAgentOutputWithoutResultIsAnError(t *testing.T) {
	tr, _ := collectingTranscript(nil)
	o := newAgentOutput(tr, agents.OutputClaudeStreamJSON)
	o.stdout().Write([]byte(`{"type":"system","subtype":"init"}` + "\n"))
	o.finish()
	if r := o.result(); !r.IsError || r.Subtype != "no_result" {
		t.Fatalf("a stream without its result event: %+v", r)
	}
	// A text agent's result is its last lines.
	tr, _ = collectingTranscript(nil)
	o = newAgentOutput(tr, agents.OutputText)
	o.stdout().Write([]byte("one\ntwo\nthree"))
	o.finish()
	if r := o.result(); r.IsError || r.Text != "one\ntwo\nthree" {
		t.Fatalf("text result: %+v", r)
	}
}

func TestAgentOutputCutsHugeEvents(t *testing.T) {
	tr, evs := collectingTranscript(nil)
	o := newAgentOutput(tr, agents.OutputClaudeStreamJSON)
	big := `{"type":"user","message":{"content":"` + strings.Repeat("x", maxRunEventBytes+10) + `"}}`
	o.stdout().Write([]byte(big + "\n"))
	o.finish()
	if len(*evs) != 1 {
		t.Fatalf("%d events", len(*evs))
	}
	var cut struct {
		Type  string `json:"type"`
		Cut   bool   `json:"aetherium_cut"`
		Bytes int    `json:"bytes"`
	}
	if err := json.Unmarshal((*evs)[0].Data, &cut); err != nil || !cut.Cut || cut.Type != "user" || cut.Bytes != len(big) {
		t.Fatalf("cut event: %s (%v)", (*evs)[0].Data[:200], err)
	}
}

func TestLineSplitterCutsEndlessLines(t *testing.T) {
	var got []int
	var cuts int
	l := &lineSplitter{line: func(b []byte, cut bool) {
		got = append(got, len(b))
		if cut {
			cuts++
		}
	}}
	chunk := []byte(strings.Repeat("y", 1<<20))
	for i := 0; i < 9; i++ {
		l.Write(chunk)
	}
	l.Write([]byte("\nz\r\n"))
	l.flush()
	if cuts != 1 || got[len(got)-1] != 1 {
		t.Fatalf("lines %v, cuts %d", got, cuts)
	}
}

func TestCommitMessage(t *testing.T) {
	r := &model.Run{ID: "0b5e1c3e-0000-4000-8000-000000000000", Spec: model.RunSpec{Agent: "claude-code",
		Prompt: "  " + strings.Repeat("Fix the flaky test ", 10) + "\nand more"}}
	m := commitMessage(r)
	first, rest, _ := strings.Cut(m, "\n")
	if len(first) > 72 || !strings.HasSuffix(first, "...") || !strings.Contains(rest, r.ID) {
		t.Fatalf("commit message: %q", m)
	}
}
