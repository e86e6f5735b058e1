package resilience

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sethvargo/go-retry"
)

// Policy says how often and how patiently to retry. The zero Policy is
// not useful; start from DefaultPolicy.
type Policy struct {
	// MaxAttempts bounds the attempts, the first included (>= 1).
	MaxAttempts int
	// BaseDelay is the delay before the second attempt; each later delay
	// doubles, up to MaxDelay.
	BaseDelay time.Duration
	MaxDelay  time.Duration
	// JitterPercent spreads each delay by ± this percentage so that
	// contending callers do not retry in lockstep.
	JitterPercent uint64
	// MaxElapsed bounds the whole operation, waits included; the context's
	// deadline also applies. 0 means no bound beyond the context.
	MaxElapsed time.Duration
	// Retryable decides whether an error is worth another attempt; nil
	// means IsRetryable.
	Retryable func(error) bool
	// OnRetry, if set, is called before each wait with the error that
	// failed the attempt, the number of the attempt that failed (1 for the
	// first) and the delay before the next.
	OnRetry func(err error, attempt int, delay time.Duration)
}

// DefaultPolicy returns the defaults Bento uses:
//
//   - 10 attempts: enough to ride out a burst of serialization conflicts
//     among dozens of writers on a hot row, few enough that a caller hears
//     about a lasting fault within seconds.
//   - 10 ms first delay, doubling, capped at 2 s: a conflict clears in
//     milliseconds; a server restart takes a second or two, which the
//     later attempts cover (about 4.5 s of waiting in all nominally,
//     2.3-6.8 s with the jitter).
//   - ±50% jitter: contending writers that failed together must not retry
//     together.
//   - 30 s overall, like DB_POOL_TIMEOUT: no caller waits longer than it
//     would wait for a connection.
func DefaultPolicy() Policy {
	return Policy{
		MaxAttempts:   10,
		BaseDelay:     10 * time.Millisecond,
		MaxDelay:      2 * time.Second,
		JitterPercent: 50,
		MaxElapsed:    30 * time.Second,
	}
}

// NoRetry is a Policy that runs the operation once.
func NoRetry() Policy { return Policy{MaxAttempts: 1} }

// RetryError is returned when a Retry gave up: the attempts ran out, the
// time ran out, or the context ended while waiting. It unwraps to the last
// attempt's error, so Classify and errors.Is/As see it; IsRetryable is
// false for it (the retrying was done).
type RetryError struct {
	Attempts int
	Err      error // the last attempt's error
	Stopped  error // the context's error if it ended the retries, or nil
}

func (e *RetryError) Error() string {
	if e.Stopped != nil {
		return fmt.Sprintf("gave up after %d attempts (%v): %v", e.Attempts, e.Stopped, e.Err)
	}
	return fmt.Sprintf("gave up after %d attempts: %v", e.Attempts, e.Err)
}

// Unwrap returns the last attempt's error and the context's error.
func (e *RetryError) Unwrap() []error {
	if e.Stopped != nil {
		return []error{e.Err, e.Stopped}
	}
	return []error{e.Err}
}

// Do runs op until it succeeds, fails with an error the policy does not
// retry, or the policy gives up. Each call builds a fresh backoff. The
// first attempt allocates nothing of its own: the backoff is built only
// after a failure. An error the policy does not retry is returned as it
// is; giving up returns a *RetryError.
func (p Policy) Do(ctx context.Context, op func(ctx context.Context) error) error {
	err := op(ctx)
	if err == nil {
		return nil
	}
	return p.retry(ctx, err, op)
}

// Continue is Do for a caller that made the first attempt itself and got
// err: it decides with the policy whether to retry, and retries op. A
// caller on a hot path uses it to build closures and policies only after a
// failure.
func (p Policy) Continue(ctx context.Context, err error, op func(ctx context.Context) error) error {
	if err == nil {
		return nil
	}
	return p.retry(ctx, err, op)
}

// retry continues after a first attempt failed with err.
func (p Policy) retry(ctx context.Context, err error, op func(ctx context.Context) error) error {
	retryable := p.Retryable
	if retryable == nil {
		retryable = IsRetryable
	}
	if !retryable(err) || p.MaxAttempts <= 1 {
		return err
	}
	// MaxElapsed is enforced by the backoff, not by a derived context: the
	// operation's results (database/sql rows) may outlive this call, and a
	// cancelled context would close them.
	var giveUpAt time.Time
	if p.MaxElapsed > 0 {
		giveUpAt = time.Now().Add(p.MaxElapsed)
	}
	inner := p.backoff()
	attempt, last := 1, err
	var exhausted error // set when the backoff stops the retries
	b := retry.BackoffFunc(func() (time.Duration, bool) {
		delay, stop := inner.Next()
		if stop {
			exhausted = errAttempts
			return 0, true
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < delay {
			exhausted = context.DeadlineExceeded // waiting would outlive the deadline
			return 0, true
		}
		if !giveUpAt.IsZero() && time.Until(giveUpAt) < delay {
			exhausted = errElapsed
			return 0, true
		}
		if p.OnRetry != nil {
			p.OnRetry(last, attempt, delay)
		}
		return delay, false
	})
	first := true
	rerr := retry.Do(ctx, b, func(ctx context.Context) error {
		if first { // the first attempt already ran: go straight to the backoff
			first = false
			return retry.RetryableError(err)
		}
		attempt++
		last = op(ctx)
		if last != nil && retryable(last) {
			return retry.RetryableError(last)
		}
		return last
	})
	switch {
	case rerr == nil:
		return nil
	case exhausted == errAttempts, exhausted == errElapsed:
		return &RetryError{Attempts: attempt, Err: last}
	case exhausted != nil:
		return &RetryError{Attempts: attempt, Err: last, Stopped: exhausted}
	case ctx.Err() != nil && (rerr == ctx.Err() || rerr == context.Cause(ctx)):
		return &RetryError{Attempts: attempt, Err: last, Stopped: context.Cause(ctx)}
	default:
		return rerr // an error the policy does not retry
	}
}

// errAttempts and errElapsed mark a retry that ran out of attempts or of
// time (Policy.MaxElapsed).
var (
	errAttempts = errors.New("attempts exhausted")
	errElapsed  = errors.New("time exhausted")
)

// backoff builds a fresh go-retry backoff for one operation: exponential
// from BaseDelay, capped at MaxDelay, jittered, bounded to MaxAttempts-1
// retries.
func (p Policy) backoff() retry.Backoff {
	base := p.BaseDelay
	if base <= 0 {
		base = time.Millisecond
	}
	b := retry.NewExponential(base)
	if p.MaxDelay > 0 {
		b = retry.WithCappedDuration(p.MaxDelay, b)
	}
	if p.JitterPercent > 0 {
		b = retry.WithJitterPercent(p.JitterPercent, b)
	}
	return retry.WithMaxRetries(uint64(p.MaxAttempts-1), b)
}

// Validate reports a policy that cannot work.
func (p Policy) Validate() error {
	switch {
	case p.MaxAttempts < 1:
		return errors.New("resilience: MaxAttempts must be >= 1")
	case p.BaseDelay < 0 || p.MaxDelay < 0 || p.MaxElapsed < 0:
		return errors.New("resilience: delays must be >= 0")
	case p.JitterPercent > 100:
		return errors.New("resilience: JitterPercent must be <= 100")
	}
	return nil
}
