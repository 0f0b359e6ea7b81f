package api

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/pkg/client"
)

// Idempotency keys (Idempotency-Key, as Stripe has them): a mutating request sent with a key is recorded with a
// fingerprint of what it asks (method, path, query but ?wait, body) and, once it has one, its answer. A retry with
// the same key and the same request gets that answer again (Idempotent-Replayed: true) and runs nothing; with
// another request, 422; while the first has not answered, 409. Answers of 5xx and 429 are not kept: the request
// may be retried and then runs. Keys belong to the API key's owner and expire after IdempotencyTTL.
//
// Accepted tasks (create, delete, execute, tools, jobs) record their 202 answer as soon as the task is stored,
// before any ?wait: a client that gives up during the wait (its timeout, a lost connection) and retries gets the
// task again, never a second one. The final answer, when the wait ends, replaces it.

// Defaults of the idempotency settings.
const (
	// IdempotencyTTL is how long a key is kept after its first request.
	IdempotencyTTL = 24 * time.Hour
	// idempotencyPurgeEvery is how often, at most, expired keys are deleted (from a request that claims a key).
	idempotencyPurgeEvery = time.Hour
)

// idemClaim is a key this request has claimed: the handler below it runs, and its answer is recorded.
type idemClaim struct {
	rec *store.IdempotencyRecord
	// checkpointed: an answer (the task's acceptance) is stored already, so a 5xx afterwards must not release it.
	checkpointed bool
}

type idemKey struct{}

// idempotent implements Idempotency-Key on the mutating routes it wraps. It runs after authenticate (keys are per
// owner) and readBody (the body is part of the fingerprint).
func (s *server) idempotent(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		vals, sent := r.Header[http.CanonicalHeaderKey(client.IdempotencyKeyHeader)]
		if !sent || !mutating(r.Method) {
			next.ServeHTTP(w, r) // GETs are idempotent by definition; the header is ignored there
			return
		}
		if len(vals) != 1 {
			s.writeError(w, r, http.StatusBadRequest, client.CodeIdempotencyKeyInvalid,
				"send one Idempotency-Key header, not several")
			return
		}
		key := vals[0]
		if err := store.CheckIdempotencyKey(key); err != nil {
			s.writeError(w, r, http.StatusBadRequest, client.CodeIdempotencyKeyInvalid, fmt.Sprintf(
				"Idempotency-Key must be 1 to %d printable ASCII characters (a UUID is a good choice)", store.MaxIdempotencyKey))
			return
		}
		if s.idem == nil {
			s.writeError(w, r, http.StatusBadRequest, client.CodeIdempotencyKeyInvalid,
				"this server does not keep idempotency keys; send the request without Idempotency-Key")
			return
		}
		ctx, owner := r.Context(), ownerFrom(r.Context())
		now := time.Now()
		rec := &store.IdempotencyRecord{OwnerID: owner, Key: key, Fingerprint: fingerprint(r, bodyFrom(ctx)),
			CreatedAt: now, ExpiresAt: now.Add(s.idemTTL)}
		// A claim older than the longest a request may run (a ?wait of maxWait, plus a margin) was lost with its
		// process; a retry then takes it over and runs the request.
		cur, err := s.idem.Begin(ctx, rec, now.Add(-(s.maxWait + 5*time.Minute)))
		if err != nil {
			s.internalError(w, r, fmt.Errorf("idempotency key: %w", err))
			return
		}
		switch {
		case cur != nil && cur.Fingerprint != rec.Fingerprint:
			s.writeError(w, r, http.StatusUnprocessableEntity, client.CodeIdempotencyKeyReused,
				"this Idempotency-Key was used for a different request (method, path, query or body); use a new key for a new request")
			return
		case cur != nil && !cur.Done:
			w.Header().Set("Retry-After", "1")
			s.writeError(w, r, http.StatusConflict, client.CodeIdempotencyInProgress,
				"a request with this Idempotency-Key is still in progress; retry later to get its answer")
			return
		case cur != nil:
			replay(w, cur)
			return
		}
		s.maybePurge()

		claim := &idemClaim{rec: rec}
		rw := &recorder{ResponseWriter: w}
		finished := false
		defer func() {
			// Also on a panic (the recoverer above answers 500): a claim without an answer is released.
			s.finishClaim(ctx, claim, rw, finished)
		}()
		next.ServeHTTP(rw, r.WithContext(context.WithValue(ctx, idemKey{}, claim)))
		finished = true
	})
}

