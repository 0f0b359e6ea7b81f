package metrics

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/aetherium/aetherium/internal/network"
)

// Network is the metrics of the microVM network: attachments and detachments of VMs, by result.
type Network struct {
	attach *prometheus.CounterVec
	detach *prometheus.CounterVec
}

func newNetwork(reg prometheus.Registerer) *Network {
	n := &Network{
		attach: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "network", Name: "attachments_total",
			Help: "VM network attachments (TAP, address lease, rules), by result (ok, error). Re-attachments at a worker's start count too.",
		}, []string{"result"}),
		detach: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "network", Name: "detachments_total",
			Help: "VM network detachments, by result (ok, error).",
		}, []string{"result"}),
	}
	for _, r := range []string{"ok", "error"} {
		n.attach.WithLabelValues(r)
		n.detach.WithLabelValues(r)
	}
	reg.MustRegister(n.attach, n.detach)
	return n
}

func resultLabel(err error) string {
	if err != nil {
		return "error"
	}
	return "ok"
}

// WrapAttacher returns a counting a's attachments and detachments. A nil Network returns a itself.
func (n *Network) WrapAttacher(a network.Attacher) network.Attacher {
	if n == nil {
		return a
	}
	return &countingAttacher{Attacher: a, m: n}
}

type countingAttacher struct {
	network.Attacher
	m *Network
}

func (c *countingAttacher) Attach(ctx context.Context, vmID string, policy network.Policy) (network.Attachment, error) {
	att, err := c.Attacher.Attach(ctx, vmID, policy)
	c.m.attach.WithLabelValues(resultLabel(err)).Inc()
	return att, err
}

func (c *countingAttacher) Detach(ctx context.Context, vmID string) error {
	err := c.Attacher.Detach(ctx, vmID)
	c.m.detach.WithLabelValues(resultLabel(err)).Inc()
	return err
}
