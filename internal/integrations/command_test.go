package integrations

import (
	"strings"
	"testing"
)

func TestParseChatCommand(t *testing.T) {
	for text, want := range map[string]ChatCommand{
		"":                               {Verb: "help"},
		"  help ":                        {Verb: "help"},
		"run echo hi":                    {Verb: "run", Command: "echo hi"},
		"RUN   ls -l ":                   {Verb: "run", Command: "ls -l"},
		"agent org/repo fix the tests":   {Verb: "agent", Repo: "org/repo", Prompt: "fix the tests"},
		"agent  github.com/o/r   prompt": {Verb: "agent", Repo: "github.com/o/r", Prompt: "prompt"},
		"status job-1":                   {Verb: "status", ID: "job-1"},
	} {
		got, err := ParseChatCommand(text)
		if err != nil || got != want {
			t.Errorf("ParseChatCommand(%q) = %+v, %v; want %+v", text, got, err, want)
		}
	}
	for _, bad := range []string{"run", "run   ", "agent", "agent org/repo", "status", "status a b", "status a\tb", "frobnicate x"} {
		if got, err := ParseChatCommand(bad); err == nil || err.Error() == "" {
			t.Errorf("ParseChatCommand(%q) = %+v, %v; want an error that says why", bad, got, err)
		}
	}
}

// FuzzParseCommand: the /aetherium text of Slack and Discord (anyone in a channel types it) never panics; what
// parses is one of the verbs with the fields it needs, and its String parses back to the same command.
func FuzzParseCommand(f *testing.F) {
	for _, s := range []string{"", "help", "run echo hi", "RUN  ls -l ", "agent org/repo fix the tests",
		"agent https://github.com/o/r.git  do it\nplease", "status job-1", "status a b", "run", "agent x",
		"run\techo", "frobnicate", "run \u00a0x", "status \xff", "agent r\u2003 p"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		cmd, err := ParseChatCommand(text)
		if err != nil {
			if err.Error() == "" || cmd != (ChatCommand{}) {
				t.Fatalf("%q: error %q with command %+v", text, err, cmd)
			}
			return
		}
		switch cmd.Verb {
		case "help":
			if cmd != (ChatCommand{Verb: "help"}) {
				t.Fatalf("%q: help with fields %+v", text, cmd)
			}
		case "run":
			if cmd.Command == "" || cmd.Command != strings.TrimSpace(cmd.Command) {
				t.Fatalf("%q: run of %q", text, cmd.Command)
			}
		case "agent":
			if cmd.Repo == "" || strings.Contains(cmd.Repo, " ") || cmd.Prompt == "" || cmd.Prompt != strings.TrimSpace(cmd.Prompt) {
				t.Fatalf("%q: agent %+v", text, cmd)
			}
		case "status":
			if cmd.ID == "" || strings.ContainsAny(cmd.ID, " \t") {
				t.Fatalf("%q: status of %q", text, cmd.ID)
			}
		default:
			t.Fatalf("%q: parsed to unknown verb %q", text, cmd.Verb)
		}
		again, err := ParseChatCommand(cmd.String())
		if err != nil || again != cmd {
			t.Fatalf("%q parsed to %+v, whose String %q parses to %+v, %v", text, cmd, cmd.String(), again, err)
		}
	})
}

func TestAllowsCommand(t *testing.T) {
	open := &Link{Commands: true}
	none := &Link{Commands: false, AllowedCommands: []string{"make test"}}
	some := &Link{Commands: true, AllowedCommands: []string{"make test", "npm run *", " go test * "}}
	for _, c := range []struct {
		l    *Link
		cmd  string
		want bool
	}{
		{open, "rm -rf /", true},
		{none, "make test", false},
		{some, "make test", true},
		{some, " make test ", true},
		{some, "make test && curl evil", false},
		{some, "make test;id", false},
		{some, "make tests", false},
		{some, "npm run", true},
		{some, "npm run lint", true},
		{some, "npm run lint --fix=true ./src", true},
		{some, "npm run lint; id", false},
		{some, "npm run $(id)", false},
		{some, "npm run `id`", false},
		{some, "npm run lint > /etc/passwd", false},
		{some, "npm run 'x'", false},
		{some, "npm running", false},
		{some, "go test ./...", true},
		{some, "go test -run X | tee", false},
	} {
		if got := c.l.AllowsCommand(c.cmd); got != c.want {
			t.Errorf("%v allows %q = %v, want %v", c.l.AllowedCommands, c.cmd, got, c.want)
		}
	}
	if msg := some.RefuseCommand(); !strings.Contains(msg, "`make test`") || !strings.Contains(msg, "`npm run *`") {
		t.Errorf("refusal %q does not list the allowed commands", msg)
	}
}
