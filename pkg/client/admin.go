package client

import (
	"context"
	"net/http"
	"net/url"
	"strings"
)

// ListWorkers returns every registered worker with its capacity and load (admin keys only).
func (c *Client) ListWorkers(ctx context.Context) (*WorkerList, error) {
	var l WorkerList
	if _, err := c.do(ctx, http.MethodGet, "/workers", nil, nil, &l); err != nil {
		return nil, err
	}
	return &l, nil
}

// DrainWorker drains (drained true) or undrains a worker (admin keys only).
func (c *Client) DrainWorker(ctx context.Context, id string, drained bool) (*WorkerInfo, error) {
	action := "/undrain"
	if drained {
		action = "/drain"
	}
	var w WorkerInfo
	if _, err := c.do(ctx, http.MethodPost, "/workers/"+url.PathEscape(id)+action, nil, nil, &w); err != nil {
		return nil, err
	}
	return &w, nil
}

// GetQuota returns an owner's quota (admin keys only).
func (c *Client) GetQuota(ctx context.Context, ownerID string) (*Quota, error) {
	var q Quota
	if _, err := c.do(ctx, http.MethodGet, "/quotas/"+url.PathEscape(ownerID), nil, nil, &q); err != nil {
		return nil, err
	}
	return &q, nil
}

// SetQuota sets an owner's quota (admin keys only); 0 is no limit.
func (c *Client) SetQuota(ctx context.Context, q Quota) (*Quota, error) {
	var out Quota
	body := map[string]int{"max_vms": q.MaxVMs, "max_vcpus": q.MaxVCPUs, "max_memory_mb": q.MaxMemoryMB}
	if _, err := c.do(ctx, http.MethodPut, "/quotas/"+url.PathEscape(q.OwnerID), nil, body, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// DeleteQuota removes an owner's quota (admin keys only).
func (c *Client) DeleteQuota(ctx context.Context, ownerID string) error {
	_, err := c.do(ctx, http.MethodDelete, "/quotas/"+url.PathEscape(ownerID), nil, nil, nil)
	return err
}

// ListTasks returns a page of the caller's tasks, newest first; statuses filters (empty: all).
func (c *Client) ListTasks(ctx context.Context, statuses []string, opts ListOptions) (*TaskList, error) {
	q := url.Values{}
	if len(statuses) > 0 {
		q.Set("status", strings.Join(statuses, ","))
	}
	setPage(q, opts.Limit, opts.Cursor)
	var l TaskList
	if _, err := c.do(ctx, http.MethodGet, "/tasks", q, nil, &l); err != nil {
		return nil, err
	}
	return &l, nil
}

// ListJobs returns a page of the caller's jobs, newest first (without their executions).
func (c *Client) ListJobs(ctx context.Context, opts ListOptions) (*JobList, error) {
	q := url.Values{}
	setPage(q, opts.Limit, opts.Cursor)
	var l JobList
	if _, err := c.do(ctx, http.MethodGet, "/jobs", q, nil, &l); err != nil {
		return nil, err
	}
	return &l, nil
}
