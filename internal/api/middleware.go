package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net/http"
	"runtime/debug"
	"strings"
	"time"

	"github.com/go-chi/chi/v5/middleware"
	"github.com/google/uuid"
	"go.opentelemetry.io/otel/trace"

	"github.com/aetherium/aetherium/internal/auth"
	"github.com/aetherium/aetherium/pkg/client"
)

// reqInfo travels in the request context so that inner middleware (auth) can tell the access log who called.
type reqInfo struct {
	id      string
	ownerID string
	keyID   string
	role    string
}

type ctxKey int

const (
	infoKey ctxKey = iota
	ownerKey
	principalKey // authz.go
	routeMarkKey // metrics.go
)

// RequestIDHeader carries the request id in both directions.
const RequestIDHeader = "X-Request-Id"

func requestIDFrom(ctx context.Context) string {
	if ri, ok := ctx.Value(infoKey).(*reqInfo); ok {
		return ri.id
	}
	return ""
}

// ownerFrom returns the authenticated owner. Only routes behind authenticate call it, so it is always set there.
func ownerFrom(ctx context.Context) string {
	o, _ := ctx.Value(ownerKey).(string)
	return o
}

// validRequestID accepts ids a proxy or client may send, bounded and printable so they are safe in logs.
func validRequestID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("-_.:", c)) {
			return false
		}
	}
	return true
}

// requestID takes the caller's X-Request-Id when it is sane, or makes one, and echoes it in the response.
func (s *server) requestID(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get(RequestIDHeader)
		if !validRequestID(id) {
			id = uuid.NewString()
		}
		w.Header().Set(RequestIDHeader, id)
		ctx := context.WithValue(r.Context(), infoKey, &reqInfo{id: id})
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// accessLog logs one line per request. It deliberately logs no headers, so credentials never reach the log.
func (s *server) accessLog(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
		aborted := true
		// Deferred, so a transfer cut short (http.ErrAbortHandler re-panicked past this point) is logged too.
		defer func() { s.logRequest(r, ww, start, aborted) }()
		next.ServeHTTP(ww, r)
		aborted = false
	})
}

func (s *server) logRequest(r *http.Request, ww middleware.WrapResponseWriter, start time.Time, aborted bool) {
	status := ww.Status()
	if status == 0 {
		status = http.StatusOK // nothing written: net/http sends 200
	}
	level := slog.LevelInfo
	if status >= 500 || aborted {
		level = slog.LevelWarn
	}
	attrs := []slog.Attr{
		slog.String("method", r.Method),
		slog.String("path", r.URL.Path),
		slog.Int("status", status),
		slog.Duration("duration", time.Since(start)),
		slog.Int("bytes", ww.BytesWritten()),
	}
	if aborted {
		attrs = append(attrs, slog.Bool("aborted", true))
	}
	if ri, ok := r.Context().Value(infoKey).(*reqInfo); ok {
		attrs = append(attrs, slog.String("request_id", ri.id))
		if ri.ownerID != "" {
			attrs = append(attrs, slog.String("owner_id", ri.ownerID), slog.String("key_id", ri.keyID))
		}
	}
	if sc := trace.SpanContextFromContext(r.Context()); sc.IsSampled() {
		attrs = append(attrs, slog.String("trace_id", sc.TraceID().String()))
	}
	s.log.LogAttrs(r.Context(), level, "http request", attrs...)
}

// recoverer turns a panic in a handler into a logged 500 so one bad request cannot take the server down.
func (s *server) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			v := recover()
			if v == nil {
				return
			}
			if v == http.ErrAbortHandler {
				panic(v) // net/http's way to abort a response; it must reach the server
			}
			s.log.ErrorContext(r.Context(), "panic in handler", "panic", fmt.Sprint(v), "method", r.Method,
				"path", r.URL.Path, "request_id", requestIDFrom(r.Context()), "stack", string(debug.Stack()))
			if ww, ok := w.(middleware.WrapResponseWriter); ok && ww.Status() != 0 {
				return // the answer has begun; all we can do is stop
			}
			s.writeError(w, r, http.StatusInternalServerError, client.CodeInternal,
				"internal error (request id "+requestIDFrom(r.Context())+")")
		}()
		next.ServeHTTP(w, r)
	})
}

// limitBody bounds every request body. A declared length over the limit is refused before reading anything;
// otherwise http.MaxBytesReader stops the read and decodeJSON answers 413.
func (s *server) limitBody(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength > s.maxBody {
			s.writeError(w, r, http.StatusRequestEntityTooLarge, client.CodeTooLarge,
				fmt.Sprintf("request body is larger than %d bytes", s.maxBody))
			return
		}
		if r.Body != nil {
			r.Body = http.MaxBytesReader(w, r.Body, s.maxBody)
		}
		next.ServeHTTP(w, r)
	})
}

// requireJSON refuses bodies that are not declared as JSON. A request without a body passes (net/http reports
// ContentLength 0 for it and -1 for a chunked one), and a handler that needs a body then says it is missing.
func (s *server) requireJSON(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength != 0 {
			mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
			if err != nil || mt != "application/json" {
				s.writeError(w, r, http.StatusUnsupportedMediaType, client.CodeUnsupportedMedia,
					"request body must be sent with Content-Type: application/json")
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// authenticate requires a valid bearer key and puts its owner in the context; every service call uses it. A
// valid key's request is charged to the key's rate limit, a request without one to its address's.
func (s *server) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
		token = strings.TrimSpace(token)
		if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
			if !s.limitAddr(w, r) {
				return
			}
			w.Header().Set("WWW-Authenticate", `Bearer realm="aetherium"`)
			s.writeError(w, r, http.StatusUnauthorized, client.CodeUnauthorized,
				"an API key or token is required: send Authorization: Bearer <key or token>")
			return
		}
		p, err := s.auth.Principal(r.Context(), token)
		if errors.Is(err, auth.ErrInvalidKey) {
			// Failed attempts are charged to the source address, so guessing keys is slow.
			if !s.limitAddr(w, r) {
				return
			}
			msg := "the API key or token is invalid or revoked"
			switch {
			case errors.Is(err, auth.ErrExpired):
				msg = "the API key or token has expired"
			case errors.Is(err, auth.ErrRevoked):
				msg = "the API key of this token has been revoked"
			}
			w.Header().Set("WWW-Authenticate", `Bearer realm="aetherium", error="invalid_token"`)
			s.writeError(w, r, http.StatusUnauthorized, client.CodeUnauthorized, msg)
			return
		}
		if err != nil {
			s.internalError(w, r, fmt.Errorf("authenticate: %w", err))
			return
		}
		if ri, ok := r.Context().Value(infoKey).(*reqInfo); ok {
			ri.ownerID, ri.keyID, ri.role = p.OwnerID, p.KeyID, p.Role
		}
		if !s.limitKey(w, r, p.KeyID) {
			return
		}
		ctx := context.WithValue(r.Context(), ownerKey, p.OwnerID)
		ctx = context.WithValue(ctx, principalKey, p)
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}
