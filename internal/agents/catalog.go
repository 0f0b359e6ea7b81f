// Package agents is the catalog of coding agents a run can start: what each one needs in its VM (tools, a guest
// user), how its command line is made from a run (prompt, model, max turns), how its output is read, and which
// model APIs it reaches through the worker's credential proxy. The catalog is data (catalog.yaml, embedded; the
// setting agent_catalog adds entries), so a new agent needs no code.
package agents

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Output formats of an agent's standard output.
const (
	// OutputClaudeStreamJSON is Claude Code's --output-format stream-json: one JSON object per line (system, assistant,
	// user, result events), the last of which is {"type":"result", ...}.
	OutputClaudeStreamJSON = "claude-stream-json"
	// OutputText is plain text: every line is kept as an output event; the last lines are the result.
	OutputText = "text"
)

// Model APIs an agent may reach through the credential proxy.
const (
	ProxyAnthropic = "anthropic"
	ProxyOpenAI    = "openai"
)

// DefaultAgent is the agent of a run that names none.
const DefaultAgent = "claude-code"

// ErrUnknownAgent is returned (wrapped, with the known names) for a name the catalog lacks.
var ErrUnknownAgent = errors.New("unknown agent")

// ErrInvalidCatalog is returned (wrapped) for a catalog file that does not parse or contradicts itself.
var ErrInvalidCatalog = errors.New("invalid agent catalog")

// Agent is one catalog entry.
type Agent struct {
	Name            string            `yaml:"-" json:"name"`
	Description     string            `yaml:"description" json:"description,omitempty"`
	Tools           []string          `yaml:"tools" json:"tools,omitempty"`
	User            string            `yaml:"user" json:"user,omitempty"`
	Command         []string          `yaml:"command" json:"command"`
	ModelArgs       []string          `yaml:"model_args" json:"model_args,omitempty"`
	MaxTurnsArgs    []string          `yaml:"max_turns_args" json:"max_turns_args,omitempty"`
	DefaultMaxTurns int               `yaml:"default_max_turns" json:"default_max_turns,omitempty"`
	Output          string            `yaml:"output" json:"output"`
	Proxy           []string          `yaml:"proxy" json:"proxy,omitempty"`
	Env             map[string]string `yaml:"env" json:"env,omitempty"`
}

// Catalog is a set of agents by name.
type Catalog struct{ agents map[string]*Agent }

//go:embed catalog.yaml
var builtin []byte

type file struct {
	Agents map[string]*Agent `yaml:"agents"`
}

// Default returns the built-in catalog.
func Default() *Catalog {
	c, err := Parse(builtin, nil)
	if err != nil {
		panic(fmt.Sprintf("built-in agent catalog: %v", err)) // a build defect, caught by the package's tests
	}
	return c
}

// Load returns the built-in catalog with the agents of the YAML file at path added (path "" adds nothing).
func Load(path string) (*Catalog, error) {
	if path == "" {
		return Default(), nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("agent catalog: %w", err)
	}
	c, err := Parse(b, Default())
	if err != nil {
		return nil, fmt.Errorf("agent catalog %s: %w", path, err)
	}
	return c, nil
}