// finishClaim stores the answer of a claimed key, or releases the claim when there is nothing worth replaying.
func (s *server) finishClaim(ctx context.Context, claim *idemClaim, rw *recorder, finished bool) {
	// The client may be gone; the record must still be written.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	status := rw.status
	if status == 0 && finished {
		status = http.StatusOK
	}
	if !finished || status >= 500 || status == http.StatusTooManyRequests {
		if claim.checkpointed {
			return // the acceptance stays the answer: the task exists
		}
		if err := s.idem.Release(ctx, claim.rec.OwnerID, claim.rec.Key); err != nil {
			s.log.ErrorContext(ctx, "release idempotency key", "err", err, "request_id", requestIDFrom(ctx))
		}
		return
	}
	rec := *claim.rec
	rec.Status, rec.Header, rec.Body = status, replayHeaders(rw.header), rw.body.Bytes()
	if err := s.idem.Complete(ctx, &rec); err != nil {
		// The client has its answer; a retry would find the claim in progress until it goes stale.
		s.log.ErrorContext(ctx, "record idempotent answer", "err", err, "request_id", requestIDFrom(ctx))
	}
}

// checkpoint records v with status as the answer of the request's idempotency key, if it has one, before the
// handler goes on (to wait for the task): from here on a retry gets this answer, not a second task.
func (s *server) checkpoint(r *http.Request, status int, v any) {
	claim, ok := r.Context().Value(idemKey{}).(*idemClaim)
	if !ok {
		return
	}
	buf, err := json.Marshal(v)
	if err != nil {
		s.log.ErrorContext(r.Context(), "encode checkpoint", "err", err, "request_id", requestIDFrom(r.Context()))
		return
	}
	rec := *claim.rec
	rec.Status, rec.Header, rec.Body = status, map[string]string{"Content-Type": "application/json"}, append(buf, '\n')
	// Not cancelled with the request: the task exists whether or not the client is still there.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 10*time.Second)
	defer cancel()
	if err := s.idem.Complete(ctx, &rec); err != nil {
		s.log.ErrorContext(r.Context(), "record idempotent acceptance", "err", err, "request_id", requestIDFrom(r.Context()))
		return
	}
	claim.checkpointed = true
}

// refuseIdempotencyKey answers 400 to a mutating request with an Idempotency-Key on routes that cannot honour one:
// an upload's body is a stream, too big to keep and unknown until it has been sent. Uploads need no key: the file
// is written beside its target and renamed when complete, so sending it again gives the same file.
func (s *server) refuseIdempotencyKey(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, sent := r.Header[http.CanonicalHeaderKey(client.IdempotencyKeyHeader)]; sent && mutating(r.Method) {
			s.writeError(w, r, http.StatusBadRequest, client.CodeIdempotencyKeyInvalid,
				"file uploads do not take an Idempotency-Key (the body is a stream); an upload may simply be sent again")
			return
		}
		next.ServeHTTP(w, r)
	})
}

func mutating(method string) bool {
	switch method {
	case http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete:
		return true
	}
	return false
}

// fingerprint identifies what a request asks: method, path, query without wait (how long to hold the answer is
// not part of the command), and the body.
func fingerprint(r *http.Request, body []byte) string {
	q := r.URL.Query()
	q.Del("wait")
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n%s\n", r.Method, r.URL.EscapedPath(), q.Encode())
	h.Write(body)
	return hex.EncodeToString(h.Sum(nil))
}

