//go:build race

package server_test

// raceEnabled: the race detector slows streaming about six-fold, so the biggest tests stream less under it.
const raceEnabled = true
