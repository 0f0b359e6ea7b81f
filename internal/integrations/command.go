package integrations

import (
	"errors"
	"fmt"
	"strings"
)

// HelpText explains the /aetherium chat command (Slack's slash command, Discord's application command).
const HelpText = "Usage:\n" +
	"• `/aetherium run <command>`: run a shell command in a fresh VM\n" +
	"• `/aetherium agent <repo> <prompt>`: start an agent run on a repository\n" +
	"• `/aetherium status <id>`: how a job or run is doing\n" +
	"• `/aetherium help`: this message"

// ChatCommand is a parsed /aetherium text, the same in every chat integration.
type ChatCommand struct {
	Verb    string // run, agent, status, help
	Command string // run
	Repo    string // agent
	Prompt  string // agent
	ID      string // status
}

func (c ChatCommand) String() string {
	switch c.Verb {
	case "run":
		return "run " + c.Command
	case "agent":
		return "agent " + c.Repo + " " + c.Prompt
	case "status":
		return "status " + c.ID
	}
	return c.Verb
}

// ParseChatCommand parses the text after /aetherium.
func ParseChatCommand(text string) (ChatCommand, error) {
	text = strings.TrimSpace(text)
	verb, rest, _ := strings.Cut(text, " ")
	rest = strings.TrimSpace(rest)
	switch strings.ToLower(verb) {
	case "", "help":
		return ChatCommand{Verb: "help"}, nil
	case "run":
		if rest == "" {
			return ChatCommand{}, errors.New("`run` needs a command")
		}
		return ChatCommand{Verb: "run", Command: rest}, nil
	case "agent":
		repo, prompt, _ := strings.Cut(rest, " ")
		prompt = strings.TrimSpace(prompt)
		if repo == "" || prompt == "" {
			return ChatCommand{}, errors.New("`agent` needs a repository and a prompt")
		}
		return ChatCommand{Verb: "agent", Repo: repo, Prompt: prompt}, nil
	case "status":
		if rest == "" || strings.ContainsAny(rest, " \t") {
			return ChatCommand{}, errors.New("`status` needs one id")
		}
		return ChatCommand{Verb: "status", ID: rest}, nil
	}
	return ChatCommand{}, fmt.Errorf("unknown subcommand %q", verb)
}