// replayHeaders are the headers of an answer worth replaying.
func replayHeaders(h http.Header) map[string]string {
	out := map[string]string{}
	for _, k := range []string{"Content-Type", "Location", "Allow"} {
		if v := h.Get(k); v != "" {
			out[k] = v
		}
	}
	return out
}

func replay(w http.ResponseWriter, rec *store.IdempotencyRecord) {
	h := w.Header()
	for k, v := range rec.Header {
		h.Set(k, v)
	}
	h.Set(client.IdempotentReplayedHeader, "true")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(rec.Status)
	_, _ = w.Write(rec.Body)
}

// maybePurge deletes expired keys, at most once per idempotencyPurgeEvery, in the background. Expired keys are
// also replaced when reused, so purging only bounds the table.
func (s *server) maybePurge() {
	now := time.Now()
	last := s.lastPurge.Load()
	if now.UnixNano()-last < int64(idempotencyPurgeEvery) || !s.lastPurge.CompareAndSwap(last, now.UnixNano()) {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		n, err := s.idem.Purge(ctx, now)
		if err != nil {
			s.log.Warn("purge expired idempotency keys", "err", err)
		} else if n > 0 {
			s.log.Debug("purged expired idempotency keys", "count", n)
		}
	}()
}

// recorder passes an answer through and keeps a copy of it.
type recorder struct {
	http.ResponseWriter
	status int
	header http.Header
	// body is the whole answer as the handler wrote it, also when writing it to a client that went away failed:
	// that client is the one most likely to retry, and the answer is what the request did.
	body bytes.Buffer
}

func (rw *recorder) WriteHeader(status int) {
	if rw.status == 0 {
		rw.status = status
		rw.header = rw.ResponseWriter.Header().Clone()
	}
	rw.ResponseWriter.WriteHeader(status)
}

func (rw *recorder) Write(p []byte) (int, error) {
	if rw.status == 0 {
		rw.WriteHeader(http.StatusOK)
	}
	rw.body.Write(p)
	return rw.ResponseWriter.Write(p)
}

// Unwrap lets http.ResponseController reach the connection (flushes of proxied answers, deadlines).
func (rw *recorder) Unwrap() http.ResponseWriter { return rw.ResponseWriter }

// ---- bodies

type bodyKey struct{}

// bodyFrom returns the body readBody buffered, nil when there was none.
func bodyFrom(ctx context.Context) []byte {
	b, _ := ctx.Value(bodyKey{}).([]byte)
	return b
}

// readBody reads a request's (bounded) body before the handler runs, under a read deadline of bodyTimeout, then
// lifts the deadline. The server has no ReadTimeout (uploads, streams, shells and long polls outlive any), so
// without this a client trickling a JSON body would hold its connection and goroutine for ever. The deadline is
// lifted before the handler runs, so that it bounds the body only, never a ?wait long poll or a proxied answer
// that follows. Requests without a body are not touched.
func (s *server) readBody(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
			next.ServeHTTP(w, r)
			return
		}
		rc := http.NewResponseController(w)
		deadline := rc.SetReadDeadline(time.Now().Add(s.bodyTimeout)) == nil
		body, err := io.ReadAll(r.Body)
		if deadline {
			_ = rc.SetReadDeadline(time.Time{})
		}
		var mbe *http.MaxBytesError
		switch {
		case errors.As(err, &mbe):
			s.writeError(w, r, http.StatusRequestEntityTooLarge, client.CodeTooLarge,
				fmt.Sprintf("request body is larger than %d bytes", mbe.Limit))
			return
		case errors.Is(err, os.ErrDeadlineExceeded):
			w.Header().Set("Connection", "close")
			s.writeError(w, r, http.StatusRequestTimeout, client.CodeRequestTimeout,
				fmt.Sprintf("the request body did not arrive within %s", s.bodyTimeout))
			return
		case err != nil:
			s.writeError(w, r, http.StatusBadRequest, client.CodeInvalidJSON, "request body could not be read")
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), bodyKey{}, body)))
	})
}
