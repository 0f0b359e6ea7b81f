// Package wire holds the requests of the interactive routes (files, processes, shells) as both ends parse them:
// the gateway validates every request with these functions before it proxies it, and the worker validates it again
// with the same functions (it trusts the gateway's token, not the shape of what arrives). A request forwarded by the
// gateway is rebuilt from the parsed value (Query, or the re-encoded body), so only known, valid parameters reach a
// worker.
package wire

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"path"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/aetherium/aetherium/pkg/client"
)

// PathPrefix is where a worker serves the routes of one VM: PathPrefix + "/" + vmID + "/files" and so on. The
// suffixes are those of the public routes under /api/v1/vms/{id}.
const PathPrefix = "/internal/v1/vms"

// HealthPath is the worker API's health check (GET, with the cluster token like every route): 200 when the worker
// serves and its VM backend answers, 503 otherwise. `aetherium healthcheck --role worker` calls it.
const HealthPath = "/internal/v1/health"

// RequestIDHeader carries the gateway's request id to the worker, for logs on both sides.
const RequestIDHeader = "X-Request-Id"

// Limits of the interactive routes.
const (
	// MaxPathLen is PATH_MAX less its NUL: the guest's kernel refuses longer paths anyway.
	MaxPathLen = 4095
	// MaxOutputRead bounds one read of a process's output (the agent keeps 1 MiB per stream anyway).
	MaxOutputRead = 16 << 20
	// DefaultWait is how long POST /processes/{pid}/wait waits when no timeout is given.
	DefaultWait = 60 * time.Second
	// DefaultRows and DefaultCols are the terminal size of a shell that gives none.
	DefaultRows = 24
	DefaultCols = 80
	// DefaultTerm is the TERM of a shell with a terminal that gives none.
	DefaultTerm = "xterm-256color"

	maxArgs   = 4096
	maxArgLen = 128 << 10
	maxEnv    = 256
)

