package credproxy

import "strings"

// price is a model's list price in US dollars per million tokens. Cache writes cost 1.25 times the input price
// and cache reads 0.1 times (Anthropic's 5-minute cache).
type price struct{ input, output float64 }

// anthropicPrices are Anthropic's published list prices, by model name prefix (longest match wins). A model not
// listed has no cost estimate (its usage is still counted).
var anthropicPrices = map[string]price{
	"claude-opus-4-5":   {5, 25},
	"claude-opus-4-1":   {15, 75},
	"claude-opus-4":     {15, 75},
	"claude-sonnet-4":   {3, 15},
	"claude-3-7-sonnet": {3, 15},
	"claude-3-5-sonnet": {3, 15},
	"claude-haiku-4":    {1, 5},
	"claude-3-5-haiku":  {0.8, 4},
	"claude-3-haiku":    {0.25, 1.25},
}

// CostUSD estimates what a response cost at list prices; ok is false for a model whose price is unknown.
func CostUSD(u Usage) (cost float64, ok bool) {
	if u.Provider != "anthropic" {
		return 0, false
	}
	best, bestLen := price{}, 0
	for prefix, p := range anthropicPrices {
		if strings.HasPrefix(u.Model, prefix) && len(prefix) > bestLen {
			best, bestLen = p, len(prefix)
		}
	}
	if bestLen == 0 {
		return 0, false
	}
	const m = 1e6
	return float64(u.InputTokens)*best.input/m + float64(u.OutputTokens)*best.output/m +
		float64(u.CacheCreationInputTokens)*best.input*1.25/m + float64(u.CacheReadInputTokens)*best.input*0.1/m, true
}
