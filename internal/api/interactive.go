package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/aetherium/aetherium/internal/workerapi/wire"
	"github.com/aetherium/aetherium/pkg/client"
)

// The interactive routes (files, background processes, shells) need the VM's guest agent, which only the worker
// hosting the VM can reach. The gateway authenticates the user, checks that the VM is theirs and running and that
// its worker is alive, validates the request (internal/workerapi/wire), then proxies it to the worker's internal
// API with the cluster token in place of the user's credentials. Bodies and answers stream through (an upload or a
// download of any size holds no more than a buffer here), and so does the shell's WebSocket.

// errClusterToken reports that a worker refused the gateway's cluster token.
var errClusterToken = errors.New("the worker refused the cluster token")

// proxyTarget is where one request goes; Rewrite finds it in the request's context.
type proxyTarget struct {
	base  *url.URL
	path  string
	query url.Values
	// body replaces the request's body (a validated, re-encoded JSON body); nil with stream false sends none.
	body   []byte
	stream bool // pass the request's body on as it arrives (uploads)
}

type proxyKey struct{}

// newWorkerTransport is the transport to the workers: no environment proxies (this is cluster traffic), a
// bounded connect, and no bound on answers, which may be a long download or a wait of up to MaxWait.
func newWorkerTransport() *http.Transport {
	return &http.Transport{
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          100,
		MaxIdleConnsPerHost:   32,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
		WriteBufferSize:       64 << 10,
		ReadBufferSize:        64 << 10,
	}
}

// bufferPool lends the proxy its copy buffers: larger than its default 32 KiB, for throughput.
type bufferPool struct{ p sync.Pool }

func (b *bufferPool) Get() []byte {
	if v, ok := b.p.Get().(*[]byte); ok {
		return *v
	}
	return make([]byte, 256<<10)
}

func (b *bufferPool) Put(buf []byte) { b.p.Put(&buf) }

func (s *server) newProxy(transport http.RoundTripper) *httputil.ReverseProxy {
	if transport == nil {
		transport = newWorkerTransport()
	}
	return &httputil.ReverseProxy{
		Rewrite:        s.rewrite,
		Transport:      transport,
		BufferPool:     &bufferPool{},
		ErrorHandler:   s.proxyError,
		ModifyResponse: s.proxyResponse,
		// Answers of unknown length (none today) are flushed as they come; downloads have a length and are
		// copied in large buffers.
		FlushInterval: 0,
	}
}

func (s *server) rewrite(pr *httputil.ProxyRequest) {
	t, _ := pr.In.Context().Value(proxyKey{}).(*proxyTarget)
	out := pr.Out
	out.URL.Scheme, out.URL.Host = t.base.Scheme, t.base.Host
	out.URL.Path = strings.TrimRight(t.base.Path, "/") + t.path
	out.URL.RawPath = ""
	out.URL.RawQuery = t.query.Encode()
	out.Host = ""
	// The user's credentials stop here: the worker trusts the cluster token, and the gateway has done the rest.
	for _, h := range []string{"Authorization", "Proxy-Authorization", "Cookie"} {
		out.Header.Del(h)
	}
	out.Header.Set("Authorization", "Bearer "+s.clusterToken)
	out.Header.Set(wire.RequestIDHeader, requestIDFrom(pr.In.Context()))
	switch {
	case t.body != nil:
		out.Body = io.NopCloser(bytes.NewReader(t.body))
		out.ContentLength = int64(len(t.body))
		out.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(t.body)), nil }
		out.Header.Set("Content-Type", "application/json")
	case !t.stream:
		out.Body, out.ContentLength, out.GetBody = http.NoBody, 0, nil
		out.Header.Del("Content-Type")
		out.Header.Del("Content-Length")
		out.Header.Del("Transfer-Encoding")
	}
}

