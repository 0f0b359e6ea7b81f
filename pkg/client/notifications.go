package client

import "time"

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
