package outbox

import (
	"context"
	"fmt"
	"time"

	"github.com/bento-go/bento/driver"
)

// WaitOptions tune WaitDrained.
type WaitOptions struct {
	// Interval is the time between two looks at the outbox (default
	// 50 ms).
	Interval time.Duration
}

// WaitDrained waits until the outbox holds no pending row, looking every
// opts.Interval (ReadStats), and returns the last Stats it read. It only
// observes: a relay (in this process or another) must be publishing.
//
// Drained means no row at all with status pending, including rows that
// failed with a retryable error and wait for their next attempt (their
// NextAttemptAt is in the future): those events are not delivered yet, so
// WaitDrained keeps waiting for them. Dead letters do not keep it waiting
// (no relay publishes them until Requeue): check the returned Stats.Dead.
// Under a steady stream of new events the outbox may never be empty;
// bound the wait with ctx.
//
// When ctx ends first, the error wraps ctx's error and says how many
// events were still pending and for how long the oldest had been.
func WaitDrained(ctx context.Context, drv *driver.Driver, names Names, opts WaitOptions) (Stats, error) {
	if opts.Interval <= 0 {
		opts.Interval = 50 * time.Millisecond
	}
	t := time.NewTicker(opts.Interval)
	defer t.Stop()
	var last Stats
	read := false
	for {
		st, err := ReadStats(ctx, drv, names)
		switch {
		case err != nil && ctx.Err() != nil:
			return last, waitEnded(ctx, last, read)
		case err != nil:
			return st, fmt.Errorf("outbox: waiting for the outbox to drain: %w", err)
		case st.Pending == 0:
			return st, nil
		}
		last, read = st, true
		select {
		case <-ctx.Done():
			return last, waitEnded(ctx, last, read)
		case <-t.C:
		}
	}
}

// waitEnded is WaitDrained's error when ctx ended: what was pending at the
// last look, if there was one.
func waitEnded(ctx context.Context, last Stats, read bool) error {
	if !read {
		return fmt.Errorf("outbox: waiting for the outbox to drain: %w", context.Cause(ctx))
	}
	return fmt.Errorf("outbox: waiting for the outbox to drain: %d events still pending, the oldest for %s (is a relay publishing? bento outbox list --status pending shows them): %w",
		last.Pending, last.OldestAge.Round(time.Millisecond), context.Cause(ctx))
}
