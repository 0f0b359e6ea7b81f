// Package keyedmutex provides one mutex per key (a VM id, say) that exists only while someone holds or waits for
// it, so that a long-lived process locking ever new keys does not keep a mutex for every key it has ever seen.
package keyedmutex

import "sync"

// Map is a set of mutexes by key. The zero value is ready to use; a Map must not be copied after first use.
type Map struct {
	mu    sync.Mutex
	locks map[string]*entry
}

type entry struct {
	mu    sync.Mutex
	users int // holders and waiters; the entry is dropped when it reaches zero
}

// Lock locks key's mutex, waiting while another caller holds it, and returns the function that unlocks it. The
// unlock function must be called exactly once.
func (m *Map) Lock(key string) (unlock func()) {
	m.mu.Lock()
	if m.locks == nil {
		m.locks = make(map[string]*entry)
	}
	e := m.locks[key]
	if e == nil {
		e = &entry{}
		m.locks[key] = e
	}
	e.users++
	m.mu.Unlock()
	e.mu.Lock()
	return func() {
		e.mu.Unlock()
		m.mu.Lock()
		if e.users--; e.users == 0 {
			delete(m.locks, key)
		}
		m.mu.Unlock()
	}
}

// Len returns how many keys have a mutex now (held or waited for).
func (m *Map) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.locks)
}