var (
	envKeyRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,255}$`)
	// ownerRE is "user[:group]", each a name or a number, as the guest agent takes it.
	ownerRE  = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,31})?$`)
	termRE   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$`)
	signalRE = regexp.MustCompile(`^[A-Za-z0-9+]{1,16}$`)
)

// Error is a request the routes refuse, with its HTTP status and API error code.
type Error struct {
	Status  int
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Message }

// AsError returns err as an *Error if it is one.
func AsError(err error) (*Error, bool) {
	var we *Error
	ok := errors.As(err, &we)
	return we, ok
}

// badRequest is a parameter that does not parse (400).
func badRequest(field, format string, a ...any) error {
	return &Error{Status: http.StatusBadRequest, Code: client.CodeBadRequest, Message: field + ": " + fmt.Sprintf(format, a...)}
}

// invalid is a value out of its range (422), as the rest of the API reports it.
func invalid(field, format string, a ...any) error {
	return &Error{Status: http.StatusUnprocessableEntity, Code: client.CodeValidation, Message: field + ": " + fmt.Sprintf(format, a...)}
}

// parseBounded parses a decimal integer between lo and hi: what is not digits is a 400 "is not a number", a
// number out of the range (however many digits it has) a 422 naming the range.
func parseBounded(field, s string, lo, hi uint64) (uint64, error) {
	n, err := strconv.ParseUint(s, 10, 64)
	var ne *strconv.NumError
	if errors.As(err, &ne) && errors.Is(ne.Err, strconv.ErrRange) {
		return 0, invalid(field, "must be between %d and %d (got %s)", lo, hi, s)
	}
	if err != nil {
		return 0, badRequest(field, "%q is not a number", s)
	}
	if n < lo || n > hi {
		return 0, invalid(field, "must be between %d and %d (got %d)", lo, hi, n)
	}
	return n, nil
}

// CleanPath checks a path of the guest and returns it cleaned: absolute, without NUL, at most MaxPathLen bytes.
// ".." elements are resolved lexically; the VM is the caller's own, so there is nothing to escape from.
func CleanPath(field, p string) (string, error) {
	switch {
	case p == "":
		return "", invalid(field, "is required")
	case strings.IndexByte(p, 0) >= 0:
		return "", invalid(field, "must not contain NUL bytes")
	case !strings.HasPrefix(p, "/"):
		return "", invalid(field, "must be an absolute path (got %q)", p)
	case len(p) > MaxPathLen:
		return "", invalid(field, "is longer than %d bytes", MaxPathLen)
	}
	return path.Clean(p), nil
}

// ParseMode parses permission bits written in octal ("0755", "755", "4755"); empty gives 0 (the default).
func ParseMode(field, s string) (uint32, error) {
	if s == "" {
		return 0, nil
	}
	n, err := strconv.ParseUint(s, 8, 32)
	if err != nil {
		return 0, badRequest(field, "%q is not an octal mode like 0644", s)
	}
	if n > 0o7777 {
		return 0, invalid(field, "%q has bits beyond 07777", s)
	}
	return uint32(n), nil
}

// FormatMode writes permission bits as ParseMode reads them ("0644").
func FormatMode(m uint32) string { return fmt.Sprintf("%04o", m&0o7777) }

func checkOwner(field, owner string) error {
	if owner != "" && !ownerRE.MatchString(owner) {
		return invalid(field, "must be user[:group] (names or numbers), got %q", owner)
	}
	return nil
}

// parseBool reads a boolean parameter; absent gives def.
func parseBool(q url.Values, name string, def bool) (bool, error) {
	s := q.Get(name)
	if s == "" {
		return def, nil
	}
	b, err := strconv.ParseBool(s)
	if err != nil {
		return false, badRequest(name, "%q is not a boolean (true or false)", s)
	}
	return b, nil
}

// single refuses a parameter given twice: which one counts would otherwise depend on the reader.
func single(q url.Values, names ...string) error {
	for _, n := range names {
		if len(q[n]) > 1 {
			return badRequest(n, "is given %d times", len(q[n]))
		}
	}
	return nil
}

// ParsePath reads the path parameter of GET /files, /fs/stat and /fs/list.
func ParsePath(q url.Values) (string, error) {
	if err := single(q, "path"); err != nil {
		return "", err
	}
	return CleanPath("path", q.Get("path"))
}

// PathQuery is the query of a request that names only a path.
func PathQuery(p string) url.Values { return url.Values{"path": {p}} }

// Upload is PUT /files: where and how the body is written.
type Upload struct {
	Path string
	// Mode is the permission bits; 0 means the default, 0644.
	Mode uint32
	// Owner is "user[:group]"; empty: the agent's user.
	Owner        string
	MkdirParents bool
	// Overwrite replaces an existing file (the default); false fails with already_exists instead.
	Overwrite bool
}

// ParseUpload reads the query of PUT /files: path, mode, owner (or uid and gid), mkdir_parents, overwrite.
func ParseUpload(q url.Values) (Upload, error) {
	var u Upload
	if err := single(q, "path", "mode", "owner", "uid", "gid", "mkdir_parents", "overwrite"); err != nil {
		return u, err
	}
	var err error
	if u.Path, err = CleanPath("path", q.Get("path")); err != nil {
		return u, err
	}
	if u.Mode, err = ParseMode("mode", q.Get("mode")); err != nil {
		return u, err
	}
	u.Owner = q.Get("owner")
	uid, gid := q.Get("uid"), q.Get("gid")
	if uid != "" || gid != "" {
		if u.Owner != "" {
			return u, invalid("owner", "give owner or uid/gid, not both")
		}
		if uid == "" {
			return u, invalid("gid", "needs uid too")
		}
		for _, p := range []struct{ name, v string }{{"uid", uid}, {"gid", gid}} {
			if p.v == "" {
				continue
			}
			if _, err := parseBounded(p.name, p.v, 0, 1<<31-1); err != nil {
				return u, err
			}
		}
		u.Owner = uid
		if gid != "" {
			u.Owner += ":" + gid
		}
	}
	if err := checkOwner("owner", u.Owner); err != nil {
		return u, err
	}
	if u.MkdirParents, err = parseBool(q, "mkdir_parents", false); err != nil {
		return u, err
	}
	if u.Overwrite, err = parseBool(q, "overwrite", true); err != nil {
		return u, err
	}
	return u, nil
}

// Query is the canonical query of u.
func (u Upload) Query() url.Values {
	q := url.Values{"path": {u.Path}, "overwrite": {strconv.FormatBool(u.Overwrite)}}
	if u.Mode != 0 {
		q.Set("mode", FormatMode(u.Mode))
	}
	if u.Owner != "" {
		q.Set("owner", u.Owner)
	}
	if u.MkdirParents {
		q.Set("mkdir_parents", "true")
	}
	return q
}

// Remove is DELETE /fs.
type Remove struct {
	Path      string
	Recursive bool
}

// ParseRemove reads the query of DELETE /fs: path and recursive. Removing / is refused.
func ParseRemove(q url.Values) (Remove, error) {
	var r Remove
	if err := single(q, "path", "recursive"); err != nil {
		return r, err
	}
	var err error
	if r.Path, err = CleanPath("path", q.Get("path")); err != nil {
		return r, err
	}
	if r.Path == "/" {
		return r, invalid("path", "refusing to remove /")
	}
	r.Recursive, err = parseBool(q, "recursive", false)
	return r, err
}

// Query is the canonical query of r.
func (r Remove) Query() url.Values {
	return url.Values{"path": {r.Path}, "recursive": {strconv.FormatBool(r.Recursive)}}
}

// NormalizeMkdir checks the body of POST /fs/mkdir and cleans its path and mode ("" stays the default).
func NormalizeMkdir(req *client.MkdirRequest) error {
	var err error
	if req.Path, err = CleanPath("path", req.Path); err != nil {
		return err
	}
	if req.Path == "/" {
		return invalid("path", "/ exists already")
	}
	mode, err := ParseMode("mode", req.Mode)
	if err != nil {
		// A mode in a JSON body is a value, not a query parameter: its errors are validation errors.
		var we *Error
		if errors.As(err, &we) {
			we.Status, we.Code = http.StatusUnprocessableEntity, client.CodeValidation
		}
		return err
	}
	if req.Mode != "" {
		req.Mode = FormatMode(mode)
	}
	return checkOwner("owner", req.Owner)
}

// NormalizeStart checks the body of POST /processes. maxTimeout bounds timeout_seconds.
func NormalizeStart(req *client.StartProcessRequest, maxTimeout time.Duration) error {
	switch {
	case req.Command == "" && req.Shell == "":
		return invalid("command", "is required (or shell)")
	case req.Command != "" && req.Shell != "":
		return invalid("shell", "give command or shell, not both")
	case req.Shell != "" && len(req.Args) > 0:
		return invalid("args", "go with command, not with shell")
	case strings.TrimSpace(req.Command+req.Shell) == "":
		return invalid("command", "is blank")
	}
	if err := checkArgv(append([]string{req.Command, req.Shell}, req.Args...), "args"); err != nil {
		return err
	}
	if err := checkEnv("env", req.Env); err != nil {
		return err
	}
	if req.WorkingDir != "" {
		wd, err := CleanPath("working_dir", req.WorkingDir)
		if err != nil {
			return err
		}
		req.WorkingDir = wd
	}
	if err := checkOwner("user", req.User); err != nil {
		return err
	}
	if maxSec := int(maxTimeout.Seconds()); req.TimeoutSeconds < 0 || req.TimeoutSeconds > maxSec {
		return invalid("timeout_seconds", "must be between 0 (none) and %d", maxSec)
	}
	if req.ID != "" && !ValidProcessID(req.ID) {
		return invalid("id", "must be 1-128 letters, digits, '.', '_' or '-'")
	}
	return nil
}

func checkArgv(argv []string, field string) error {
	if len(argv) > maxArgs {
		return invalid(field, "has more than %d arguments", maxArgs)
	}
	for i, a := range argv {
		if len(a) > maxArgLen || strings.IndexByte(a, 0) >= 0 {
			return invalid(field, "argument %d is longer than %d bytes or contains NUL", i, maxArgLen)
		}
	}
	return nil
}

func checkEnv(field string, env map[string]string) error {
	if len(env) > maxEnv {
		return invalid(field, "has more than %d variables", maxEnv)
	}
	for k, v := range env {
		if !envKeyRE.MatchString(k) {
			return invalid(field, "name %q is not a valid environment variable name", k)
		}
		if strings.IndexByte(v, 0) >= 0 {
			return invalid(field, "value of %q contains NUL", k)
		}
	}
	return nil
}

// ValidProcessID reports whether id can name a process of the agent. Ids travel in URLs and logs, so they are
// kept plain; one that is not cannot exist, so routes answer 404 for it.
func ValidProcessID(id string) bool {
	if len(id) == 0 || len(id) > 128 || id == "." || id == ".." { // "." and ".." would change the URL's path
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// Output is GET /processes/{pid}/output.
type Output struct {
	Stream   string // stdout or stderr
	Offset   int64
	MaxBytes int // 0: all that is kept
}

// ParseOutput reads the query of GET /processes/{pid}/output: stream (default stdout), offset, max_bytes.
func ParseOutput(q url.Values) (Output, error) {
	o := Output{Stream: "stdout"}
	if err := single(q, "stream", "offset", "max_bytes"); err != nil {
		return o, err
	}
	switch s := q.Get("stream"); s {
	case "", "stdout":
	case "stderr":
		o.Stream = s
	default:
		return o, invalid("stream", "must be stdout or stderr (got %q)", s)
	}
	if s := q.Get("offset"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 0 {
			return o, badRequest("offset", "%q is not a non-negative integer", s)
		}
		o.Offset = n
	}
	if s := q.Get("max_bytes"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return o, badRequest("max_bytes", "%q is not a non-negative integer", s)
		}
		if n > MaxOutputRead {
			return o, invalid("max_bytes", "must be at most %d", MaxOutputRead)
		}
		o.MaxBytes = n
	}
	return o, nil
}

// Query is the canonical query of o.
func (o Output) Query() url.Values {
	q := url.Values{"stream": {o.Stream}, "offset": {strconv.FormatInt(o.Offset, 10)}}
	if o.MaxBytes > 0 {
		q.Set("max_bytes", strconv.Itoa(o.MaxBytes))
	}
	return q
}

// ParseWait reads the timeout parameter of POST /processes/{pid}/wait (a Go duration, at most maxWait; default
// DefaultWait or maxWait if smaller).
func ParseWait(q url.Values, maxWait time.Duration) (time.Duration, error) {
	if err := single(q, "timeout"); err != nil {
		return 0, err
	}
	s := q.Get("timeout")
	if s == "" {
		return min(DefaultWait, maxWait), nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, badRequest("timeout", "%q is not a positive duration like 30s or 5m", s)
	}
	if d > maxWait {
		return 0, badRequest("timeout", "%s is longer than the maximum of %s", s, maxWait)
	}
	return d, nil
}

// WaitQuery is the canonical query of a wait.
func WaitQuery(d time.Duration) url.Values { return url.Values{"timeout": {d.String()}} }

// NormalizeSignal checks the body of POST /processes/{pid}/signal.
func NormalizeSignal(req *client.SignalRequest) error {
	if req.Signal == "" {
		return invalid("signal", "is required")
	}
	if !signalRE.MatchString(req.Signal) {
		return invalid("signal", "must be a signal name like TERM or a number (got %q)", req.Signal)
	}
	return nil
}

// Shell is GET /shell: the command of an interactive session and its terminal.
type Shell struct {
	// Command is the program and its arguments; empty: the guest's /bin/sh (a login shell with a terminal).
	Command []string
	// TTY runs the command on a pseudo-terminal of Rows x Cols (the default); without one, stdout and stderr
	// stay apart.
	TTY        bool
	Rows, Cols uint16
	Term       string
	Env        map[string]string
	WorkingDir string
	User       string
}

// ParseShell reads the query of GET /shell: command (repeated: the argv), tty, rows, cols, term, env (repeated
// KEY=VALUE), working_dir, user.
func ParseShell(q url.Values) (Shell, error) {
	sh := Shell{Command: q["command"], Rows: DefaultRows, Cols: DefaultCols}
	if err := single(q, "tty", "rows", "cols", "term", "working_dir", "user"); err != nil {
		return sh, err
	}
	if len(sh.Command) > 0 && strings.TrimSpace(sh.Command[0]) == "" {
		return sh, invalid("command", "the program is blank")
	}
	if err := checkArgv(sh.Command, "command"); err != nil {
		return sh, err
	}
	var err error
	if sh.TTY, err = parseBool(q, "tty", true); err != nil {
		return sh, err
	}
	for _, p := range []struct {
		name string
		dst  *uint16
	}{{"rows", &sh.Rows}, {"cols", &sh.Cols}} {
		s := q.Get(p.name)
		if s == "" {
			continue
		}
		n, err := parseBounded(p.name, s, 1, 10000)
		if err != nil {
			return sh, err
		}
		*p.dst = uint16(n)
	}
	sh.Term = q.Get("term")
	if sh.Term != "" && !termRE.MatchString(sh.Term) {
		return sh, invalid("term", "is not a terminal name like xterm-256color")
	}
	if len(q["env"]) > 0 {
		sh.Env = make(map[string]string, len(q["env"]))
		for _, kv := range q["env"] {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				return sh, badRequest("env", "%q is not KEY=VALUE", kv)
			}
			sh.Env[k] = v
		}
		if err := checkEnv("env", sh.Env); err != nil {
			return sh, err
		}
	}
	if wd := q.Get("working_dir"); wd != "" {
		if sh.WorkingDir, err = CleanPath("working_dir", wd); err != nil {
			return sh, err
		}
	}
	sh.User = q.Get("user")
	return sh, checkOwner("user", sh.User)
}

// Query is the canonical query of sh.
func (sh Shell) Query() url.Values {
	q := url.Values{"tty": {strconv.FormatBool(sh.TTY)}}
	if len(sh.Command) > 0 {
		q["command"] = sh.Command
	}
	if sh.TTY {
		q.Set("rows", strconv.Itoa(int(sh.Rows)))
		q.Set("cols", strconv.Itoa(int(sh.Cols)))
		if sh.Term != "" {
			q.Set("term", sh.Term)
		}
	}
	for k, v := range sh.Env {
		q.Add("env", k+"="+v)
	}
	if sh.WorkingDir != "" {
		q.Set("working_dir", sh.WorkingDir)
	}
	if sh.User != "" {
		q.Set("user", sh.User)
	}
	return q
}
