package resilience_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/bento-go/bento/resilience"
)

// Errors an operation fails with: a retryable one and one that is not.
var (
	errSerialization = &pgconn.PgError{Severity: "ERROR", Code: "40001", Message: "could not serialize access"}
	errUndefinedTbl  = &pgconn.PgError{Severity: "ERROR", Code: "42P01", Message: `relation "x" does not exist`}
)

// fastPolicy retries quickly, without jitter unless the test adds it.
func fastPolicy(attempts int) resilience.Policy {
	return resilience.Policy{MaxAttempts: attempts, BaseDelay: time.Millisecond, MaxDelay: 5 * time.Millisecond}
}

// retryLog records OnRetry calls.
type retryLog struct {
	mu       sync.Mutex
	errs     []error
	attempts []int
	delays   []time.Duration
}

func (l *retryLog) onRetry(err error, attempt int, delay time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.errs = append(l.errs, err)
	l.attempts = append(l.attempts, attempt)
	l.delays = append(l.delays, delay)
}

// failing returns an op that fails with fail(n) for its first failures
// calls (n counts from 1) and then succeeds, and a pointer to its call count.
func failing(failures int, fail func(n int) error) (func(context.Context) error, *int) {
	calls := 0
	return func(context.Context) error {
		calls++
		if calls <= failures {
			return fail(calls)
		}
		return nil
	}, &calls
}

func always(err error) func(int) error { return func(int) error { return err } }

func TestDoSucceedsFirstTry(t *testing.T) {
	p := fastPolicy(5)
	p.OnRetry = func(err error, attempt int, delay time.Duration) {
		t.Errorf("OnRetry(%v, %d, %v) called on a first-try success", err, attempt, delay)
	}
	op, calls := failing(0, nil)
	if err := p.Do(context.Background(), op); err != nil {
		t.Fatalf("Do = %v, want nil", err)
	}
	if *calls != 1 {
		t.Errorf("op ran %d times, want 1", *calls)
	}
}

func TestDoRetriesThenSucceeds(t *testing.T) {
	var log retryLog
	p := fastPolicy(5)
	p.OnRetry = log.onRetry
	op, calls := failing(2, always(errSerialization))
	if err := p.Do(context.Background(), op); err != nil {
		t.Fatalf("Do = %v, want nil", err)
	}
	if *calls != 3 {
		t.Errorf("op ran %d times, want 3", *calls)
	}
	if len(log.attempts) != 2 || log.attempts[0] != 1 || log.attempts[1] != 2 {
		t.Errorf("OnRetry attempts = %v, want [1 2]", log.attempts)
	}
}

func TestDoStopsAtMaxAttempts(t *testing.T) {
	const max = 4
	errs := make([]error, 0, max)
	op, calls := failing(1000, func(n int) error {
		err := fmt.Errorf("attempt %d: %w", n, errSerialization)
		errs = append(errs, err)
		return err
	})
	var log retryLog
	p := fastPolicy(max)
	p.OnRetry = log.onRetry
	err := p.Do(context.Background(), op)
	if *calls != max {
		t.Errorf("op ran %d times, want %d", *calls, max)
	}
	var re *resilience.RetryError
	if !errors.As(err, &re) {
		t.Fatalf("Do = %T %v, want a *RetryError", err, err)
	}
	if re.Attempts != max {
		t.Errorf("RetryError.Attempts = %d, want %d", re.Attempts, max)
	}
	last := errs[len(errs)-1]
	if re.Err != last || !errors.Is(err, last) {
		t.Errorf("RetryError.Err = %v, want the last attempt's error %v (errors.Is %v)", re.Err, last, errors.Is(err, last))
	}
	if !errors.Is(err, errSerialization) {
		t.Errorf("errors.Is(RetryError, the driver error) = false")
	}
	if re.Stopped != nil {
		t.Errorf("RetryError.Stopped = %v, want nil (attempts ran out)", re.Stopped)
	}
	if got := resilience.Classify(err); got != resilience.Transient {
		t.Errorf("Classify(RetryError) = %v, want transient (the last error's category)", got)
	}
	if resilience.IsRetryable(err) {
		t.Error("IsRetryable(RetryError) = true, want false: the retrying was done")
	}
	if len(log.attempts) != max-1 {
		t.Errorf("OnRetry called %d times, want %d", len(log.attempts), max-1)
	}
	for i, e := range log.errs {
		if e != errs[i] {
			t.Errorf("OnRetry #%d got error %v, want the error of attempt %d (%v)", i+1, e, i+1, errs[i])
		}
	}
}

