package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
)

// printJSON writes v as indented JSON: the API's own shapes, for scripts (--json).
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return fmt.Errorf("write JSON: %w", err)
	}
	return nil
}

// field is one "key: value" line; empty values are left out.
type field struct{ key, value string }

func printFields(w io.Writer, fields []field) error {
	tw := tabwriter.NewWriter(w, 0, 4, 1, ' ', 0)
	for _, f := range fields {
		if f.value == "" {
			continue
		}
		// Values may hold newlines (an error message); one line per field keeps the output greppable.
		fmt.Fprintf(tw, "%s:\t%s\n", f.key, strings.ReplaceAll(f.value, "\n", " "))
	}
	return tw.Flush()
}

// printTable writes a header and rows aligned in columns.
func printTable(w io.Writer, header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.Local().Format(time.RFC3339)
}

func fmtTimePtr(t *time.Time) string {
	if t == nil {
		return ""
	}
	return fmtTime(*t)
}

// fmtAge is a short, rounded age ("45s", "3m", "5h", "2d") for tables.
func fmtAge(t time.Time, now time.Time) string {
	if t.IsZero() {
		return ""
	}
	d := max(now.Sub(t), 0)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

func fmtDurationMS(ms *int64) string {
	if ms == nil {
		return ""
	}
	return (time.Duration(*ms) * time.Millisecond).String()
}

// fmtMap is "k=v, k=v" sorted by key.
func fmtMap(m map[string]string) string {
	keys := slices.Sorted(maps.Keys(m))
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + m[k]
	}
	return strings.Join(parts, ", ")
}

// compactJSON is raw JSON on one line (as it came when it does not parse).
func compactJSON(raw json.RawMessage) string {
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return string(raw)
	}
	return b.String()
}

// spinnerFrames are drawn on a terminal while a command waits.
var spinnerFrames = []string{"⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"}

// startProgress shows "<frame> msg (elapsed)" on stderr while a command waits, when stderr is a terminal; it
// writes nothing otherwise, so logs and pipes stay clean. The returned function erases the line; call it before
// writing anything else to stderr.
func (a *app) startProgress(msg string) (stop func()) {
	if !a.isTTY() {
		return func() {}
	}
	w := a.streams.ErrOut
	start := time.Now()
	draw := func(i int) {
		fmt.Fprintf(w, "\r\x1b[K%s %s (%.1fs)", spinnerFrames[i%len(spinnerFrames)], msg, time.Since(start).Seconds())
	}
	draw(0)
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for i := 1; ; i++ {
			select {
			case <-done:
				return
			case <-t.C:
				draw(i)
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			close(done)
			<-finished
			fmt.Fprint(w, "\r\x1b[K")
		})
	}
}
