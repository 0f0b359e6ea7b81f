package secrets

import (
	"encoding/base64"
	"regexp"
	"slices"
	"strings"
)

// Mask replaces a scrubbed value.
const Mask = "***"

// MinScrubLen is the shortest value scrubbed: shorter ones ("a", "1") would mask ordinary output everywhere.
const MinScrubLen = 4

// minEncodedLen is the shortest base64 fragment scrubbed (see encodings).
const minEncodedLen = 8

// Scrubber replaces known secret values, and their base64 encodings, in text with Mask. It is safe for concurrent
// use; a Stream scrubs one stream of output written in pieces.
type Scrubber struct {
	patterns [][]byte      // longest first
	byFirst  [256][][]byte // patterns by their first byte, longest first
}

// NewScrubber returns a scrubber of values. Values shorter than MinScrubLen are not scrubbed.
func NewScrubber(values ...string) *Scrubber {
	seen := map[string]bool{}
	s := &Scrubber{}
	add := func(p string) {
		if p == "" || seen[p] {
			return
		}
		seen[p] = true
		s.patterns = append(s.patterns, []byte(p))
	}
	for _, v := range values {
		if len(v) < MinScrubLen {
			continue
		}
		add(v)
		for _, e := range encodings(v) {
			add(e)
		}
	}
	slices.SortFunc(s.patterns, func(a, b []byte) int { return len(b) - len(a) })
	for _, p := range s.patterns {
		s.byFirst[p[0]] = append(s.byFirst[p[0]], p)
	}
	return s
}

// encodings returns the base64 fragments that any base64 encoding (standard or URL alphabet, padded or not) of
// any text containing v must contain. Where v starts in the encoded text decides how its bytes fall into 3-byte
// groups, so there are three alignments; of each, only the characters that depend on v's bytes alone are kept (the
// first and last one or two depend on the bytes around v). `echo $SECRET | base64` thus shows no more of the
// secret than a character or two at each end. Fragments shorter than minEncodedLen are dropped.
//
// The commonest text around a value is a newline that ends it (echo $SECRET | base64), so the encodings of v and a
// final "\n" are added too: they cover its last characters as well.
func encodings(v string) []string {
	var out []string
	for _, after := range []string{"", "\n"} {
		for align := range 3 {
			buf := append(append(make([]byte, align), v...), after...)
			enc := base64.RawStdEncoding.EncodeToString(buf)
			skip := []int{0, 2, 3}[align] // characters depending on what precedes v
			// The characters of complete groups depend on nothing that follows; when the text ends here (padding
			// or the end of the output follows), the last, partial group is known too.
			for _, end := range []int{len(buf) / 3 * 4, len(enc)} {
				if end-skip < minEncodedLen {
					continue
				}
				frag := enc[skip:end]
				out = append(out, frag, strings.NewReplacer("+", "-", "/", "_").Replace(frag))
			}
		}
	}
	return out
}

// Empty reports whether the scrubber scrubs nothing.
func (s *Scrubber) Empty() bool { return s == nil || len(s.patterns) == 0 }

// String scrubs text.
func (s *Scrubber) String(text string) string {
	if s.Empty() {
		return text
	}
	out, _ := s.scan([]byte(text), true)
	return string(out)
}

// Bytes scrubs b into a new slice.
func (s *Scrubber) Bytes(b []byte) []byte {
	if s.Empty() {
		return b
	}
	out, _ := s.scan(b, true)
	return out
}

// scan scrubs buf and returns the result and how much of buf it consumed. With final, all of it; otherwise it
// stops where the rest of buf is the beginning of a pattern (what follows decides whether it is one), and the
// caller keeps that rest for the next scan. Earlier positions cannot start a match whatever follows, so the
// streamed result equals the result of scanning the whole text at once.
func (s *Scrubber) scan(buf []byte, final bool) ([]byte, int) {
	out := make([]byte, 0, len(buf))
	i := 0
next:
	for i < len(buf) {
		// Bytes that begin no pattern are copied in runs.
		run := i
		for run < len(buf) && s.byFirst[buf[run]] == nil {
			run++
		}
		out = append(out, buf[i:run]...)
		if i = run; i == len(buf) {
			break
		}
		for _, p := range s.byFirst[buf[i]] {
			rest := buf[i:]
			if len(rest) >= len(p) {
				if string(rest[:len(p)]) == string(p) {
					out = append(out, Mask...)
					i += len(p)
					continue next
				}
			} else if !final && string(p[:len(rest)]) == string(rest) {
				return out, i // may be the start of p: wait for more
			}
		}
		out = append(out, buf[i])
		i++
	}
	return out, i
}

// Stream scrubs one stream written in pieces: a value split between two writes is still scrubbed, because the end
// of a write that may be the beginning of a value (or of its base64) is held back until the next write or Flush.
// Output that cannot begin one passes at once.
type Stream struct {
	s    *Scrubber
	tail []byte
}

// Stream returns a new stream scrubber.
func (s *Scrubber) Stream() *Stream { return &Stream{s: s} }

// Write scrubs p and returns what may be passed on now.
func (st *Stream) Write(p []byte) []byte {
	if st.s.Empty() {
		return p
	}
	buf := append(st.tail, p...)
	out, n := st.s.scan(buf, false)
	st.tail = append([]byte(nil), buf[n:]...)
	return out
}

// Flush returns the scrubbed rest that Write held back.
func (st *Stream) Flush() []byte {
	if st.s.Empty() || len(st.tail) == 0 {
		return nil
	}
	out, _ := st.s.scan(st.tail, true)
	st.tail = nil
	return out
}

// credentialNameRE matches environment variable names that usually hold credentials.
var credentialNameRE = regexp.MustCompile(`(?i)(KEY|TOKEN|SECRET|PASSWORD|PASSWD|PASSPHRASE|CREDENTIAL|AUTH|PRIVATE|` +
	`(^|_)PAT($|_)|COOKIE|SESSION|SIGNATURE|DSN)`)

// LooksLikeCredential reports whether an environment variable of that name probably holds a credential.
func LooksLikeCredential(name string) bool { return credentialNameRE.MatchString(name) }

// MaskEnv returns env with the values of credential-like names replaced by Mask (a copy; env is not changed).
func MaskEnv(env map[string]string) map[string]string {
	if env == nil {
		return nil
	}
	out := make(map[string]string, len(env))
	for k, v := range env {
		if LooksLikeCredential(k) {
			v = Mask
		}
		out[k] = v
	}
	return out
}

// CredentialValues returns the values of env's credential-like names (to scrub them from output too).
func CredentialValues(env map[string]string) []string {
	var out []string
	for k, v := range env {
		if LooksLikeCredential(k) {
			out = append(out, v)
		}
	}
	return out
}
