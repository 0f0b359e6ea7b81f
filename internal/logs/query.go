package logs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"
)

// QueryRangePath is Loki's range query endpoint, relative to the query URL.
const QueryRangePath = "/loki/api/v1/query_range"

// MaxQueryLimit bounds the entries one query returns.
const MaxQueryLimit = 5000

// LogQL builds the query of f. Every value is a quoted LogQL string (Go syntax, which LogQL's parser unquotes),
// never spliced: user text cannot change the query's structure. Ids filter structured metadata; Contains is a line
// filter. An empty OwnerID is refused: every query is owner-scoped.
func LogQL(service string, f Filter) (string, error) {
	if f.OwnerID == "" {
		return "", errors.New("logs: a query needs an owner")
	}
	if service == "" {
		service = "aetherium"
	}
	var b strings.Builder
	b.WriteString(`{service=` + strconv.Quote(service))
	if f.Kind != "" {
		b.WriteString(`, kind=` + strconv.Quote(f.Kind))
	}
	b.WriteString(`}`)
	if f.Contains != "" {
		b.WriteString(` |= ` + strconv.Quote(f.Contains))
	}
	for _, m := range []struct{ key, v string }{{MetaOwnerID, f.OwnerID}, {MetaVMID, f.VMID},
		{MetaExecutionID, f.ExecutionID}, {MetaRunID, f.RunID}, {MetaTaskID, f.TaskID}} {
		if m.v != "" {
			b.WriteString(` | ` + m.key + `=` + strconv.Quote(m.v))
		}
	}
	return b.String(), nil
}

// LokiQuerier answers queries from Loki's query_range API.
type LokiQuerier struct {
	URL                string // Loki's base URL (query frontend); QueryRangePath is appended
	Service            string
	Tenant             string
	Username, Password string
	BearerToken        string
	HTTPClient         *http.Client
}

// Query runs f over [Since, Until] (default: the last hour), newest first, at most Limit entries.
func (q *LokiQuerier) Query(ctx context.Context, f Filter) ([]Entry, error) {
	expr, err := LogQL(q.Service, f)
	if err != nil {
		return nil, err
	}
	until := f.Until
	if until.IsZero() {
		until = time.Now()
	}
	since := f.Since
	if since.IsZero() {
		since = until.Add(-time.Hour)
	}
	limit := f.Limit
	if limit <= 0 || limit > MaxQueryLimit {
		limit = min(max(limit, 100), MaxQueryLimit)
	}
	v := url.Values{"query": {expr}, "start": {strconv.FormatInt(since.UnixNano(), 10)},
		"end": {strconv.FormatInt(until.UnixNano(), 10)}, "limit": {strconv.Itoa(limit)}, "direction": {"backward"}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(q.URL, "/")+QueryRangePath+"?"+v.Encode(), nil)
	if err != nil {
		return nil, err
	}
	if q.Tenant != "" {
		req.Header.Set("X-Scope-OrgID", q.Tenant)
	}
	switch {
	case q.BearerToken != "":
		req.Header.Set("Authorization", "Bearer "+q.BearerToken)
	case q.Username != "":
		req.SetBasicAuth(q.Username, q.Password)
	}
	client := q.HTTPClient
	if client == nil {
		client = &http.Client{Timeout: 30 * time.Second}
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("loki query: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("loki query: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, &StatusError{Code: resp.StatusCode, Body: strings.TrimSpace(string(body[:min(len(body), 512)]))}
	}
	entries, err := ParseQueryRange(body)
	if err != nil {
		return nil, err
	}
	if len(entries) > limit {
		entries = entries[:limit]
	}
	return entries, nil
}

// ParseQueryRange decodes a query_range response of resultType "streams", newest first. A value's optional third
// element is its structured metadata: a flat object, or (with X-Loki-Response-Encoding-Flags: categorize-labels)
// {"structuredMetadata":{...},"parsed":{...}}. Stream labels beyond the bounded set are metadata as well (Loki
// without categorize-labels folds structured metadata into the stream).
func ParseQueryRange(body []byte) ([]Entry, error) {
	var r struct {
		Status string `json:"status"`
		Data   struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Stream map[string]string   `json:"stream"`
				Values [][]json.RawMessage `json:"values"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return nil, fmt.Errorf("loki query: decode response: %w", err)
	}
	if r.Status != "success" || r.Data.ResultType != "streams" {
		return nil, fmt.Errorf("loki query: status %q, resultType %q (want success, streams)", r.Status, r.Data.ResultType)
	}
	var out []Entry
	for _, s := range r.Data.Result {
		labels, extra := splitLabels(s.Stream)
		for _, v := range s.Values {
			if len(v) < 2 {
				return nil, errors.New("loki query: a value has fewer than 2 elements")
			}
			var tsStr, line string
			if err := json.Unmarshal(v[0], &tsStr); err != nil {
				return nil, fmt.Errorf("loki query: timestamp: %w", err)
			}
			ns, err := strconv.ParseInt(tsStr, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("loki query: timestamp %q: %w", tsStr, err)
			}
			if err := json.Unmarshal(v[1], &line); err != nil {
				return nil, fmt.Errorf("loki query: line: %w", err)
			}
			meta := make(map[string]string, len(extra)+4)
			for k, val := range extra {
				meta[k] = val
			}
			if len(v) > 2 {
				if err := decodeMetadata(v[2], meta); err != nil {
					return nil, err
				}
			}
			out = append(out, Entry{Time: time.Unix(0, ns), Line: line, Labels: labels, Metadata: meta})
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Time.After(out[j].Time) })
	return out, nil
}

func decodeMetadata(raw json.RawMessage, meta map[string]string) error {
	var categorized struct {
		StructuredMetadata map[string]string `json:"structuredMetadata"`
	}
	if err := json.Unmarshal(raw, &categorized); err == nil && categorized.StructuredMetadata != nil {
		for k, v := range categorized.StructuredMetadata {
			meta[k] = v
		}
		return nil
	}
	var flat map[string]any
	if err := json.Unmarshal(raw, &flat); err != nil {
		return fmt.Errorf("loki query: structured metadata: %w", err)
	}
	for k, v := range flat {
		if s, ok := v.(string); ok {
			meta[k] = s
		}
	}
	return nil
}

func splitLabels(stream map[string]string) (Labels, map[string]string) {
	var l Labels
	extra := map[string]string{}
	for k, v := range stream {
		switch k {
		case "service":
			l.Service = v
		case "role":
			l.Role = v
		case "worker":
			l.Worker = v
		case "level":
			l.Level = v
		case "kind":
			l.Kind = v
		default:
			extra[k] = v
		}
	}
	return l, extra
}
