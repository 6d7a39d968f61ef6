package audit

import (
	"context"
	"testing"
	"time"
)

// TestOnCheckpoint: the hook hears each checkpoint written, once, with a
// positive duration; not a Checkpoint call that had nothing to sign; and
// nothing after it is removed.
func TestOnCheckpoint(t *testing.T) {
	_, l := createLog(t, newKey(t), manual)
	t.Cleanup(func() { _ = l.Close() })
	var got []time.Duration
	l.OnCheckpoint(func(d time.Duration) { got = append(got, d) })
	ctx := context.Background()
	appendN(t, l, 0, 3)
	if err := l.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	if err := l.Checkpoint(ctx); err != nil { // nothing new: nothing signed
		t.Fatal(err)
	}
	if len(got) != 1 || got[0] <= 0 {
		t.Fatalf("hook heard %v, want one positive duration", got)
	}
	l.OnCheckpoint(nil)
	appendN(t, l, 3, 1)
	if err := l.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 {
		t.Fatalf("hook heard %v after it was removed", got)
	}
}
