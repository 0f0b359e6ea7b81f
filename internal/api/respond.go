package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/task"
	"github.com/aetherium/aetherium/pkg/client"
)

// codeMethodNotAllowed is the error code of 405 answers. pkg/client has no constant for it (yet).
const codeMethodNotAllowed = "method_not_allowed"

// writeJSON writes v with status. An encoding failure is a programming error; it is logged, and the client sees
// a truncated body since the status line is already gone.
func (s *server) writeJSON(w http.ResponseWriter, r *http.Request, status int, v any) {
	buf, err := json.Marshal(v)
	if err != nil {
		s.log.ErrorContext(r.Context(), "encode response", "err", err, "request_id", requestIDFrom(r.Context()))
		status = http.StatusInternalServerError
		buf, _ = json.Marshal(client.ErrorBody{Error: client.ErrorDetail{
			Code: client.CodeInternal, Message: "internal error"}})
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	buf = append(buf, '\n')
	_, _ = w.Write(buf) // a failed write means the client went away; nothing left to tell it
}

func (s *server) writeError(w http.ResponseWriter, r *http.Request, status int, code, msg string) {
	s.writeJSON(w, r, status, client.ErrorBody{Error: client.ErrorDetail{Code: code, Message: msg}})
}

// writeServiceError maps an error of the application layer to its HTTP answer. The messages of 4xx errors are
// written by the service for users (they name the field or the resource); anything unexpected is logged in full
// and answered with a generic 500 so internals never leak.
func (s *server) writeServiceError(w http.ResponseWriter, r *http.Request, err error) {
	var (
		ve *task.ValidationError
		ue *task.UnavailableError
	)
	switch {
	case errors.As(err, &ve):
		s.writeError(w, r, http.StatusUnprocessableEntity, client.CodeValidation, ve.Error())
	case errors.Is(err, model.ErrInvalidInput):
		// Not a ValidationError: a database constraint caught what the service's checks did not. Its text is the
		// database's, so the client gets a generic message and the log gets the detail.
		s.log.WarnContext(r.Context(), "invalid input rejected below the service", "err", err,
			"request_id", requestIDFrom(r.Context()))
		s.writeError(w, r, http.StatusUnprocessableEntity, client.CodeValidation, "the request contains an invalid value")
	case errors.Is(err, model.ErrNotFound):
		// One message whichever layer found the resource missing: the *model.NotFoundError alone, without the
		// context a layer may have wrapped around it, so another owner's id reads exactly like a missing one.
		msg := err.Error()
		var nf *model.NotFoundError
		if errors.As(err, &nf) {
			msg = nf.Error()
		}
		s.writeError(w, r, http.StatusNotFound, client.CodeNotFound, msg)
	case errors.Is(err, task.ErrQuotaExceeded):
		s.writeError(w, r, http.StatusForbidden, client.CodeQuotaExceeded, err.Error())
	case errors.Is(err, task.ErrNoCapacity):
		w.Header().Set("Retry-After", "30")
		s.writeError(w, r, http.StatusServiceUnavailable, client.CodeNoCapacity, err.Error())
	case errors.Is(err, task.ErrVMPaused):
		s.writeError(w, r, http.StatusConflict, client.CodeVMPaused, err.Error())
	case errors.Is(err, task.ErrVMNotRunning):
		s.writeError(w, r, http.StatusConflict, client.CodeVMNotRunning, err.Error())
	case errors.Is(err, model.ErrConflict), errors.Is(err, model.ErrInvalidTransition):
		s.writeError(w, r, http.StatusConflict, client.CodeConflict, err.Error())
	case errors.As(err, &ue):
		// The reason is written for users (it names no worker); the detail goes to the log.
		s.log.WarnContext(r.Context(), "service unavailable", "err", err, "request_id", requestIDFrom(r.Context()))
		w.Header().Set("Retry-After", "5")
		s.writeError(w, r, http.StatusServiceUnavailable, client.CodeUnavailable, ue.Reason)
	case errors.Is(err, task.ErrUnavailable):
		// The message may name a worker or the queue; that is operational detail, so it is logged, not returned.
		s.log.WarnContext(r.Context(), "service unavailable", "err", err, "request_id", requestIDFrom(r.Context()))
		w.Header().Set("Retry-After", "5")
		s.writeError(w, r, http.StatusServiceUnavailable, client.CodeUnavailable,
			"the service cannot take this request now; retry later")
	case r.Context().Err() != nil:
		// The client went away (or the server is shutting down); nobody reads this answer.
		s.log.DebugContext(r.Context(), "request canceled", "err", err, "request_id", requestIDFrom(r.Context()))
		s.writeError(w, r, http.StatusServiceUnavailable, client.CodeUnavailable, "request canceled")
	default:
		s.internalError(w, r, err)
	}
}

func (s *server) internalError(w http.ResponseWriter, r *http.Request, err error) {
	s.log.ErrorContext(r.Context(), "request failed", "err", err, "method", r.Method, "path", r.URL.Path,
		"request_id", requestIDFrom(r.Context()))
	s.writeError(w, r, http.StatusInternalServerError, client.CodeInternal,
		"internal error (request id "+requestIDFrom(r.Context())+")")
}

// decodeJSON reads the request body into v, which must be a pointer to a struct. It accepts exactly one JSON
// object, strictly (strictDecode): known fields spelled exactly, each once, and nothing after it. On failure it
// writes a 400 invalid_json naming the field and returns false. Every handler that takes a JSON body uses it.
func (s *server) decodeJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	// The body is bounded by limitBody, so reading it whole is safe and lets syntax errors name a line and column.
	body, err := io.ReadAll(r.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			s.writeError(w, r, http.StatusRequestEntityTooLarge, client.CodeTooLarge,
				fmt.Sprintf("request body is larger than %d bytes", mbe.Limit))
			return false
		}
		s.writeError(w, r, http.StatusBadRequest, client.CodeInvalidJSON, "request body could not be read")
		return false
	}
	trimmed := bytes.TrimLeft(body, " \t\r\n")
	if len(trimmed) == 0 {
		s.writeError(w, r, http.StatusBadRequest, client.CodeInvalidJSON, "request body is empty; a JSON object is required")
		return false
	}
	if trimmed[0] != '{' {
		// Checked up front: json would silently accept null, and report other kinds in Go terms.
		s.writeError(w, r, http.StatusBadRequest, client.CodeInvalidJSON, "request body must be a JSON object")
		return false
	}
	if err := strictDecode(body, v); err != nil {
		s.writeError(w, r, http.StatusBadRequest, client.CodeInvalidJSON, describeStrictError(body, err))
		return false
	}
	return true
}

