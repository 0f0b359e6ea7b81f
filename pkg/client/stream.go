package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
)

// ErrStreamEnded is returned (wrapped) when an execution's stream closes or breaks before its end event: the server
// went away (restart, proxy timeout) or sent what the client cannot read. The execution goes on; GetExecution or a
// new stream (StreamExecutionFrom) shows the rest.
var ErrStreamEnded = errors.New("the stream closed before the execution ended")

// maxEventBytes bounds one server-sent event. The server sends at most 32 KiB of output per event.
const maxEventBytes = 8 << 20

// Chunk is output of a streamed execution.
type Chunk struct {
	Stream string // "stdout" or "stderr"
	// Offset is where Data starts in its stream. Chunks of a stream follow each other without gaps, unless output
	// was lost (see docs/api.md): then Offset is past the end of the previous chunk.
	Offset int64
	Data   []byte
}

// StreamOptions tune StreamExecutionFrom.
type StreamOptions struct {
	// StdoutOffset and StderrOffset skip the output before them, e.g. to resume after a broken stream.
	StdoutOffset, StderrOffset int64
	// OnOpen, if set, is called once the server has answered, before any chunk: from then on, output the command
	// writes reaches the stream live (output written before may come later, from the store).
	OnOpen func()
}

// StreamExecution follows an execution's output (GET /api/v1/executions/{id}/stream) from its start: fn gets every
// chunk in order, as the command writes it while it runs, or replayed from the store when it has ended. It
// returns how the execution ended. An error from fn stops the stream and is returned as is; a stream that closes
// before the end gives an error wrapping ErrStreamEnded. The client's http.Client must not have a Timeout shorter
// than the command (use ctx instead).
func (c *Client) StreamExecution(ctx context.Context, id string, fn func(Chunk) error) (*ExecutionEnd, error) {
	return c.StreamExecutionFrom(ctx, id, StreamOptions{}, fn)
}

// StreamExecutionFrom is StreamExecution starting at the given offsets.
func (c *Client) StreamExecutionFrom(ctx context.Context, id string, opts StreamOptions, fn func(Chunk) error) (*ExecutionEnd, error) {
	q := url.Values{}
	if opts.StdoutOffset > 0 {
		q.Set("stdout_offset", strconv.FormatInt(opts.StdoutOffset, 10))
	}
	if opts.StderrOffset > 0 {
		q.Set("stderr_offset", strconv.FormatInt(opts.StderrOffset, 10))
	}
	path := "/executions/" + url.PathEscape(id) + "/stream"
	req, err := c.newRequest(ctx, http.MethodGet, path, q, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/event-stream")
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, decodeError(resp)
	}
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt != "text/event-stream" {
		return nil, &APIError{Status: resp.StatusCode, Message: nonJSONMessage(resp, nil)}
	}
	if opts.OnOpen != nil {
		opts.OnOpen()
	}
	var end *ExecutionEnd
	err = readEvents(resp.Body, func(event string, data []byte) error {
		switch event {
		case "stdout", "stderr":
			var oc OutputChunk
			if err := json.Unmarshal(data, &oc); err != nil {
				return fmt.Errorf("decode %s event: %w", event, err)
			}
			ch := Chunk{Stream: event, Offset: oc.Offset, Data: []byte(oc.Data)}
			if oc.DataBase64 != "" {
				if ch.Data, err = base64.StdEncoding.DecodeString(oc.DataBase64); err != nil {
					return fmt.Errorf("decode %s event: data_base64: %w", event, err)
				}
			}
			if err := fn(ch); err != nil {
				return &callerError{err}
			}
			return nil
		case "end":
			end = new(ExecutionEnd)
			if err := json.Unmarshal(data, end); err != nil {
				return fmt.Errorf("decode end event: %w", err)
			}
			return errStop
		}
		return nil // an event this client does not know: newer servers may send more
	})
	var ce *callerError
	switch {
	case errors.Is(err, errStop):
		return end, nil
	case errors.As(err, &ce):
		return nil, ce.err
	case ctx.Err() != nil:
		return nil, ctx.Err()
	case err == nil:
		return nil, fmt.Errorf("stream of execution %s: %w", id, ErrStreamEnded)
	}
	// A connection that broke, or a server that sent something this client cannot read.
	return nil, fmt.Errorf("stream of execution %s: %w: %w", id, ErrStreamEnded, err)
}

// errStop ends readEvents after the end event.
var errStop = errors.New("stop")

// callerError marks an error returned by the caller's function, which must come back unchanged.
type callerError struct{ err error }

func (e *callerError) Error() string { return e.err.Error() }
func (e *callerError) Unwrap() error { return e.err }

// readEvents parses a text/event-stream (the WHATWG "server-sent events" format) and calls dispatch for each
// event with its type ("message" when none was given) and its data (data lines joined with "\n"). Comments, id
// and retry fields are ignored; lines may end with "\n", "\r\n" or "\r". It returns nil at the end of the input
// (a partly received event is dropped, as the format says), or dispatch's error.
func readEvents(r io.Reader, dispatch func(event string, data []byte) error) error {
	return readEventsWithID(r, func(_, event string, data []byte) error { return dispatch(event, data) })
}

// readEventsWithID is readEvents that also gives each event's id field (empty when the event has none).
func readEventsWithID(r io.Reader, dispatch func(id, event string, data []byte) error) error {
	br := bufio.NewReaderSize(r, 64<<10)
	var (
		event   string
		id      string
		data    bytes.Buffer
		hasData bool
		line    []byte
		lastCR  bool // the previous line ended with "\r": a "\n" right after it is part of that ending
	)
	for {
		b, err := br.ReadByte()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if b == '\n' && lastCR {
			lastCR = false
			continue
		}
		lastCR = b == '\r'
		if b != '\n' && b != '\r' {
			line = append(line, b)
			if len(line)+data.Len() > maxEventBytes {
				return fmt.Errorf("server-sent event larger than %d bytes", maxEventBytes)
			}
			continue
		}
		// A complete line.
		switch {
		case len(line) == 0:
			if hasData {
				if event == "" {
					event = "message"
				}
				if err := dispatch(id, event, bytes.TrimSuffix(data.Bytes(), []byte("\n"))); err != nil {
					return err
				}
			}
			event, id, hasData = "", "", false
			data.Reset()
		case line[0] == ':':
			// A comment (the server's heartbeat).
		default:
			field, value, found := bytes.Cut(line, []byte(":"))
			if found {
				value = bytes.TrimPrefix(value, []byte(" "))
			}
			switch string(field) {
			case "event":
				event = string(value)
			case "id":
				id = string(value)
			case "data":
				data.Write(value)
				data.WriteByte('\n')
				hasData = true
			}
		}
		line = line[:0]
	}
}