// proxyError answers when the worker could not be asked or answered nothing usable.
func (s *server) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	t, _ := r.Context().Value(proxyKey{}).(*proxyTarget)
	target := ""
	if t != nil {
		target = t.base.Host
	}
	if errors.Is(err, errClusterToken) {
		s.log.ErrorContext(r.Context(), "the worker refused this gateway's cluster token: gateway and workers must share cluster_token",
			"worker", target, "request_id", requestIDFrom(r.Context()))
		s.writeError(w, r, http.StatusServiceUnavailable, client.CodeUnavailable,
			"the gateway is not allowed to reach the worker hosting this vm (misconfigured cluster token); tell the administrator")
		return
	}
	if r.Context().Err() != nil {
		return // the client went away; nobody reads an answer
	}
	s.log.WarnContext(r.Context(), "worker unreachable", "worker", target, "err", err, "request_id", requestIDFrom(r.Context()))
	w.Header().Set("Retry-After", "5")
	s.writeError(w, r, http.StatusServiceUnavailable, client.CodeUnavailable,
		"the worker hosting this vm cannot be reached; retry later")
}

// proxyResponse turns a refused cluster token into a gateway problem: the user's own key was fine.
func (s *server) proxyResponse(resp *http.Response) error {
	if resp.StatusCode == http.StatusUnauthorized {
		_ = resp.Body.Close()
		return errClusterToken
	}
	return nil
}

// forward resolves the VM's worker and proxies the request to it. The target path is the worker's prefix, the
// VM and suffix; query and body are the validated ones.
func (s *server) forward(w http.ResponseWriter, r *http.Request, suffix string, query url.Values, body any, stream bool) {
	id, ok := s.pathID(w, r, "vm")
	if !ok {
		return
	}
	ctx := r.Context()
	ep, err := s.svc.VMEndpoint(ctx, ownerFrom(ctx), id)
	if err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	if s.clusterToken == "" {
		s.log.ErrorContext(ctx, "interactive request refused: this gateway has no cluster token (cluster_token)")
		s.writeError(w, r, http.StatusServiceUnavailable, client.CodeUnavailable,
			"files, processes and shells are not configured on this server (no cluster token); tell the administrator")
		return
	}
	base, err := url.Parse(ep.URL)
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" {
		s.log.ErrorContext(ctx, "worker advertises an invalid api url", "worker_id", ep.WorkerID, "url", ep.URL)
		s.writeError(w, r, http.StatusServiceUnavailable, client.CodeUnavailable,
			"the worker hosting this vm cannot be reached; retry later")
		return
	}
	t := &proxyTarget{base: base, path: wire.PathPrefix + "/" + id + suffix, query: query, stream: stream}
	if body != nil {
		if t.body, err = json.Marshal(body); err != nil {
			s.internalError(w, r, err)
			return
		}
	}
	if query == nil {
		t.query = url.Values{}
	}
	s.proxy.ServeHTTP(w, r.WithContext(context.WithValue(ctx, proxyKey{}, t)))
}

// writeRequestError answers a request the wire package refused.
func (s *server) writeRequestError(w http.ResponseWriter, r *http.Request, err error) {
	if we, ok := wire.AsError(err); ok {
		s.writeError(w, r, we.Status, we.Code, we.Message)
		return
	}
	s.internalError(w, r, err)
}

func (s *server) downloadFile(w http.ResponseWriter, r *http.Request) {
	p, err := wire.ParsePath(r.URL.Query())
	if err != nil {
		s.writeRequestError(w, r, err)
		return
	}
	s.forward(w, r, "/files", wire.PathQuery(p), nil, false)
}

// uploadFile streams the body to the worker: any size, any content type; only the query is checked here.
func (s *server) uploadFile(w http.ResponseWriter, r *http.Request) {
	u, err := wire.ParseUpload(r.URL.Query())
	if err != nil {
		s.writeRequestError(w, r, err)
		return
	}
	r.Body = wire.IdleBody(w, r.Body, wire.UploadIdleTimeout)
	s.forward(w, r, "/files", u.Query(), nil, true)
}

func (s *server) statPath(w http.ResponseWriter, r *http.Request) {
	p, err := wire.ParsePath(r.URL.Query())
	if err != nil {
		s.writeRequestError(w, r, err)
		return
	}
	s.forward(w, r, "/fs/stat", wire.PathQuery(p), nil, false)
}

