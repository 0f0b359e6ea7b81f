package client

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// NotificationRule sends an owner's events of some kinds to a destination of an integration.
type NotificationRule struct {
	ID          string    `json:"id"`
	Events      []string  `json:"events"`      // vm.failed, run.finished, job.finished, task.failed
	Integration string    `json:"integration"` // slack, discord
	Destination string    `json:"destination"` // a Slack channel id, a Discord webhook URL
	CreatedAt   time.Time `json:"created_at"`
}

// CreateNotificationRuleRequest is the body of POST /api/v1/notifications/rules.
type CreateNotificationRuleRequest struct {
	Events      []string `json:"events"`
	Integration string   `json:"integration"`
	Destination string   `json:"destination"`
}

// NotificationRuleList is the answer of GET /api/v1/notifications/rules.
type NotificationRuleList struct {
	Rules []NotificationRule `json:"rules"`
}

// Notification is an outbox entry: one notification to one destination.
type Notification struct {
	Seq           int64      `json:"seq"`
	RuleID        string     `json:"rule_id"`
	Integration   string     `json:"integration"`
	Event         string     `json:"event"`
	Status        string     `json:"status"` // pending, sent, dead
	Attempts      int        `json:"attempts"`
	NextAttemptAt time.Time  `json:"next_attempt_at"`
	LastError     string     `json:"last_error,omitempty"`
	CreatedAt     time.Time  `json:"created_at"`
	SentAt        *time.Time `json:"sent_at,omitempty"`
}

// NotificationList is the answer of GET /api/v1/notifications.
type NotificationList struct {
	Notifications []Notification `json:"notifications"`
}

// CreateNotificationRule creates a notification rule of the caller's.
func (c *Client) CreateNotificationRule(ctx context.Context, req CreateNotificationRuleRequest) (*NotificationRule, error) {
	var out NotificationRule
	if _, err := c.do(ctx, http.MethodPost, "/notifications/rules", nil, req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// ListNotificationRules lists the caller's notification rules.
func (c *Client) ListNotificationRules(ctx context.Context) (*NotificationRuleList, error) {
	var l NotificationRuleList
	if _, err := c.do(ctx, http.MethodGet, "/notifications/rules", nil, nil, &l); err != nil {
		return nil, err
	}
	return &l, nil
}

// DeleteNotificationRule deletes a notification rule of the caller's.
func (c *Client) DeleteNotificationRule(ctx context.Context, id string) error {
	_, err := c.do(ctx, http.MethodDelete, "/notifications/rules/"+url.PathEscape(id), nil, nil, nil)
	return err
}

// ListNotifications lists the caller's notifications of a status ("" : any).
func (c *Client) ListNotifications(ctx context.Context, status string) (*NotificationList, error) {
	var l NotificationList
	q := url.Values{}
	if status != "" {
		q.Set("status", status)
	}
	if _, err := c.do(ctx, http.MethodGet, "/notifications", q, nil, &l); err != nil {
		return nil, err
	}
	return &l, nil
}

// RetryNotification makes a dead notification pending again.
func (c *Client) RetryNotification(ctx context.Context, seq int64) error {
	_, err := c.do(ctx, http.MethodPost, "/notifications/"+strconv.FormatInt(seq, 10)+"/retry", nil, nil, nil)
	return err
}
