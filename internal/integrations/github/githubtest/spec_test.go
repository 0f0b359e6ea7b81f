package githubtest

import "testing"

// TestSpecRefuses shows the fake's validation can fail: each request breaks GitHub's description in one way.
func TestSpecRefuses(t *testing.T) {
	s := LoadSpec(t)
	if err := s.Validate("POST", "/repos/o/r/issues/comments/1/reactions", map[string]any{"content": "eyes"}); err != nil {
		t.Fatalf("a valid reaction was refused: %v", err)
	}
	for name, c := range map[string]struct {
		method, path string
		body         map[string]any
	}{
		"unknown path":      {"POST", "/repos/o/r/nope", nil},
		"wrong method":      {"PUT", "/repos/o/r/issues/comments/1/reactions", map[string]any{"content": "eyes"}},
		"bad enum":          {"POST", "/repos/o/r/issues/comments/1/reactions", map[string]any{"content": "wave"}},
		"missing required":  {"POST", "/repos/o/r/check-runs", map[string]any{"name": "x"}},
		"wrong type":        {"POST", "/repos/o/r/issues/1/comments", map[string]any{"body": 7}},
		"unknown field":     {"POST", "/repos/o/r/issues/1/comments", map[string]any{"body": "x", "bdy": "y"}},
		"completed, no why": {"PATCH", "/repos/o/r/check-runs/1", map[string]any{"status": "completed"}},
	} {
		if err := s.Validate(c.method, c.path, c.body); err == nil {
			t.Errorf("%s: %s %s %v was accepted", name, c.method, c.path, c.body)
		}
	}
}
