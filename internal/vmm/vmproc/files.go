//go:build linux

package vmproc

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
)

// WriteJSON writes v to path atomically: a crash leaves the old or the new file, never half of one.
func WriteJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode %s: %w", path, err)
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if serr := f.Sync(); err == nil {
		err = serr
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	return os.Rename(tmp, path)
}

// ReadJSON reads path into v; fs.ErrNotExist (wrapped) when there is no file.
func ReadJSON(path string, v any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("%s is corrupt: %w", path, err)
	}
	return nil
}

// RemoveFiles removes each path, ignoring those already gone.
func RemoveFiles(paths ...string) error {
	var errs []error
	for _, p := range paths {
		if p == "" {
			continue
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// ConsoleTail returns the last max bytes of a console log, cut to whole lines, or a note saying why not.
func ConsoleTail(path string, max int64) string {
	s, err := consoleTail(path, max)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	if strings.TrimSpace(s) == "" {
		return "(no output)"
	}
	return s
}

// consoleTail returns the last max bytes of a console log, cut to whole lines.
func consoleTail(path string, max int64) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("console log unavailable: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("console log unavailable: %w", err)
	}
	off := st.Size() - max
	if off < 0 {
		off = 0
	}
	data, err := io.ReadAll(io.NewSectionReader(f, off, st.Size()-off))
	if err != nil {
		return "", fmt.Errorf("reading console log: %w", err)
	}
	s := string(data)
	if off > 0 {
		if i := strings.IndexByte(s, '\n'); i >= 0 {
			s = s[i+1:]
		}
	}
	return strings.TrimRight(s, "\n"), nil
}

// Hostname turns a VM name into a valid host name (RFC 1123 label), falling back to one made from the id.
func Hostname(name, id string) string {
	var sb strings.Builder
	for _, r := range strings.ToLower(name) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			sb.WriteRune(r)
		case sb.Len() > 0 && !strings.HasSuffix(sb.String(), "-"):
			sb.WriteByte('-')
		}
	}
	h := strings.Trim(sb.String(), "-")
	if len(h) > 63 {
		h = strings.TrimRight(h[:63], "-")
	}
	if h == "" {
		h = strings.TrimRight("vm-"+strings.ToLower(id[:min(8, len(id))]), "-")
	}
	return h
}

// CountingWriter counts the bytes written through it; a nil W discards them. The backends use it to know
// whether a stream already delivered output before it broke (then it must not be retried).
type CountingWriter struct {
	W io.Writer
	N int64
}

func (c *CountingWriter) Write(p []byte) (int, error) {
	c.N += int64(len(p))
	if c.W == nil {
		return len(p), nil
	}
	return c.W.Write(p)
}
