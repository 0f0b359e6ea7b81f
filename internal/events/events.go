// Package events defines the event bus seam: Redis pub/sub in production, in-process when embedded.
package events

import (
	"context"
	"encoding/json"
	"time"
)

// Event is something that happened, published on a topic.
type Event struct {
	Type    string          `json:"type"`    // e.g. "task.completed"
	Subject string          `json:"subject"` // the id of what it is about
	OwnerID string          `json:"owner_id,omitempty"`
	Data    json.RawMessage `json:"data,omitempty"`
	Time    time.Time       `json:"time"`
}

// Topics used across the product.
const (
	TopicTasks = "tasks" // every task's end
)

// TaskTopic is the topic on which the end of one task is announced.
func TaskTopic(taskID string) string { return "tasks/" + taskID }

// Subscription delivers events of one topic until Close. Slow readers lose events rather than block publishers,
// so a subscriber must be able to recover by reading the store.
type Subscription interface {
	C() <-chan Event
	Close() error
}

// Bus publishes and subscribes to events.
type Bus interface {
	Publish(ctx context.Context, topic string, e Event) error
	// Subscribe starts delivery of the topic's events. Events published after Subscribe returns are delivered.
	Subscribe(ctx context.Context, topic string) (Subscription, error)
	Health(ctx context.Context) error
	Close() error
}
