package credproxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
)

// A git-receive-pack request body begins with pkt-lines (four hex digits giving the line's length including
// themselves, then the payload): optional "shallow <oid>" lines and the ref update commands
// "<old-oid> <new-oid> <refname>" (the first followed by NUL and the client's capabilities), ended by a
// flush-pkt "0000"; push options and the packfile follow. The proxy reads only that command section, with tight
// bounds, to hold a push to the refs its grant names, then forwards the bytes it read followed by the rest of
// the body untouched.

const (
	// maxPushCommands bounds the ref updates of one push.
	maxPushCommands = 1000
	// maxPushCommandBytes bounds the pkt-lines read before the flush-pkt.
	maxPushCommandBytes = 64 << 10
)

// refUpdate is one command of a push.
type refUpdate struct {
	Old, New string // object ids in hex (40 for SHA-1, 64 for SHA-256)
	Ref      string // full ref name
}

// deletion reports whether the command deletes its ref (a new id of all zeros).
func (u refUpdate) deletion() bool { return strings.Trim(u.New, "0") == "" }

// errBadPush marks a receive-pack request whose command section is malformed or over the bounds.
var errBadPush = errors.New("malformed push request")

// readReceivePackCommands reads the command section of a receive-pack request body from r, up to and including
// its flush-pkt. It returns the commands and every byte it read (to be forwarded before the rest of the body).
// An error from r is returned wrapped as is; a malformed or oversized section is errBadPush.
func readReceivePackCommands(r io.Reader) ([]refUpdate, []byte, error) {
	var head []byte
	var cmds []refUpdate
	var hdr [4]byte
	for {
		if len(head)+4 > maxPushCommandBytes {
			return nil, head, fmt.Errorf("%w: over %d bytes of commands", errBadPush, maxPushCommandBytes)
		}
		if k, err := io.ReadFull(r, hdr[:]); err != nil {
			return nil, append(head, hdr[:k]...), readErr(err)
		}
		head = append(head, hdr[:]...)
		n, err := strconv.ParseUint(string(hdr[:]), 16, 16)
		if err != nil || strings.ContainsAny(string(hdr[:]), "+-xX") {
			return nil, head, fmt.Errorf("%w: bad pkt-line length %q", errBadPush, hdr[:])
		}
		if n == 0 {
			return cmds, head, nil // flush-pkt: the end of the commands
		}
		if n <= 4 {
			return nil, head, fmt.Errorf("%w: unexpected pkt-line %q before the flush", errBadPush, hdr[:])
		}
		if len(head)+int(n)-4 > maxPushCommandBytes {
			return nil, head, fmt.Errorf("%w: over %d bytes of commands", errBadPush, maxPushCommandBytes)
		}
		start := len(head)
		head = append(head, make([]byte, n-4)...)
		if k, err := io.ReadFull(r, head[start:]); err != nil {
			return nil, head[:start+k], readErr(err)
		}
		line := head[start:]
		line = bytes.TrimSuffix(line, []byte("\n"))
		if i := bytes.IndexByte(line, 0); i >= 0 {
			line = line[:i] // capabilities follow the NUL; git-receive-pack reads the command up to it
		}
		if oid, ok := bytes.CutPrefix(line, []byte("shallow ")); ok {
			if !isOID(string(oid)) {
				return nil, head, fmt.Errorf("%w: bad shallow line", errBadPush)
			}
			continue
		}
		if bytes.HasPrefix(line, []byte("push-cert")) {
			return nil, head, fmt.Errorf("%w: signed pushes are not supported through the proxy", errBadPush)
		}
		u, err := parseRefUpdate(string(line))
		if err != nil {
			return nil, head, err
		}
		if len(cmds) == maxPushCommands {
			return nil, head, fmt.Errorf("%w: over %d ref updates", errBadPush, maxPushCommands)
		}
		cmds = append(cmds, u)
	}
}

// readErr keeps the reader's own errors (a size limit, a broken connection) and calls an early end malformed.
func readErr(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: the request ends before the flush-pkt", errBadPush)
	}
	return err
}

func parseRefUpdate(line string) (refUpdate, error) {
	old, rest, ok1 := strings.Cut(line, " ")
	nw, ref, ok2 := strings.Cut(rest, " ")
	if !ok1 || !ok2 || !isOID(old) || !isOID(nw) || len(old) != len(nw) || ref == "" {
		return refUpdate{}, fmt.Errorf("%w: bad ref update command", errBadPush)
	}
	return refUpdate{Old: old, New: nw, Ref: ref}, nil
}

// isOID reports whether s is a SHA-1 or SHA-256 object id in lower-case hex, as git sends them.
func isOID(s string) bool {
	if len(s) != 40 && len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// refusedUpdate returns the first command a grant limited to refs does not allow, and why; ok when all are allowed.
func refusedUpdate(cmds []refUpdate, refs []string) (reason string, ok bool) {
	for _, u := range cmds {
		switch {
		case !slices.Contains(refs, u.Ref):
			return fmt.Sprintf("pushing to %s is not allowed (this token may push only to %s)",
				u.Ref, strings.Join(refs, ", ")), false
		case u.deletion():
			return fmt.Sprintf("deleting %s is not allowed", u.Ref), false
		}
	}
	return "", true
}

// checkPushRefs reads the commands of a receive-pack request under a grant limited to refs and either answers
// the request (refused, malformed) and returns false, or puts the bytes it read back in front of r.Body and
// returns true. r.Body is already bounded by the push size limit.
func checkPushRefs(w http.ResponseWriter, r *http.Request, refs []string) bool {
	if ce := r.Header.Get("Content-Encoding"); ce != "" && !strings.EqualFold(ce, "identity") {
		gitRefusal(w, http.StatusUnsupportedMediaType,
			"a push request with Content-Encoding "+ce+" cannot be checked; send it uncompressed")
		return false
	}
	cmds, head, err := readReceivePackCommands(r.Body)
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		gitRefusal(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("push over %d bytes", mbe.Limit))
		return false
	case errors.Is(err, errBadPush):
		gitRefusal(w, http.StatusBadRequest, err.Error())
		return false
	case err != nil:
		gitRefusal(w, http.StatusBadRequest, "cannot read the push request")
		return false
	}
	if reason, ok := refusedUpdate(cmds, refs); !ok {
		gitRefusal(w, http.StatusForbidden, reason)
		return false
	}
	r.Body = struct {
		io.Reader
		io.Closer
	}{io.MultiReader(bytes.NewReader(head), r.Body), r.Body}
	return true
}

// gitRefusal answers a git client in plain text, which git shows to its user.
func gitRefusal(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Aetherium-Proxy-Error", "1")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, "aetherium credential proxy: "+msg+"\n")
}
