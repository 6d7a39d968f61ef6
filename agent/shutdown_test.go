package agent

import (
	"context"
	"testing"
	"time"
)

// TestAfterGrace: work outlives the end of its parent (requests in flight
// finish), ends when the grace runs out (cut off), and ends at once when
// the work is done.
func TestAfterGrace(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	work, end := afterGrace(ctx, time.Hour)
	cancel()
	if err := work.Err(); err != nil {
		t.Fatalf("work ended with its parent: %v", err)
	}
	end()
	if work.Err() == nil {
		t.Fatal("work outlived end")
	}

	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	work, end = afterGrace(ctx, time.Millisecond)
	defer end()
	if work.Err() != nil {
		t.Fatal("work ended before its parent")
	}
	cancel()
	<-work.Done() // the grace runs out; the test hangs if it never does
}
