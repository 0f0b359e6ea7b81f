package integrations

import (
	"context"

	"github.com/aetherium/aetherium/internal/store"
)

// Recorder records an accepted delivery and queues its webhook:process task (task.Service.RecordWebhook). A
// delivery already recorded under (Integration, DeliveryID) queues nothing and reports duplicate.
type Recorder interface {
	RecordWebhook(ctx context.Context, d *store.WebhookDelivery) (duplicate bool, err error)
}

// DeliveryRecord is the record of an accepted webhook of the named integration. Every way in builds it here (the
// gateway's POST /api/v1/webhooks/{integration} and Slack's Socket Mode), so Handle sees the same delivery
// whichever way it came.
func DeliveryRecord(integration string, w *Webhook, a *Acceptance) *store.WebhookDelivery {
	return &store.WebhookDelivery{Integration: integration, DeliveryID: a.DeliveryID, Event: a.Event, Header: w.Header,
		Body: w.Body, ReceivedAt: w.ReceivedAt}
}
