package vmproc

import (
	"context"
	"errors"
	"testing"
)

func TestBootsCancel(t *testing.T) {
	var b Boots
	ctx, end, err := b.Begin(context.Background(), "vm1")
	if err != nil {
		t.Fatal(err)
	}
	other, endOther, err := b.Begin(context.Background(), "vm2")
	if err != nil {
		t.Fatal(err)
	}
	done := b.Cancel("vm1")
	if !Deleting(ctx) || ctx.Err() == nil {
		t.Fatalf("the start of vm1 was not cancelled by its delete: %v", context.Cause(ctx))
	}
	if other.Err() != nil {
		t.Fatal("deleting vm1 cancelled the start of vm2")
	}
	// A start that comes while the delete runs is refused at once.
	if _, _, err := b.Begin(context.Background(), "vm1"); !errors.Is(err, ErrDeleting) {
		t.Fatalf("start during a delete: %v, want ErrDeleting", err)
	}
	end()
	done()
	ctx2, end2, err := b.Begin(context.Background(), "vm1")
	if err != nil || ctx2.Err() != nil {
		t.Fatalf("start after the delete ended: %v", err)
	}
	end2()
	if ctx2.Err() == nil || Deleting(ctx2) {
		t.Fatal("an ended start's context is not cancelled, or says deleted")
	}
	endOther()
	if len(b.cancel) != 0 || len(b.deleting) != 0 {
		t.Fatalf("left: %v %v", b.cancel, b.deleting)
	}
}
