package client

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// CreateAPIKey makes an API key (admin only). The answer's Key is shown this once.
func (c *Client) CreateAPIKey(ctx context.Context, req CreateAPIKeyRequest) (*CreatedAPIKey, error) {
	var out CreatedAPIKey
	if _, err := c.do(ctx, http.MethodPost, "/apikeys", nil, req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// ListAPIKeys lists every API key, revoked ones included (admin only).
func (c *Client) ListAPIKeys(ctx context.Context) (*APIKeyList, error) {
	var out APIKeyList
	if _, err := c.do(ctx, http.MethodGet, "/apikeys", nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// RevokeAPIKey revokes an API key and the tokens issued for it (admin only).
func (c *Client) RevokeAPIKey(ctx context.Context, id string) error {
	_, err := c.do(ctx, http.MethodDelete, "/apikeys/"+url.PathEscape(id), nil, nil, nil)
	return err
}

// IssueToken exchanges the client's API key for a short-lived JWT.
func (c *Client) IssueToken(ctx context.Context, req TokenRequest) (*Token, error) {
	var out Token
	if _, err := c.do(ctx, http.MethodPost, "/auth/token", nil, req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// ListAudit reads the audit log, newest first (admin only).
func (c *Client) ListAudit(ctx context.Context, q AuditQuery) (*AuditList, error) {
	v := url.Values{}
	set := func(k, s string) {
		if s != "" {
			v.Set(k, s)
		}
	}
	set("key_id", q.KeyID)
	set("owner", q.Owner)
	set("method", q.Method)
	set("cursor", q.Cursor)
	if q.Status != 0 {
		v.Set("status", strconv.Itoa(q.Status))
	}
	if q.Limit != 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	if !q.Since.IsZero() {
		v.Set("since", q.Since.UTC().Format(time.RFC3339Nano))
	}
	if !q.Until.IsZero() {
		v.Set("until", q.Until.UTC().Format(time.RFC3339Nano))
	}
	var out AuditList
	if _, err := c.do(ctx, http.MethodGet, "/audit", v, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}