func TestDoDoesNotRetryNonRetryable(t *testing.T) {
	p := fastPolicy(5)
	p.OnRetry = func(err error, attempt int, delay time.Duration) { t.Errorf("OnRetry(%v) for a permanent error", err) }
	op, calls := failing(1000, always(errUndefinedTbl))
	err := p.Do(context.Background(), op)
	if *calls != 1 {
		t.Errorf("op ran %d times, want 1", *calls)
	}
	if err != errUndefinedTbl {
		t.Errorf("Do = %T %v, want the op's error as it is", err, err)
	}
	var re *resilience.RetryError
	if errors.As(err, &re) {
		t.Errorf("Do returned a *RetryError for an error it never retried")
	}
}

func TestDoNeverRetriesCanceled(t *testing.T) {
	for _, canceled := range []error{context.Canceled, fmt.Errorf("query: %w", context.Canceled)} {
		t.Run(canceled.Error(), func(t *testing.T) {
			p := fastPolicy(5)
			op, calls := failing(1000, always(canceled))
			err := p.Do(context.Background(), op)
			if *calls != 1 {
				t.Errorf("op ran %d times, want 1", *calls)
			}
			if err != canceled {
				t.Errorf("Do = %v, want %v as it is", err, canceled)
			}
		})
	}
}

func TestDoCancelDuringWait(t *testing.T) {
	policies := map[string]resilience.Policy{
		"no MaxElapsed": {MaxAttempts: 5, BaseDelay: 10 * time.Second, MaxDelay: 20 * time.Second},
		"MaxElapsed":    {MaxAttempts: 5, BaseDelay: 10 * time.Second, MaxDelay: 20 * time.Second, MaxElapsed: time.Minute},
		"default": func() resilience.Policy {
			p := resilience.DefaultPolicy()
			p.BaseDelay, p.MaxDelay = 10*time.Second, 20*time.Second
			return p
		}(),
	}
	for name, p := range policies {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			waiting := make(chan struct{})
			p.OnRetry = func(error, int, time.Duration) { close(waiting) }
			go func() { <-waiting; time.Sleep(20 * time.Millisecond); cancel() }()
			op, calls := failing(1000, always(errSerialization))
			start := time.Now()
			err := p.Do(ctx, op)
			elapsed := time.Since(start)
			if elapsed > 2*time.Second {
				t.Errorf("Do took %v after the context was cancelled 20ms into a wait of 5s or more; want it to end promptly", elapsed)
			}
			if *calls != 1 {
				t.Errorf("op ran %d times, want 1", *calls)
			}
			var re *resilience.RetryError
			if !errors.As(err, &re) {
				t.Fatalf("Do = %T %v, want a *RetryError", err, err)
			}
			if re.Stopped != context.Canceled {
				t.Errorf("RetryError.Stopped = %v, want context.Canceled", re.Stopped)
			}
			if re.Attempts != 1 || re.Err != errSerialization {
				t.Errorf("RetryError = {Attempts: %d, Err: %v}, want {1, %v}", re.Attempts, re.Err, errSerialization)
			}
			if !errors.Is(err, context.Canceled) || !errors.Is(err, errSerialization) {
				t.Errorf("RetryError does not unwrap to both context.Canceled and the last error: %v", err)
			}
			if resilience.IsRetryable(err) {
				t.Error("IsRetryable = true for a retry stopped by a cancelled context")
			}
		})
	}
}

