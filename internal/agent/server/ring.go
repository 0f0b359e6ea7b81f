package server

import "sync"

// ring keeps the last max bytes written to it and counts everything, so that a background process's output
// can be read "so far" from any offset without the agent's memory growing with it. Its storage grows with the
// output up to max, so a quiet process costs little.
type ring struct {
	mu    sync.Mutex
	max   int
	buf   []byte // holds the last len(buf) bytes; full (len == max) once it wrapped
	start int    // index in buf of the oldest byte
	total int64  // bytes ever written
}

func newRing(max int) *ring { return &ring{max: max} }

func (r *ring) write(p []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.total += int64(len(p))
	if len(p) >= r.max {
		// Only the tail of p survives; lay it out linearly.
		if cap(r.buf) < r.max {
			r.buf = make([]byte, r.max)
		}
		r.buf = r.buf[:r.max]
		copy(r.buf, p[len(p)-r.max:])
		r.start = 0
		return
	}
	if len(r.buf) < r.max {
		if len(r.buf)+len(p) <= r.max {
			r.buf = append(r.buf, p...) // still linear: start is 0
			return
		}
		// Wrapping for the first time: keep the newest max bytes, linearly, at full size.
		keep := r.max - len(p)
		full := make([]byte, r.max)
		copy(full, r.buf[len(r.buf)-keep:])
		copy(full[keep:], p)
		r.buf, r.start = full, 0
		return
	}
	// Full: the write position is the oldest byte; overwrite and advance.
	for len(p) > 0 {
		n := copy(r.buf[r.start:], p)
		p = p[n:]
		r.start = (r.start + n) % r.max
	}
}

// read returns a copy of up to limit bytes (limit <= 0: all) from offset on. An offset before what is held
// starts at the oldest byte held, one past the end at the end. It also returns where the bytes start, the total
// written and how many bytes were dropped (are no longer held).
func (r *ring) read(offset int64, limit int) (data []byte, from, total, dropped int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	held := int64(len(r.buf))
	first := r.total - held
	from = min(max(offset, first), r.total)
	n := r.total - from
	if limit > 0 {
		n = min(n, int64(limit))
	}
	data = make([]byte, n)
	idx := int(from - first)
	for copied := 0; copied < len(data); {
		pos := (r.start + idx + copied) % len(r.buf)
		copied += copy(data[copied:], r.buf[pos:min(len(r.buf), pos+len(data)-copied)])
	}
	return data, from, r.total, first
}

func (r *ring) written() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.total
}
