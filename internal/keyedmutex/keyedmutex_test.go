package keyedmutex

import (
	"strconv"
	"sync"
	"testing"
	"time"
)

func TestExclusivePerKey(t *testing.T) {
	var m Map
	var wg sync.WaitGroup
	counters := map[string]*int{"a": new(int), "b": new(int)}
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k := "a"
			if i%2 == 1 {
				k = "b"
			}
			unlock := m.Lock(k)
			v := *counters[k] // unprotected read-modify-write: the race detector and the count catch overlap
			time.Sleep(time.Microsecond)
			*counters[k] = v + 1
			unlock()
		}()
	}
	wg.Wait()
	if *counters["a"] != 100 || *counters["b"] != 100 {
		t.Fatalf("counts a=%d b=%d, want 100 each: two holders of one key overlapped", *counters["a"], *counters["b"])
	}
	if n := m.Len(); n != 0 {
		t.Fatalf("%d mutexes left after every holder unlocked", n)
	}
}

func TestKeysDoNotBlockEachOther(t *testing.T) {
	var m Map
	unlockA := m.Lock("a")
	done := make(chan struct{})
	go func() {
		m.Lock("b")()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("locking b waited for a")
	}
	// A waiter keeps the key's mutex alive until it is done.
	got := make(chan struct{})
	go func() {
		u := m.Lock("a")
		close(got)
		u()
	}()
	for m.Len() != 1 {
		time.Sleep(time.Millisecond)
	}
	select {
	case <-got:
		t.Fatal("a second holder of a got the lock")
	case <-time.After(20 * time.Millisecond):
	}
	unlockA()
	<-got
	for deadline := time.Now().Add(10 * time.Second); m.Len() != 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d mutexes left", m.Len())
		}
	}
}

func TestDoesNotGrow(t *testing.T) {
	var m Map
	for i := range 10000 {
		m.Lock("vm-" + strconv.Itoa(i))()
	}
	if n := m.Len(); n != 0 {
		t.Fatalf("%d mutexes kept for keys nobody holds", n)
	}
}
