package agents

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestDefaultCatalogHasClaudeCode(t *testing.T) {
	c := Default()
	a, err := c.Get(DefaultAgent)
	if err != nil {
		t.Fatal(err)
	}
	if a.Output != OutputClaudeStreamJSON || !a.UsesProxy(ProxyAnthropic) || a.User == "root" || a.User == "" {
		t.Fatalf("claude-code entry: %+v", a)
	}
	argv := a.Argv(Invocation{Prompt: "fix it; rm -rf / $(whoami)", Model: "claude-sonnet-4-5", MaxTurns: 7})
	want := []string{"claude", "-p", "fix it; rm -rf / $(whoami)", "--output-format", "stream-json", "--verbose",
		"--dangerously-skip-permissions", "--model", "claude-sonnet-4-5", "--max-turns", "7"}
	if !slices.Equal(argv, want) {
		t.Fatalf("argv:\n got %q\nwant %q", argv, want)
	}
	// No model: no --model; no max_turns: the agent's default.
	argv = a.Argv(Invocation{Prompt: "p"})
	if slices.Contains(argv, "--model") || argv[len(argv)-1] != "50" {
		t.Fatalf("defaults: %q", argv)
	}
}

func TestUnknownAgentNamesKnownOnes(t *testing.T) {
	_, err := Default().Get("devin")
	if !errors.Is(err, ErrUnknownAgent) || !strings.Contains(err.Error(), "claude-code") {
		t.Fatalf("got %v", err)
	}
}

func TestLoadAddsAndReplaces(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agents.yaml")
	os.WriteFile(path, []byte(`agents:
  aider:
    tools: [git, python3]
    command: [aider, --yes-always, --message, "{{prompt}}"]
    model_args: [--model, "{{model}}"]
    proxy: [openai]
`), 0o600)
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Names(); !slices.Equal(got, []string{"aider", "claude-code"}) {
		t.Fatalf("names: %v", got)
	}
	a, _ := c.Get("aider")
	if a.Output != OutputText || !a.UsesProxy(ProxyOpenAI) {
		t.Fatalf("aider: %+v", a)
	}
	if got := a.Argv(Invocation{Prompt: "x"}); !slices.Equal(got, []string{"aider", "--yes-always", "--message", "x"}) {
		t.Fatalf("argv: %q", got)
	}
}

func TestInvalidCatalogs(t *testing.T) {
	for name, doc := range map[string]string{
		"no prompt":           "agents:\n  a:\n    command: [echo, hi]\n",
		"placeholder program": "agents:\n  a:\n    command: [\"{{prompt}}\"]\n",
		"unknown placeholder": "agents:\n  a:\n    command: [x, \"{{prompt}}\", \"{{secret}}\"]\n",
		"unclosed":            "agents:\n  a:\n    command: [x, \"{{prompt\"]\n",
		"bad output":          "agents:\n  a:\n    command: [x, \"{{prompt}}\"]\n    output: xml\n",
		"bad proxy":           "agents:\n  a:\n    command: [x, \"{{prompt}}\"]\n    proxy: [gemini]\n",
		"bad name":            "agents:\n  A B:\n    command: [x, \"{{prompt}}\"]\n",
		"unknown field":       "agents:\n  a:\n    command: [x, \"{{prompt}}\"]\n    shell: true\n",
		"bad user":            "agents:\n  a:\n    command: [x, \"{{prompt}}\"]\n    user: \"a b\"\n",
		"empty":               "agents: {}\n",
	} {
		if _, err := Parse([]byte(doc), nil); !errors.Is(err, ErrInvalidCatalog) {
			t.Errorf("%s: got %v, want ErrInvalidCatalog", name, err)
		}
	}
}
