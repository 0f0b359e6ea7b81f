package server

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

func TestRing(t *testing.T) {
	r := newRing(10)
	if data, from, total, dropped := r.read(0, 0); len(data) != 0 || from != 0 || total != 0 || dropped != 0 {
		t.Fatalf("empty ring: %q %d %d %d", data, from, total, dropped)
	}
	r.write([]byte("abcdef"))
	if data, from, _, _ := r.read(2, 3); string(data) != "cde" || from != 2 {
		t.Fatalf("linear read: %q from %d", data, from)
	}
	r.write([]byte("ghijk")) // 11 bytes: "a" dropped
	data, from, total, dropped := r.read(0, 0)
	if string(data) != "bcdefghijk" || from != 1 || total != 11 || dropped != 1 {
		t.Fatalf("after wrapping: %q from %d total %d dropped %d", data, from, total, dropped)
	}
	r.write([]byte("lmn"))
	if data, from, _, dropped := r.read(5, 4); string(data) != "fghi" || from != 5 || dropped != 4 {
		t.Fatalf("wrapped read: %q from %d dropped %d", data, from, dropped)
	}
	if data, from, _, _ := r.read(100, 0); len(data) != 0 || from != 14 {
		t.Fatalf("read past the end: %q from %d", data, from)
	}
	r.write([]byte("0123456789ABCDEF")) // larger than the ring
	if data, from, total, _ := r.read(0, 0); string(data) != "6789ABCDEF" || from != 20 || total != 30 {
		t.Fatalf("after a huge write: %q from %d total %d", data, from, total)
	}
}

// TestRingMatchesModel writes random pieces and compares every read with the tail of everything written.
func TestRingMatchesModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, size := range []int{1, 7, 64, 1000} {
		r := newRing(size)
		var all []byte
		for range 2000 {
			p := make([]byte, rng.IntN(2*size+1))
			for i := range p {
				p[i] = byte(rng.Uint32())
			}
			r.write(p)
			all = append(all, p...)
			off := rng.Int64N(int64(len(all)) + 2)
			limit := rng.IntN(size + 2)
			data, from, total, dropped := r.read(off, limit)
			first := max(int64(len(all)-size), 0)
			wantFrom := min(max(off, first), int64(len(all)))
			want := all[wantFrom:]
			if limit > 0 && len(want) > limit {
				want = want[:limit]
			}
			if total != int64(len(all)) || dropped != first || from != wantFrom || !bytes.Equal(data, want) {
				t.Fatalf("size %d: read(%d, %d) = %d bytes from %d (total %d dropped %d); want %d from %d (total %d dropped %d)",
					size, off, limit, len(data), from, total, dropped, len(want), wantFrom, len(all), first)
			}
		}
		if int64(len(r.buf)) > int64(size) {
			t.Fatalf("ring of %d holds %d bytes", size, len(r.buf))
		}
	}
}
