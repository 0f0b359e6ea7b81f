package model

import (
	"errors"
	"testing"
)

func TestVMStateMachine(t *testing.T) {
	legal := map[[2]VMStatus]bool{}
	for from, tos := range vmTransitions {
		for _, to := range tos {
			legal[[2]VMStatus{from, to}] = true
		}
	}
	all := []VMStatus{VMPending, VMCreating, VMRunning, VMStopping, VMStopped, VMDeleted, VMFailed}
	for _, from := range all {
		for _, to := range all {
			err := from.CheckTransition(to)
			want := from == to || legal[[2]VMStatus{from, to}]
			if (err == nil) != want {
				t.Errorf("%s -> %s: err=%v, want allowed=%v", from, to, err, want)
			}
			if err != nil && !errors.Is(err, ErrInvalidTransition) {
				t.Errorf("%s -> %s: error does not wrap ErrInvalidTransition", from, to)
			}
		}
	}
	// The lifecycle the product relies on.
	path := []VMStatus{VMPending, VMCreating, VMRunning, VMStopping, VMDeleted}
	for i := 1; i < len(path); i++ {
		if err := path[i-1].CheckTransition(path[i]); err != nil {
			t.Errorf("main lifecycle broken: %v", err)
		}
	}
	for _, to := range all {
		if to != VMDeleted && VMDeleted.CanTransition(to) {
			t.Errorf("deleted must be terminal, but can go to %s", to)
		}
	}
	if VMRunning.CanTransition(VMPending) || VMFailed.CanTransition(VMRunning) {
		t.Error("a VM must never go back to pending, nor from failed to running")
	}
	if err := VMRunning.CheckTransition("bogus"); err == nil {
		t.Error("unknown target status accepted")
	}
}
