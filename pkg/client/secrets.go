package client

import (
	"context"
	"net/http"
	"net/url"
)

// PutSecret creates or replaces the caller's secret name with value. The answer describes the secret, never its
// value; created says whether it is new.
func (c *Client) PutSecret(ctx context.Context, name, value string) (s *Secret, created bool, err error) {
	var out Secret
	status, err := c.do(ctx, http.MethodPut, "/secrets/"+url.PathEscape(name), nil, PutSecretRequest{Value: value}, &out)
	if err != nil {
		return nil, false, err
	}
	return &out, status == http.StatusCreated, nil
}

// ListSecrets lists the caller's secrets (names and times, no values).
func (c *Client) ListSecrets(ctx context.Context) (*SecretList, error) {
	var l SecretList
	if _, err := c.do(ctx, http.MethodGet, "/secrets", nil, nil, &l); err != nil {
		return nil, err
	}
	return &l, nil
}

// DeleteSecret deletes the caller's secret name.
func (c *Client) DeleteSecret(ctx context.Context, name string) error {
	_, err := c.do(ctx, http.MethodDelete, "/secrets/"+url.PathEscape(name), nil, nil, nil)
	return err
}
