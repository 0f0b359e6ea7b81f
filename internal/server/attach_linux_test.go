//go:build linux

package server

import (
	"context"
	"errors"
	"testing"

	"github.com/aetherium/aetherium/internal/metrics"
	"github.com/aetherium/aetherium/internal/metrics/metricstest"
	"github.com/aetherium/aetherium/internal/network"
)

// stubAttacher stands in for the network manager, which needs root and a network namespace (internal/network tests
// it); what is under test is the counting around it.
type stubAttacher struct{ attachErr error }

func (a stubAttacher) Attach(_ context.Context, vmID string, _ network.Policy) (network.Attachment, error) {
	return network.Attachment{VMID: vmID}, a.attachErr
}
func (stubAttacher) Detach(context.Context, string) error      { return nil }
func (stubAttacher) Reconcile(context.Context, []string) error { return nil }

// TestAttachmentsAreCounted: the microVM backends' network is wrapped so that every attachment and detachment is
// counted by result, and what the manager answered passes through unchanged.
func TestAttachmentsAreCounted(t *testing.T) {
	ms := metrics.New("test")
	ok := countAttachments(stubAttacher{}, ms.Network())
	bad := countAttachments(stubAttacher{attachErr: errors.New("no address left")}, ms.Network())
	ctx := context.Background()
	for range 3 {
		if att, err := ok.Attach(ctx, "vm-1", network.Policy{}); err != nil || att.VMID != "vm-1" {
			t.Fatalf("attach through the wrapper: %+v %v", att, err)
		}
	}
	if _, err := bad.Attach(ctx, "vm-2", network.Policy{}); err == nil {
		t.Fatal("the wrapper swallowed the manager's error")
	}
	_ = ok.Detach(ctx, "vm-1")
	s := metricstest.Render(t, ms)
	for _, c := range []struct {
		name, result string
		want         float64
	}{
		{"aetherium_network_attachments_total", "ok", 3}, {"aetherium_network_attachments_total", "error", 1},
		{"aetherium_network_detachments_total", "ok", 1}, {"aetherium_network_detachments_total", "error", 0},
	} {
		if got := s.Value(c.name, metricstest.Labels{"result": c.result}); got != c.want {
			t.Errorf("%s{result=%q} = %v, want %v", c.name, c.result, got, c.want)
		}
	}
	if a := countAttachments(stubAttacher{}, nil); a != network.Attacher(stubAttacher{}) {
		t.Error("without metrics the network was wrapped")
	}
}
