package credproxy

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"net/url"
	"regexp"
	"strings"
)

// Git: the guest speaks git's smart HTTP protocol to the proxy, which forwards to the real server with the
// owner's credential. The guest clones
//
//	http://<gateway>:<port>/git/github.com/org/repo.git
//
// sending its proxy token (git's http.extraHeader, see GuestEnv); the proxy checks that the token's grant names
// the repository (and allows pushing for git-receive-pack), then sends the request to https://github.com/org/
// repo.git/... with basic auth made of the owner's GITHUB_TOKEN secret. Only the three endpoints of the smart
// protocol are served, only to configured hosts (the guest's path never chooses the server), with an allow-list
// of request and response headers; redirects are refused (a redirect would send git, and its token, elsewhere),
// and pushes and fetches are bounded in size. Packs stream through in both directions, never buffered. A grant
// with PushRefs has each push's ref update commands read first (receivepack.go): an update of another ref, or a
// deletion, is refused before the upstream sees any of the request.

// gitPathRE splits /git/<host>/<repo>/<endpoint>: a repository is one or more path segments of safe characters.
var gitPathRE = regexp.MustCompile(`^([a-z0-9.-]+)/((?:[A-Za-z0-9_.~-]+/)*[A-Za-z0-9_.~-]+)/(info/refs|git-upload-pack|git-receive-pack)$`)

// gitRequestHeaders are the headers a git client's request keeps on its way upstream.
var gitRequestHeaders = []string{"Accept", "Accept-Encoding", "Content-Type", "Content-Encoding", "Git-Protocol",
	"User-Agent", "Content-Length"}

// gitResponseHeaders are the headers of the upstream's answer the guest sees.
var gitResponseHeaders = []string{"Content-Type", "Content-Encoding", "Content-Length", "Cache-Control",
	"Expires", "Pragma"}