func (s *server) listDir(w http.ResponseWriter, r *http.Request) {
	p, err := wire.ParsePath(r.URL.Query())
	if err != nil {
		s.writeRequestError(w, r, err)
		return
	}
	s.forward(w, r, "/fs/list", wire.PathQuery(p), nil, false)
}

func (s *server) makeDir(w http.ResponseWriter, r *http.Request) {
	var req client.MkdirRequest
	if !s.decodeJSON(w, r, &req) {
		return
	}
	if err := wire.NormalizeMkdir(&req); err != nil {
		s.writeRequestError(w, r, err)
		return
	}
	s.forward(w, r, "/fs/mkdir", nil, req, false)
}

func (s *server) removePath(w http.ResponseWriter, r *http.Request) {
	rm, err := wire.ParseRemove(r.URL.Query())
	if err != nil {
		s.writeRequestError(w, r, err)
		return
	}
	s.forward(w, r, "/fs", rm.Query(), nil, false)
}

func (s *server) startProcess(w http.ResponseWriter, r *http.Request) {
	var req client.StartProcessRequest
	if !s.decodeJSON(w, r, &req) {
		return
	}
	if err := wire.NormalizeStart(&req, s.svc.MaxTimeout()); err != nil {
		s.writeRequestError(w, r, err)
		return
	}
	s.forward(w, r, "/processes", nil, req, false)
}

func (s *server) listProcesses(w http.ResponseWriter, r *http.Request) {
	s.forward(w, r, "/processes", nil, nil, false)
}

// processID reads {pid}: one the agent could not have made is answered 404 like a missing process.
func (s *server) processID(w http.ResponseWriter, r *http.Request) (string, bool) {
	pid := chi.URLParam(r, "pid")
	if !wire.ValidProcessID(pid) {
		if len(pid) > 64 {
			pid = pid[:64] + "..."
		}
		s.writeError(w, r, http.StatusNotFound, client.CodeProcessNotFound, "process "+pid+": not found")
		return "", false
	}
	return pid, true
}

func (s *server) processOutput(w http.ResponseWriter, r *http.Request) {
	pid, ok := s.processID(w, r)
	if !ok {
		return
	}
	o, err := wire.ParseOutput(r.URL.Query())
	if err != nil {
		s.writeRequestError(w, r, err)
		return
	}
	s.forward(w, r, "/processes/"+pid+"/output", o.Query(), nil, false)
}

func (s *server) waitProcess(w http.ResponseWriter, r *http.Request) {
	pid, ok := s.processID(w, r)
	if !ok {
		return
	}
	d, err := wire.ParseWait(r.URL.Query(), s.maxWait)
	if err != nil {
		s.writeRequestError(w, r, err)
		return
	}
	s.forward(w, r, "/processes/"+pid+"/wait", wire.WaitQuery(d), nil, false)
}

func (s *server) signalProcess(w http.ResponseWriter, r *http.Request) {
	pid, ok := s.processID(w, r)
	if !ok {
		return
	}
	var req client.SignalRequest
	if !s.decodeJSON(w, r, &req) {
		return
	}
	if err := wire.NormalizeSignal(&req); err != nil {
		s.writeRequestError(w, r, err)
		return
	}
	s.forward(w, r, "/processes/"+pid+"/signal", nil, req, false)
}

func (s *server) removeProcess(w http.ResponseWriter, r *http.Request) {
	pid, ok := s.processID(w, r)
	if !ok {
		return
	}
	s.forward(w, r, "/processes/"+pid, nil, nil, false)
}

// shell proxies the WebSocket of an interactive command. Only the handshake passes through the gateway's
// checks; the messages then flow between client and worker untouched.
func (s *server) shell(w http.ResponseWriter, r *http.Request) {
	if !headerHasToken(r.Header, "Connection", "upgrade") || !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		s.writeError(w, r, http.StatusBadRequest, client.CodeBadRequest,
			"this route is a WebSocket: connect with a WebSocket client (Connection: Upgrade, Upgrade: websocket)")
		return
	}
	sh, err := wire.ParseShell(r.URL.Query())
	if err != nil {
		s.writeRequestError(w, r, err)
		return
	}
	s.forward(w, r, "/shell", sh.Query(), nil, false)
}

func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}
