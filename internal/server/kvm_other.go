//go:build !linux

package server

// probeKVM reports that KVM exists only on Linux.
func probeKVM() error { return errNoKVM }