// A context cancelled with a cause ends the retries like any cancelled
// context: Do gives up with a *RetryError that keeps the last attempt's
// error and reports the cause in Stopped (retry.go builds exactly that
// value, Stopped: context.Cause(ctx), for this case).
func TestDoCancelCauseDuringWait(t *testing.T) {
	cause := errors.New("request abandoned by the client")
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	p := resilience.Policy{MaxAttempts: 5, BaseDelay: 10 * time.Second, MaxDelay: 20 * time.Second}
	p.OnRetry = func(error, int, time.Duration) { cancel(cause) }
	op, calls := failing(1000, always(errSerialization))
	start := time.Now()
	err := p.Do(ctx, op)
	if elapsed := time.Since(start); elapsed > 2*time.Second {
		t.Errorf("Do took %v after the context was cancelled before a 10s wait; want it to end promptly", elapsed)
	}
	if *calls != 1 {
		t.Errorf("op ran %d times, want 1", *calls)
	}
	var re *resilience.RetryError
	if !errors.As(err, &re) {
		t.Fatalf("Do = %T %q, want a *RetryError wrapping the last attempt's error (%v) with Stopped = the cause: "+
			"the context's cancellation cause came back bare and the last attempt's error was lost", err, err, errSerialization)
	}
	// Stopped is "the context's error": its cause (what retry.go means to
	// report) or, read narrowly, ctx.Err().
	if re.Err != errSerialization || re.Attempts != 1 || (re.Stopped != cause && re.Stopped != context.Canceled) {
		t.Errorf("RetryError = {Attempts: %d, Err: %v, Stopped: %v}, want {1, %v, %v (or context.Canceled)}",
			re.Attempts, re.Err, re.Stopped, errSerialization, cause)
	}
}

func TestDoMaxElapsed(t *testing.T) {
	// Without the bound, 100000 attempts 5ms apart would take minutes.
	const maxElapsed, maxDelay = 100 * time.Millisecond, 5 * time.Millisecond
	p := resilience.Policy{MaxAttempts: 100000, BaseDelay: time.Millisecond, MaxDelay: maxDelay, MaxElapsed: maxElapsed}
	op, calls := failing(1<<30, always(errSerialization))
	start := time.Now()
	err := p.Do(context.Background(), op)
	elapsed := time.Since(start)
	// Generous upper slack for a loaded machine; the lower bound holds
	// because Do gives up only when the next wait would pass MaxElapsed.
	if elapsed > maxElapsed+1500*time.Millisecond || elapsed < maxElapsed-2*maxDelay {
		t.Errorf("Do took %v, want about MaxElapsed (%v)", elapsed, maxElapsed)
	}
	if *calls < 2 || *calls > 1000 {
		t.Errorf("op ran %d times in %v, want several retries and far fewer than MaxAttempts", *calls, elapsed)
	}
	var re *resilience.RetryError
	if !errors.As(err, &re) {
		t.Fatalf("Do = %T %v, want a *RetryError", err, err)
	}
	if re.Attempts != *calls || re.Err != errSerialization {
		t.Errorf("RetryError = {Attempts: %d, Err: %v}, want {%d, %v}", re.Attempts, re.Err, *calls, errSerialization)
	}
	// MaxElapsed is the policy's own bound, not the caller's context: the
	// retries stopped because time ran out, which RetryError reports with
	// Stopped nil (or DeadlineExceeded, had the bound been a derived
	// context).
	if re.Stopped != nil && !errors.Is(re.Stopped, context.DeadlineExceeded) {
		t.Errorf("RetryError.Stopped = %v, want nil or context.DeadlineExceeded", re.Stopped)
	}
	if resilience.IsRetryable(err) {
		t.Error("IsRetryable(RetryError) = true")
	}
}