var (
	nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)
	userRE = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)
	envRE  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,255}$`)
)

// Parse reads a catalog file; its entries are added to base (nil: none).
func Parse(b []byte, base *Catalog) (*Catalog, error) {
	var f file
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidCatalog, err)
	}
	c := &Catalog{agents: map[string]*Agent{}}
	if base != nil {
		for k, v := range base.agents {
			c.agents[k] = v
		}
	}
	for name, a := range f.Agents {
		if a == nil {
			return nil, fmt.Errorf("%w: agent %q is empty", ErrInvalidCatalog, name)
		}
		a.Name = name
		if err := a.check(); err != nil {
			return nil, fmt.Errorf("%w: agent %q: %v", ErrInvalidCatalog, name, err)
		}
		c.agents[name] = a
	}
	if len(c.agents) == 0 {
		return nil, fmt.Errorf("%w: no agents", ErrInvalidCatalog)
	}
	return c, nil
}

func (a *Agent) check() error {
	if !nameRE.MatchString(a.Name) {
		return errors.New("a name is lower-case letters, digits, '.', '_' or '-'")
	}
	if len(a.Command) == 0 || strings.TrimSpace(a.Command[0]) == "" || strings.Contains(a.Command[0], "{{") {
		return errors.New("command must start with a program")
	}
	if !slices.ContainsFunc(a.Command, func(s string) bool { return strings.Contains(s, "{{prompt}}") }) {
		return errors.New("command must pass {{prompt}} somewhere")
	}
	for _, args := range [][]string{a.Command, a.ModelArgs, a.MaxTurnsArgs} {
		for _, s := range args {
			if strings.ContainsRune(s, 0) {
				return errors.New("arguments must not contain NUL")
			}
			for rest := s; ; {
				i := strings.Index(rest, "{{")
				if i < 0 {
					break
				}
				j := strings.Index(rest[i:], "}}")
				if j < 0 {
					return fmt.Errorf("unclosed placeholder in %q", s)
				}
				switch ph := rest[i+2 : i+j]; ph {
				case "prompt", "model", "max_turns":
				default:
					return fmt.Errorf("unknown placeholder {{%s}} (known: prompt, model, max_turns)", ph)
				}
				rest = rest[i+j+2:]
			}
		}
	}
	if a.User != "" && a.User != "root" && !userRE.MatchString(a.User) {
		return fmt.Errorf("user %q is not a user name", a.User)
	}
	switch a.Output {
	case OutputClaudeStreamJSON, OutputText:
	case "":
		a.Output = OutputText
	default:
		return fmt.Errorf("output %q: want %s or %s", a.Output, OutputClaudeStreamJSON, OutputText)
	}
	for _, p := range a.Proxy {
		if p != ProxyAnthropic && p != ProxyOpenAI {
			return fmt.Errorf("proxy %q: want %s or %s", p, ProxyAnthropic, ProxyOpenAI)
		}
	}
	if a.DefaultMaxTurns < 0 {
		return errors.New("default_max_turns must not be negative")
	}
	for k, v := range a.Env {
		if !envRE.MatchString(k) || strings.ContainsRune(v, 0) {
			return fmt.Errorf("env %q is not a variable name, or its value contains NUL", k)
		}
	}
	return nil
}

// Get returns the named agent, or an error wrapping ErrUnknownAgent that lists the known ones.
func (c *Catalog) Get(name string) (*Agent, error) {
	if a, ok := c.agents[name]; ok {
		return a, nil
	}
	return nil, fmt.Errorf("%w %q (known agents: %s)", ErrUnknownAgent, name, strings.Join(c.Names(), ", "))
}

// Names returns the agents' names, sorted.
func (c *Catalog) Names() []string {
	out := make([]string, 0, len(c.agents))
	for n := range c.agents {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// All returns every agent, by name.
func (c *Catalog) All() []*Agent {
	out := make([]*Agent, 0, len(c.agents))
	for _, n := range c.Names() {
		out = append(out, c.agents[n])
	}
	return out
}

// Invocation is what a run asks of its agent.
type Invocation struct {
	Prompt   string
	Model    string
	MaxTurns int
}

// Argv returns the agent's command line for inv: each placeholder is replaced inside its argv element, so a
// prompt is one argument whatever it contains.
func (a *Agent) Argv(inv Invocation) []string {
	r := strings.NewReplacer("{{prompt}}", inv.Prompt, "{{model}}", inv.Model, "{{max_turns}}", strconv.Itoa(a.maxTurns(inv)))
	var out []string
	add := func(args []string) {
		for _, s := range args {
			out = append(out, r.Replace(s))
		}
	}
	add(a.Command)
	if inv.Model != "" {
		add(a.ModelArgs)
	}
	if a.maxTurns(inv) > 0 {
		add(a.MaxTurnsArgs)
	}
	return out
}

func (a *Agent) maxTurns(inv Invocation) int {
	if inv.MaxTurns > 0 {
		return inv.MaxTurns
	}
	return a.DefaultMaxTurns
}

// UsesProxy reports whether the agent reaches model API p through the credential proxy.
func (a *Agent) UsesProxy(p string) bool { return slices.Contains(a.Proxy, p) }
