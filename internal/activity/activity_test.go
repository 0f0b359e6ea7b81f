package activity

import (
	"bytes"
	"sync"
	"testing"
	"time"
)

func fakeClock(t *Tracker) *time.Time {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	t.now = func() time.Time { return now }
	return &now
}

func TestTracker(t *testing.T) {
	tr := New()
	now := fakeClock(tr)
	if !tr.Last("a").IsZero() || tr.Busy("a") {
		t.Fatal("unknown vm has activity")
	}
	tr.Touch("a")
	if got := tr.Last("a"); !got.Equal(*now) {
		t.Fatalf("Last = %v, want %v", got, *now)
	}
	*now = now.Add(time.Minute)
	end := tr.Begin("a")
	if !tr.Busy("a") || !tr.Last("a").Equal(*now) {
		t.Fatal("Begin did not make the vm busy now")
	}
	end2 := tr.Begin("a")
	*now = now.Add(time.Minute)
	end()
	end() // a second call does nothing
	if !tr.Busy("a") {
		t.Fatal("vm idle while an activity is still in progress")
	}
	tr.Forget("a") // refused: busy
	end2()
	if tr.Busy("a") || !tr.Last("a").Equal(*now) {
		t.Fatal("the end of an activity did not count")
	}

	// Seeding with an older time changes nothing; a newer one wins and counts as saved.
	tr.Seed("a", now.Add(-time.Hour))
	if !tr.Last("a").Equal(*now) {
		t.Fatal("an older seed went back in time")
	}
	if u := tr.Unsaved(); !u["a"].Equal(*now) || len(u) != 1 {
		t.Fatalf("Unsaved = %v", u)
	}
	tr.MarkSaved("a", *now)
	if u := tr.Unsaved(); len(u) != 0 {
		t.Fatalf("Unsaved after MarkSaved = %v", u)
	}
	tr.Seed("b", now.Add(time.Hour))
	if u := tr.Unsaved(); len(u) != 0 || !tr.Last("b").Equal(now.Add(time.Hour)) {
		t.Fatalf("a seeded vm: Unsaved %v, Last %v", u, tr.Last("b"))
	}
	tr.Forget("a")
	if !tr.Last("a").IsZero() {
		t.Fatal("Forget kept the vm")
	}
}

func TestWriter(t *testing.T) {
	tr := New()
	now := fakeClock(tr)
	var buf bytes.Buffer
	w := tr.Writer("a", &buf)
	if _, err := w.Write(nil); err != nil || !tr.Last("a").IsZero() {
		t.Fatal("an empty write counted")
	}
	if n, err := w.Write([]byte("hi")); n != 2 || err != nil || buf.String() != "hi" || !tr.Last("a").Equal(*now) {
		t.Fatalf("Write: %d %v %q %v", n, err, buf.String(), tr.Last("a"))
	}
	if n, err := tr.Writer("b", nil).Write([]byte("x")); n != 1 || err != nil || tr.Last("b").IsZero() {
		t.Fatal("a discarding writer did not count")
	}
}

func TestConcurrent(t *testing.T) {
	tr := New()
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 1000 {
				end := tr.Begin("a")
				tr.Touch("a")
				_ = tr.Busy("a")
				end()
			}
		}()
	}
	wg.Wait()
	if tr.Busy("a") {
		t.Fatal("busy after every activity ended")
	}
}