// The caller's own deadline bounds the retries too.
func TestDoContextDeadline(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	p := resilience.Policy{MaxAttempts: 100000, BaseDelay: time.Millisecond, MaxDelay: 5 * time.Millisecond}
	op, calls := failing(1<<30, always(errSerialization))
	start := time.Now()
	err := p.Do(ctx, op)
	if elapsed := time.Since(start); elapsed > 1600*time.Millisecond {
		t.Errorf("Do took %v with a 100ms context deadline", elapsed)
	}
	if *calls < 2 || *calls > 1000 {
		t.Errorf("op ran %d times, want several retries and far fewer than MaxAttempts", *calls)
	}
	var re *resilience.RetryError
	if !errors.As(err, &re) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Do = %T %v, want a *RetryError stopped by the deadline", err, err)
	}
}

func TestDoOnRetryDelays(t *testing.T) {
	const base, maxDelay = time.Millisecond, 8 * time.Millisecond
	t.Run("no jitter: exact doubling up to MaxDelay", func(t *testing.T) {
		var log retryLog
		p := resilience.Policy{MaxAttempts: 7, BaseDelay: base, MaxDelay: maxDelay, OnRetry: log.onRetry}
		errs := []error{}
		op, _ := failing(1000, func(n int) error {
			err := fmt.Errorf("attempt %d: %w", n, errSerialization)
			errs = append(errs, err)
			return err
		})
		_ = p.Do(context.Background(), op)
		want := []time.Duration{1, 2, 4, 8, 8, 8}
		if len(log.delays) != len(want) {
			t.Fatalf("OnRetry called %d times, want %d", len(log.delays), len(want))
		}
		for i := range want {
			if log.attempts[i] != i+1 {
				t.Errorf("OnRetry #%d: attempt = %d, want %d", i+1, log.attempts[i], i+1)
			}
			if log.errs[i] != errs[i] {
				t.Errorf("OnRetry #%d: err = %v, want %v", i+1, log.errs[i], errs[i])
			}
			if log.delays[i] != want[i]*time.Millisecond {
				t.Errorf("OnRetry #%d: delay = %v, want %v", i+1, log.delays[i], want[i]*time.Millisecond)
			}
		}
	})
	t.Run("jitter 50%: within the band, never above MaxDelay*1.5", func(t *testing.T) {
		const jitter = 50
		for range 20 {
			var log retryLog
			p := resilience.Policy{MaxAttempts: 7, BaseDelay: base, MaxDelay: maxDelay, JitterPercent: jitter, OnRetry: log.onRetry}
			op, _ := failing(1000, always(errSerialization))
			_ = p.Do(context.Background(), op)
			if len(log.delays) != 6 {
				t.Fatalf("OnRetry called %d times, want 6", len(log.delays))
			}
			for i, d := range log.delays {
				nominal := min(base<<i, maxDelay)
				lo, hi := nominal*(100-jitter)/100, nominal*(100+jitter)/100
				if d <= 0 || d < lo || d > hi {
					t.Errorf("OnRetry #%d: delay = %v, want within [%v, %v] (nominal %v ± %d%%)", i+1, d, lo, hi, nominal, jitter)
				}
				if d > maxDelay*(100+jitter)/100 {
					t.Errorf("OnRetry #%d: delay = %v exceeds MaxDelay*(1+jitter) = %v", i+1, d, maxDelay*(100+jitter)/100)
				}
			}
			// Roughly exponential: the nominal delay doubles from retry 1
			// to retry 3, so even at the jitter extremes the third delay
			// (4ms ± 50%, at least 2ms) is no smaller than the first
			// (1ms ± 50%, at most 1.5ms).
			if log.delays[2] < log.delays[0] {
				t.Errorf("delays do not grow: %v", log.delays)
			}
		}
	})
}

func TestDoFreshBackoffPerCall(t *testing.T) {
	var log retryLog
	p := resilience.Policy{MaxAttempts: 4, BaseDelay: time.Millisecond, MaxDelay: 50 * time.Millisecond, OnRetry: log.onRetry}
	for call := range 2 {
		log = retryLog{}
		op, _ := failing(1000, always(errSerialization))
		_ = p.Do(context.Background(), op)
		want := []time.Duration{time.Millisecond, 2 * time.Millisecond, 4 * time.Millisecond}
		if len(log.delays) != len(want) {
			t.Fatalf("call %d: OnRetry called %d times, want %d", call+1, len(log.delays), len(want))
		}
		for i := range want {
			if log.delays[i] != want[i] {
				t.Errorf("call %d: delay #%d = %v, want %v (each Do starts from BaseDelay)", call+1, i+1, log.delays[i], want[i])
			}
		}
	}
}

