package prep

import (
	"encoding/json"
	"testing"

	"github.com/aetherium/aetherium/internal/store"
)

func TestCleanJSON(t *testing.T) {
	cases := []struct{ in, want string }{
		{`{"a":"b"}`, `{"a":"b"}`},
		{`{"a":"x\u0000y"}`, `{"a":"x\ufffdy"}`},
		{`{"a":"\\u0000"}`, `{"a":"\\u0000"}`},   // an escaped backslash, then plain text
		{`{"a":"\\\u0000"}`, `{"a":"\\\ufffd"}`}, // an escaped backslash, then a NUL escape
		{`["\u0000\u0000", "\u00001"]`, `["\ufffd\ufffd", "\ufffd1"]`},
		{"{\"a\":\"\xff\"}", `{"a":"` + "\uFFFD" + `"}`},
	}
	for _, c := range cases {
		got := cleanJSON(json.RawMessage(c.in))
		if string(got) != c.want {
			t.Errorf("cleanJSON(%q) = %q, want %q", c.in, got, c.want)
		}
		if !json.Valid(got) {
			t.Errorf("cleanJSON(%q) = %q is not json", c.in, got)
		}
	}
}

func TestLimit(t *testing.T) {
	for in, want := range map[int]int{-1: 50, 0: 50, 1: 1, 500: 500, 501: 500} {
		if got := Limit(store.Page{Limit: in}); got != want {
			t.Errorf("Limit(%d) = %d, want %d", in, got, want)
		}
	}
}