// describeJSONError turns a decoding error into a message for the client: where the problem is and which field.
func describeJSONError(body []byte, err error) string {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		// Offset counts the bytes read including the offending one; point at that byte.
		line, col := position(body, syn.Offset-1)
		return fmt.Sprintf("malformed JSON at line %d, column %d: %s", line, col, syn.Error())
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "malformed JSON: the body ends before the JSON object does"
	case errors.As(err, &typ):
		line, col := position(body, typ.Offset)
		if typ.Field == "" {
			return fmt.Sprintf("wrong JSON type at line %d, column %d: got %s", line, col, typ.Value)
		}
		return fmt.Sprintf("field %q must be %s, got %s (line %d, column %d)", typ.Field, jsonKind(typ.Type.Kind().String()),
			typ.Value, line, col)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		// encoding/json has no typed error for this; its message is stable and names the field.
		return "unknown field " + strings.TrimPrefix(err.Error(), "json: unknown field ")
	default:
		return "malformed JSON: " + strings.TrimPrefix(err.Error(), "json: ")
	}
}

// jsonKind names a Go kind the way a JSON client thinks of it.
func jsonKind(k string) string {
	switch k {
	case "int", "int8", "int16", "int32", "int64", "uint", "uint8", "uint16", "uint32", "uint64":
		return "an integer"
	case "float32", "float64":
		return "a number"
	case "string":
		return "a string"
	case "bool":
		return "a boolean"
	case "slice", "array":
		return "an array"
	case "map", "struct", "ptr":
		return "an object"
	default:
		return "of another type"
	}
}

// position converts a byte offset in body to a 1-based line and column.
func position(body []byte, offset int64) (line, col int) {
	if offset > int64(len(body)) {
		offset = int64(len(body))
	}
	if offset < 0 {
		offset = 0
	}
	before := body[:offset]
	line = bytes.Count(before, []byte{'\n'}) + 1
	col = int(offset) - (bytes.LastIndexByte(before, '\n') + 1) + 1
	return line, col
}