func TestDoRetryableOverride(t *testing.T) {
	custom := errors.New("blah: the service asked us to come back later")
	if resilience.IsRetryable(custom) {
		t.Fatal("test premise: the custom error must not be retryable by default")
	}
	t.Run("retries what the override accepts", func(t *testing.T) {
		p := fastPolicy(5)
		p.Retryable = func(err error) bool { return errors.Is(err, custom) }
		op, calls := failing(2, always(custom))
		if err := p.Do(context.Background(), op); err != nil {
			t.Fatalf("Do = %v, want nil", err)
		}
		if *calls != 3 {
			t.Errorf("op ran %d times, want 3", *calls)
		}
	})
	t.Run("does not retry what the override rejects", func(t *testing.T) {
		p := fastPolicy(5)
		p.Retryable = func(err error) bool { return errors.Is(err, custom) }
		op, calls := failing(1000, always(errSerialization))
		if err := p.Do(context.Background(), op); err != errSerialization {
			t.Errorf("Do = %v, want %v as it is", err, errSerialization)
		}
		if *calls != 1 {
			t.Errorf("op ran %d times, want 1", *calls)
		}
	})
	t.Run("override decides for later attempts too", func(t *testing.T) {
		p := fastPolicy(5)
		seen := 0
		p.Retryable = func(err error) bool { seen++; return errors.Is(err, custom) }
		op, calls := failing(1000, func(n int) error {
			if n == 1 {
				return custom
			}
			return errSerialization
		})
		if err := p.Do(context.Background(), op); err != errSerialization {
			t.Errorf("Do = %v, want %v", err, errSerialization)
		}
		if *calls != 2 || seen != 2 {
			t.Errorf("op ran %d times, override consulted %d times; want 2 and 2", *calls, seen)
		}
	})
}

func TestNoRetry(t *testing.T) {
	op, calls := failing(1000, always(errSerialization))
	if err := resilience.NoRetry().Do(context.Background(), op); err != errSerialization {
		t.Errorf("NoRetry().Do = %v, want the op's error as it is", err)
	}
	if *calls != 1 {
		t.Errorf("op ran %d times, want 1", *calls)
	}
}

func TestPolicyValidate(t *testing.T) {
	valid := map[string]resilience.Policy{
		"default":   resilience.DefaultPolicy(),
		"no retry":  resilience.NoRetry(),
		"jitter100": {MaxAttempts: 3, JitterPercent: 100},
	}
	for name, p := range valid {
		if err := p.Validate(); err != nil {
			t.Errorf("%s: Validate = %v, want nil", name, err)
		}
	}
	mod := func(f func(*resilience.Policy)) resilience.Policy { p := resilience.DefaultPolicy(); f(&p); return p }
	invalid := map[string]resilience.Policy{
		"MaxAttempts 0":       mod(func(p *resilience.Policy) { p.MaxAttempts = 0 }),
		"MaxAttempts -1":      mod(func(p *resilience.Policy) { p.MaxAttempts = -1 }),
		"JitterPercent 101":   mod(func(p *resilience.Policy) { p.JitterPercent = 101 }),
		"negative BaseDelay":  mod(func(p *resilience.Policy) { p.BaseDelay = -time.Millisecond }),
		"negative MaxDelay":   mod(func(p *resilience.Policy) { p.MaxDelay = -time.Millisecond }),
		"negative MaxElapsed": mod(func(p *resilience.Policy) { p.MaxElapsed = -time.Second }),
		"zero Policy":         {},
	}
	for name, p := range invalid {
		if err := p.Validate(); err == nil {
			t.Errorf("%s: Validate = nil, want an error", name)
		}
	}
}
