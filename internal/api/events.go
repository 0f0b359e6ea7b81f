package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/aetherium/aetherium/internal/eventlog"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/pkg/client"
)

// streamEvents serves GET /api/v1/events: the owner's event log as server-sent events (id: the log position,
// event: the type, data: the type's JSON document), replayed from the store after Last-Event-ID (or ?after=),
// then followed live. Without a position the stream starts at the end of the log. A position the retention has
// passed gets an `event: reset` first (docs/api.md, "Events").
func (s *server) streamEvents(w http.ResponseWriter, r *http.Request) {
	if s.events == nil {
		s.writeError(w, r, http.StatusServiceUnavailable, client.CodeUnavailable, "the event log is not configured")
		return
	}
	q := r.URL.Query()
	f := store.EventFilter{OwnerID: ownerFrom(r.Context())}
	if raw := q.Get("types"); raw != "" {
		for _, t := range strings.Split(raw, ",") {
			t = strings.TrimSpace(t)
			if !slices.Contains(store.EventTypes, t) {
				s.writeError(w, r, http.StatusBadRequest, client.CodeBadRequest, fmt.Sprintf(
					"types: %q is not an event type (one of %s)", t, strings.Join(store.EventTypes, ", ")))
				return
			}
			f.Types = append(f.Types, t)
		}
	}
	if raw := q.Get("vm_id"); raw != "" {
		id, err := uuid.Parse(raw)
		if err != nil {
			s.writeError(w, r, http.StatusBadRequest, client.CodeBadRequest, fmt.Sprintf("vm_id: %q is not a uuid", raw))
			return
		}
		f.VMID = id.String()
	}
	// Last-Event-ID is what an EventSource sends when it reconnects, so it wins over the ?after= of the first URL.
	fromNow := true
	for _, p := range []struct{ name, raw string }{{"Last-Event-ID", r.Header.Get("Last-Event-ID")}, {"after", q.Get("after")}} {
		if p.raw == "" {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(p.raw), 10, 64)
		if err != nil || n < 0 {
			s.writeError(w, r, http.StatusBadRequest, client.CodeBadRequest,
				fmt.Sprintf("%s: %q is not a non-negative integer", p.name, p.raw))
			return
		}
		f.After, fromNow = n, false
		break
	}

	ctx := r.Context()
	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Time{}) // a stream lasts as long as its client
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	sink := &eventSink{sw: &sseWriter{w: w, rc: rc}}
	if err := sink.sw.comment("events"); err != nil {
		return
	}
	fw := eventlog.Follower{Store: s.events, Bus: s.eventBus, Log: s.log, Poll: s.eventPoll, Heartbeat: s.heartbeat}
	if err := fw.Follow(ctx, f, fromNow, sink); err != nil && ctx.Err() == nil {
		s.log.DebugContext(ctx, "event stream ended early", "err", err, "request_id", requestIDFrom(ctx))
	}
}

// eventSink writes what a Follower reads as server-sent events.
type eventSink struct {
	sw  *sseWriter
	buf bytes.Buffer
}

func (k *eventSink) Event(e *store.Event) error {
	k.buf.Reset()
	// One line whatever the producer wrote: a newline would end the SSE data field.
	if err := json.Compact(&k.buf, e.Data); err != nil {
		return fmt.Errorf("event %d: data: %w", e.ID, err)
	}
	return k.sw.idEvent(strconv.FormatInt(e.ID, 10), e.Type, json.RawMessage(k.buf.Bytes()))
}

// Reset carries the horizon as its id, so that a client reconnecting after it resumes from there.
func (k *eventSink) Reset(horizon int64) error {
	return k.sw.idEvent(strconv.FormatInt(horizon, 10), "reset", client.EventsReset{Horizon: horizon})
}

// Live tells the client that the replay is over: what follows is new.
func (k *eventSink) Live(latest int64) error {
	return k.sw.event("live", client.EventsLive{Latest: latest})
}

func (k *eventSink) Heartbeat() error { return k.sw.comment("keepalive") }
