package credproxy

import (
	"math"
	"testing"
)

func TestCostUSD(t *testing.T) {
	u := Usage{Provider: "anthropic", Model: "claude-sonnet-4-5-20250929", InputTokens: 1_000_000, OutputTokens: 100_000,
		CacheCreationInputTokens: 200_000, CacheReadInputTokens: 1_000_000}
	got, ok := CostUSD(u)
	want := 3 + 1.5 + 0.75 + 0.3
	if !ok || math.Abs(got-want) > 1e-9 {
		t.Fatalf("sonnet: %v %v, want %v", got, ok, want)
	}
	// The longest prefix wins: opus-4-5 is not priced as opus-4.
	if got, _ := CostUSD(Usage{Provider: "anthropic", Model: "claude-opus-4-5", OutputTokens: 1_000_000}); got != 25 {
		t.Fatalf("opus 4.5: %v", got)
	}
	for _, u := range []Usage{{Provider: "anthropic", Model: "claude-test"}, {Provider: "openai", Model: "gpt-4o"}} {
		if _, ok := CostUSD(u); ok {
			t.Fatalf("%+v has a price", u)
		}
	}
}