func (p *Proxy) serveGit(w http.ResponseWriter, r *http.Request, c caller, rest string) {
	m := gitPathRE.FindStringSubmatch(rest)
	if m == nil {
		writeError(w, http.StatusNotFound, "not_found_error",
			"not a git smart-HTTP path: want /git/<host>/<repo>/{info/refs,git-upload-pack,git-receive-pack}")
		return
	}
	hostName, repo, endpoint := m[1], m[2], m[3]
	for _, seg := range strings.Split(repo, "/") {
		if seg == "." || seg == ".." {
			writeError(w, http.StatusBadRequest, "invalid_request_error", "bad repository path")
			return
		}
	}
	host, ok := p.git[hostName]
	if !ok {
		writeError(w, http.StatusForbidden, "permission_error", fmt.Sprintf("git host %s is not configured", hostName))
		return
	}
	service := endpoint
	switch endpoint {
	case "info/refs":
		service = r.URL.Query().Get("service")
		if r.Method != http.MethodGet || (service != "git-upload-pack" && service != "git-receive-pack") {
			writeError(w, http.StatusForbidden, "permission_error",
				"only the smart protocol is served (info/refs?service=git-upload-pack or git-receive-pack)")
			return
		}
	default:
		if r.Method != http.MethodPost {
			writeError(w, http.StatusMethodNotAllowed, "invalid_request_error", endpoint+" takes POST")
			return
		}
	}
	full := hostName + "/" + repo
	if !c.grant.allowsRepo(full) {
		writeError(w, http.StatusForbidden, "permission_error",
			fmt.Sprintf("this vm's token does not allow repository %s", normalizeRepo(full)))
		return
	}
	if service == "git-receive-pack" && !c.grant.GitPush {
		writeError(w, http.StatusForbidden, "permission_error",
			fmt.Sprintf("this vm's token does not allow pushing to %s", normalizeRepo(full)))
		return
	}
	secretName := host.Secret
	if c.grant.GitSecret != "" {
		secretName = c.grant.GitSecret // the run's own repo.credentials_secret
	}
	cred, missing, err := p.secret(r.Context(), c.vm.OwnerID, secretName)
	if missing {
		missingSecret(w, secretName)
		return
	}
	if err != nil {
		p.log.Error("read secret", "vm_id", c.vm.ID, "secret", secretName, "err", err)
		writeError(w, http.StatusBadGateway, "api_error", "cannot read the owner's "+secretName+" secret now")
		return
	}
	query := ""
	if endpoint == "info/refs" {
		query = url.Values{"service": {service}}.Encode()
	}
	if endpoint == "git-receive-pack" {
		if r.ContentLength > p.cfg.MaxGitPush {
			// Refused before the upstream sees any of it (git sends small pushes with a length, large ones
			// chunked: those are cut at the limit below).
			writeError(w, http.StatusRequestEntityTooLarge, "request_too_large",
				fmt.Sprintf("push over %d bytes", p.cfg.MaxGitPush))
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, p.cfg.MaxGitPush)
		if len(c.grant.PushRefs) > 0 && !checkPushRefs(w, r, c.grant.PushRefs) {
			p.log.Warn("git push refused", "vm_id", c.vm.ID, "run_id", c.grant.RunID, "repo", full)
			return
		}
	}
	rp := &httputil.ReverseProxy{
		Transport:     p.rt,
		FlushInterval: -1,
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL = &url.URL{Scheme: host.base.Scheme, Host: host.base.Host,
				Path: host.base.Path + "/" + repo + "/" + endpoint, RawQuery: query}
			pr.Out.Host = host.base.Host
			h := http.Header{}
			for _, k := range gitRequestHeaders {
				if v, ok := pr.In.Header[k]; ok {
					h[k] = v
				}
			}
			pr.Out.Header = h
			pr.Out.SetBasicAuth(host.Username, cred)
		},
		ModifyResponse: func(resp *http.Response) error {
			h := http.Header{}
			for _, k := range gitResponseHeaders {
				if v, ok := resp.Header[k]; ok {
					h[k] = v
				}
			}
			resp.Header = h
			switch {
			case resp.StatusCode >= 300 && resp.StatusCode < 400:
				return fmt.Errorf("%w: %s answered %d (a redirect is not followed)", errGitUpstream, hostName, resp.StatusCode)
			case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
				return fmt.Errorf("%w: %s refused the owner's %s (%d)", errGitUpstream, hostName, secretName, resp.StatusCode)
			}
			resp.Body = &limitedBody{rc: resp.Body, left: p.cfg.MaxGitFetch}
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			var mbe *http.MaxBytesError
			switch {
			case errors.As(err, &mbe):
				writeError(w, http.StatusRequestEntityTooLarge, "request_too_large",
					fmt.Sprintf("push over %d bytes", mbe.Limit))
			case errors.Is(err, errGitUpstream):
				writeError(w, http.StatusBadGateway, "api_error", err.Error())
			case r.Context().Err() != nil:
			default:
				p.log.Warn("git upstream failed", "vm_id", c.vm.ID, "host", hostName, "err", err)
				writeError(w, http.StatusBadGateway, "api_error", "git host "+hostName+" unreachable")
			}
		},
		ErrorLog: slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
	}
	p.log.Info("git", "vm_id", c.vm.ID, "run_id", c.grant.RunID, "repo", full, "service", service)
	rp.ServeHTTP(w, r)
}

var (
	errGitUpstream = errors.New("git upstream")
	errGitTooBig   = errors.New("git fetch over the proxy's size limit")
)

// limitedBody ends a response with an error once it has passed its limit (the transfer is cut, not truncated
// silently: git sees a broken pack).
type limitedBody struct {
	rc   io.ReadCloser
	left int64
}

func (l *limitedBody) Read(p []byte) (int, error) {
	if l.left <= 0 {
		// At the limit: fine if the body ends here, an error if there is more.
		var b [1]byte
		if n, err := l.rc.Read(b[:]); n == 0 && err != nil {
			return 0, err
		}
		return 0, errGitTooBig
	}
	if int64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.rc.Read(p)
	l.left -= int64(n)
	return n, err
}

func (l *limitedBody) Close() error { return l.rc.Close() }
