package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// Event types of GET /api/v1/events.
const (
	EventVMStatus          = "vm.status"
	EventTaskFinished      = "task.finished"
	EventExecutionStarted  = "execution.started"
	EventExecutionFinished = "execution.finished"
	EventRunStatus         = "run.status"
	EventRunFinished       = "run.finished"
	// EventReset says that events after the requested position were pruned by the retention (Data: EventsReset).
	EventReset = "reset"
	// EventLive says that the replay is over: what follows is new (Data: EventsLive). It has no ID.
	EventLive = "live"
)

// Event is one server-sent event of GET /api/v1/events: ID is its position in the owner's log (send it back to
// resume), Type the SSE event name, Data the type's JSON document (docs/api.md, "Events").
type Event struct {
	ID   int64           `json:"id,omitempty"`
	Type string          `json:"type"`
	Data json.RawMessage `json:"data"`
}

// EventsReset is the data of a `reset` event: events up to Horizon may be gone, and the stream goes on after it.
type EventsReset struct {
	Horizon int64 `json:"horizon"`
}

// EventsLive is the data of the `live` event: Latest is the position of the last event of the replay.
type EventsLive struct {
	Latest int64 `json:"latest"`
}

// EventsOptions selects what StreamEvents receives. Without Resume the stream starts at the end of the log (only
// new events); with it, after After (0: from the oldest event kept).
type EventsOptions struct {
	Types  []string
	VMID   string
	After  int64
	Resume bool
}

// ErrEventStreamEnded is returned (wrapped) when the event stream closes; StreamEvents with Resume and the last
// ID seen carries on without a gap.
var ErrEventStreamEnded = errors.New("the event stream closed")

// StreamEvents follows the owner's event log: fn gets each event in order, including `reset` and `live`, until
// ctx ends (ctx.Err() is returned), fn fails (its error is returned) or the stream closes (ErrEventStreamEnded).
func (c *Client) StreamEvents(ctx context.Context, opts EventsOptions, fn func(Event) error) error {
	q := url.Values{}
	if len(opts.Types) > 0 {
		q.Set("types", strings.Join(opts.Types, ","))
	}
	if opts.VMID != "" {
		q.Set("vm_id", opts.VMID)
	}
	req, err := c.newRequest(ctx, http.MethodGet, "/events", q, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "text/event-stream")
	if opts.Resume {
		req.Header.Set("Last-Event-ID", strconv.FormatInt(opts.After, 10))
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return decodeError(resp)
	}
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt != "text/event-stream" {
		return &APIError{Status: resp.StatusCode, Message: nonJSONMessage(resp, nil)}
	}
	err = readEventsWithID(resp.Body, func(id, event string, data []byte) error {
		ev := Event{Type: event, Data: json.RawMessage(append([]byte(nil), data...))}
		if id != "" {
			n, err := strconv.ParseInt(id, 10, 64)
			if err != nil {
				return fmt.Errorf("event id %q is not a number", id)
			}
			ev.ID = n
		}
		if err := fn(ev); err != nil {
			return &callerError{err}
		}
		return nil
	})
	var ce *callerError
	switch {
	case errors.As(err, &ce):
		return ce.err
	case ctx.Err() != nil:
		return ctx.Err()
	case err == nil:
		return ErrEventStreamEnded
	}
	return fmt.Errorf("%w: %w", ErrEventStreamEnded, err)
}
