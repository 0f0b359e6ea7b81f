package client

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// LogEntry is one log line: an execution's output, a VM's console, a task's outcome or a server record.
type LogEntry struct {
	Time     time.Time         `json:"time"`
	Line     string            `json:"line"`
	Kind     string            `json:"kind"`            // exec, console, task or server
	Level    string            `json:"level,omitempty"` // debug, info, warn, error
	Metadata map[string]string `json:"metadata,omitempty"`
}

// LogList is the answer of the log queries, newest entry first. Source says what answered: "loki" or "store"
// (without a Loki, an execution's stored output).
type LogList struct {
	Entries []LogEntry `json:"entries"`
	Source  string     `json:"source"`
}

// LogQuery filters GET /api/v1/logs. Contains is a plain substring of the line.
type LogQuery struct {
	VMID, ExecutionID, RunID string
	Since, Until             time.Time
	Limit                    int
	Contains                 string
}

func (q LogQuery) values() url.Values {
	v := url.Values{}
	set := func(k, val string) {
		if val != "" {
			v.Set(k, val)
		}
	}
	set("vm_id", q.VMID)
	set("execution_id", q.ExecutionID)
	set("run_id", q.RunID)
	set("q", q.Contains)
	if !q.Since.IsZero() {
		v.Set("since", q.Since.UTC().Format(time.RFC3339Nano))
	}
	if !q.Until.IsZero() {
		v.Set("until", q.Until.UTC().Format(time.RFC3339Nano))
	}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	return v
}

// Logs queries the caller's logs.
func (c *Client) Logs(ctx context.Context, q LogQuery) (*LogList, error) {
	var out LogList
	if _, err := c.do(ctx, http.MethodGet, "/logs", q.values(), nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// VMLogs returns what a VM printed on its console (kept after the VM is gone).
func (c *Client) VMLogs(ctx context.Context, vmID string, q LogQuery) (*LogList, error) {
	var out LogList
	q.VMID = ""
	if _, err := c.do(ctx, http.MethodGet, "/vms/"+url.PathEscape(vmID)+"/logs", q.values(), nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}
