package metrics

import "github.com/prometheus/client_golang/prometheus"

// Webhook delivery results, the result label of aetherium_webhook_deliveries_total.
const (
	WebhookDelivered = "delivered" // the receiver answered 2xx
	WebhookRejected  = "rejected"  // the receiver answered, but not 2xx
	WebhookError     = "error"     // no answer: DNS, connection, TLS or timeout
)

// Webhooks is the metrics of outgoing webhook deliveries, for the integrations to record.
type Webhooks struct {
	deliveries *prometheus.CounterVec
}

func newWebhooks(reg prometheus.Registerer) *Webhooks {
	w := &Webhooks{deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Subsystem: "webhook", Name: "deliveries_total",
		Help: "Webhook deliveries, by integration kind and result (delivered, rejected, error).",
	}, []string{"integration", "result"})}
	reg.MustRegister(w.deliveries)
	return w
}

// Delivery counts one delivery attempt. integration must be the integration's kind ("github", "slack"), never an
// id or a URL, and result one of WebhookDelivered, WebhookRejected, WebhookError.
func (w *Webhooks) Delivery(integration, result string) {
	if w == nil {
		return
	}
	w.deliveries.WithLabelValues(integration, result).Inc()
}
