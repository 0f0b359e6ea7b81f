package inproc_test

import (
	"testing"

	"github.com/aetherium/aetherium/internal/events"
	"github.com/aetherium/aetherium/internal/events/eventstest"
	"github.com/aetherium/aetherium/internal/events/inproc"
)

func TestConformance(t *testing.T) {
	eventstest.Run(t, func(t *testing.T) events.Bus { return inproc.New() })
}
