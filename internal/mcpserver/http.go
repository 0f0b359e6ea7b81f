package mcpserver

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/aetherium/aetherium/pkg/client"
)

// inProcessBase is the base URL of the clients that call the API handler in process; it never reaches a network.
const inProcessBase = "http://aetherium.in-process"

// HTTPOptions configure HTTPHandler.
type HTTPOptions struct {
	Options
	// MaxBodyBytes bounds an MCP request's body (default: the SDK's).
	MaxBodyBytes int64
}

// HTTPHandler serves MCP's streamable HTTP transport with tools that call api, the REST API handler, in process.
// It must be mounted behind the API's authentication: each request's bearer key (already checked) is forwarded
// with every API call its tools make, so each call is authenticated and owner-scoped again by the API itself.
// A request without a bearer key gets 401 (the mount should have refused it before).
//
// The handler is stateless (see the package comment); GET and DELETE, which only stateful sessions use, get 405.
func HTTPHandler(api http.Handler, opts HTTPOptions) http.Handler {
	hc := &http.Client{Transport: InProcessTransport(api)}
	var once sync.Once
	getServer := func(r *http.Request) *mcp.Server {
		key := bearer(r)
		c, err := client.New(inProcessBase, key, client.WithHTTPClient(hc), client.WithUserAgent("aetherium-mcp/"+opts.Version))
		if err != nil {
			// The key was accepted by the API's authentication, so this cannot happen; a server without tools
			// is the SDK's way to refuse.
			once.Do(func() { logger(opts.Logger).Error("mcp: cannot build the in-process client", "err", err) })
			return nil
		}
		return New(c, opts.Options)
	}
	h := mcp.NewStreamableHTTPHandler(getServer, &mcp.StreamableHTTPOptions{
		Stateless: true,
		Logger:    opts.Logger,
		// DNS rebinding protection is for servers that trust whoever reaches localhost. Every request here carries
		// an API key a browser never adds by itself, and the protection would refuse a gateway behind a reverse
		// proxy on the same host (Host: the public name, peer: 127.0.0.1).
		DisableLocalhostProtection: true,
		MaxRequestBodyBytes:        opts.MaxBodyBytes,
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if bearer(r) == "" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="aetherium"`)
			http.Error(w, "an API key is required: send Authorization: Bearer <key>", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}

func logger(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}

func bearer(r *http.Request) string {
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return strings.TrimSpace(token)
}

// InProcessTransport is an http.RoundTripper that serves requests with h in this process, streaming the answer:
// the round trip returns once h has written its header (or returned), and the body is read while h writes it,
// so a large download is never held in memory. The handler's request has a context of its own that carries the
// caller's cancellation but none of its values (the http.Server aside): h sees a request as fresh as one from
// the network (a router's state in the caller's context would otherwise leak into h's routing).
func InProcessTransport(h http.Handler) http.RoundTripper { return inProcess{h: h} }

type inProcess struct{ h http.Handler }

func (t inProcess) RoundTrip(req *http.Request) (*http.Response, error) {
	base := context.Background()
	if srv := req.Context().Value(http.ServerContextKey); srv != nil {
		// The one value kept: handlers such as httputil.ReverseProxy abort a failed answer the way net/http
		// expects only when they know they are served by an http.Server.
		base = context.WithValue(base, http.ServerContextKey, srv)
	}
	ctx, cancel := context.WithCancel(base)
	stop := context.AfterFunc(req.Context(), cancel)
	sreq := req.Clone(ctx)
	sreq.RequestURI = req.URL.RequestURI()
	sreq.RemoteAddr = "in-process"
	if sreq.Body == nil {
		sreq.Body = http.NoBody
	}
	pr, pw := io.Pipe()
	w := &pipeWriter{header: http.Header{}, pw: pw, ready: make(chan struct{})}
	go func() {
		defer func() {
			// A panic in a goroutine would end the process: here it ends the answer, cut short, as net/http
			// does with a handler that panics (http.ErrAbortHandler, say, from a proxy whose upstream failed).
			if p := recover(); p != nil {
				w.writeHeader(http.StatusInternalServerError)
				pw.CloseWithError(fmt.Errorf("in-process handler aborted the answer: %v", p))
			}
		}()
		t.h.ServeHTTP(w, sreq)
		w.writeHeader(http.StatusOK) // a handler that wrote nothing answered 200
		pw.Close()
	}()
	select {
	case <-w.ready:
	case <-req.Context().Done():
		cancel()
		pr.CloseWithError(req.Context().Err())
		return nil, req.Context().Err()
	}
	resp := &http.Response{
		Status:        http.StatusText(w.status),
		StatusCode:    w.status,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        w.sent,
		Body:          &pipeBody{PipeReader: pr, done: func() { stop(); cancel() }},
		ContentLength: -1,
		Request:       req,
	}
	if n, err := strconv.ParseInt(w.sent.Get("Content-Length"), 10, 64); err == nil && n >= 0 {
		resp.ContentLength = n
	}
	return resp, nil
}

// pipeWriter is the handler's http.ResponseWriter: the header is sent once (a copy, so later changes by the
// handler are not seen, as on a network), and the body goes into the pipe the client reads.
type pipeWriter struct {
	header http.Header
	sent   http.Header
	status int
	pw     *io.PipeWriter
	once   sync.Once
	ready  chan struct{}
}

func (w *pipeWriter) Header() http.Header { return w.header }

func (w *pipeWriter) WriteHeader(code int) {
	if code >= 100 && code < 200 {
		return // informational answers are not passed on
	}
	w.writeHeader(code)
}

func (w *pipeWriter) writeHeader(code int) {
	w.once.Do(func() {
		w.status, w.sent = code, w.header.Clone()
		close(w.ready)
	})
}

func (w *pipeWriter) Write(p []byte) (int, error) {
	w.writeHeader(http.StatusOK)
	return w.pw.Write(p)
}

// Flush is a no-op: the pipe has no buffer, every Write reaches the reader.
func (w *pipeWriter) Flush() { w.writeHeader(http.StatusOK) }

// pipeBody ends the handler's request when the client closes the body, so a handler still writing stops.
type pipeBody struct {
	*io.PipeReader
	done func()
}

func (b *pipeBody) Close() error {
	b.done()
	return b.PipeReader.Close()
}
