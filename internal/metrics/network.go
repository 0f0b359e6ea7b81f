package metrics

import "github.com/prometheus/client_golang/prometheus"

// Network is the metrics of the microVM network: attachments and detachments of VMs, by result. (The network
// package imports the worker's in its tests, so the counting wrapper of its Attacher is in internal/server.)
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

// Attached records one attachment of a VM to the network, failed when err is set.
func (n *Network) Attached(err error) {
	if n == nil {
		return
	}
	n.attach.WithLabelValues(resultLabel(err)).Inc()
}

// Detached records one detachment of a VM from the network, failed when err is set.
func (n *Network) Detached(err error) {
	if n == nil {
		return
	}
	n.detach.WithLabelValues(resultLabel(err)).Inc()
}
