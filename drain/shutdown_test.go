package drain_test

import (
	"context"
	"errors"
	"os"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bento-go/bento/drain"
	"github.com/bento-go/bento/internal/testdb"
)

// steps records the order of a shutdown's steps.
type steps struct {
	mu    sync.Mutex
	start time.Time
	names []string
	at    map[string]time.Duration
}

func newSteps() *steps { return &steps{start: time.Now(), at: map[string]time.Duration{}} }

func (s *steps) add(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.names = append(s.names, name)
	s.at[name] = time.Since(s.start)
}

func (s *steps) list() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.names)
}

func (s *steps) when(name string) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.at[name]
}

// stateSteps is a drain Observer that records the drain's start and end
// as steps.
type stateSteps struct{ s *steps }

func (o stateSteps) State(state string) {
	if state == "draining" {
		o.s.add("drain")
	} else {
		o.s.add("drain " + state)
	}
}
func (o stateSteps) Drained(drain.Stats) {}

// runAsync runs the shutdown in a goroutine.
func runAsync(s *drain.Shutdown, escalate <-chan os.Signal) <-chan drain.Stats {
	ch := make(chan drain.Stats, 1)
	go func() { ch <- s.Run(escalate) }()
	return ch
}

// TestShutdownOrder: readiness false, then intake stops, then workers
// stop, then the drain runs and closes the database (graceful).
func TestShutdownOrder(t *testing.T) {
	rec := newSteps()
	r := newRig(t, testdb.SQLite, drain.Config{Timeout: 5 * time.Second, Observer: stateSteps{rec}})
	r.table()
	var intakeDeadline bool
	s := &drain.Shutdown{
		NotReady: func() { rec.add("not ready") },
		StopIntake: func(ctx context.Context) error {
			_, intakeDeadline = ctx.Deadline()
			if r.d.Draining() {
				t.Error("a graceful drain started before intake stopped")
			}
			rec.add("stop intake")
			return nil
		},
		StopWorkers: func(ctx context.Context) error {
			if r.d.Draining() {
				t.Error("a graceful drain started before workers stopped")
			}
			rec.add("stop workers")
			return nil
		},
		Drainer: r.d,
	}
	st := waitStats(t, runAsync(s, nil), 10*time.Second)
	want := []string{"not ready", "stop intake", "stop workers", "drain", "drain closed"}
	if got := rec.list(); !slices.Equal(got, want) {
		t.Errorf("steps = %q, want %q", got, want)
	}
	if !intakeDeadline {
		t.Error("StopIntake's context has no deadline; it must end at the shutdown's deadline")
	}
	if !st.Success || st.Mode != drain.Graceful {
		t.Errorf("stats = %+v, want a successful graceful drain", st)
	}
	r.assertClosed()
}

// TestShutdownOrderForce: with Force (and Immediate) the drain does not
// wait for intake to stop: requests blocked in the database must be cut
// for intake to stop. It still starts only after readiness went false.
func TestShutdownOrderForce(t *testing.T) {
	for _, mode := range []drain.Mode{drain.Force, drain.Immediate} {
		t.Run(string(mode), func(t *testing.T) {
			rec := newSteps()
			r := newRig(t, testdb.SQLite, drain.Config{Mode: mode, Timeout: 5 * time.Second, Observer: stateSteps{rec}})
			s := &drain.Shutdown{
				NotReady: func() {
					if r.d.Draining() {
						t.Error("the drain started before readiness went false")
					}
					rec.add("not ready")
				},
				StopIntake: func(ctx context.Context) error {
					// Intake stops only once the drain started, as
					// http.Server.Shutdown does while a request is blocked.
					for !r.d.Draining() {
						select {
						case <-ctx.Done():
							return ctx.Err()
						case <-time.After(time.Millisecond):
						}
					}
					rec.add("stop intake")
					return nil
				},
				StopWorkers: func(ctx context.Context) error { rec.add("stop workers"); return nil },
				Drainer:     r.d,
				Deadline:    10 * time.Second,
			}
			st := waitStats(t, runAsync(s, nil), 15*time.Second)
			got := rec.list()
			if len(got) < 2 || got[0] != "not ready" || got[1] != "drain" {
				t.Errorf("steps = %q; want not ready, then the drain starting before intake stopped", got)
			}
			if !slices.Contains(got, "stop intake") || !slices.Contains(got, "stop workers") || !slices.Contains(got, "drain closed") {
				t.Errorf("steps = %q; want every step", got)
			}
			if st.Mode != mode {
				t.Errorf("stats = %+v, want mode %s", st, mode)
			}
		})
	}
}

// TestShutdownPreStopDelay: after readiness goes false the service keeps
// serving for the pre-stop delay; only then does intake stop.
func TestShutdownPreStopDelay(t *testing.T) {
	const delay = 500 * time.Millisecond
	rec := newSteps()
	d := drain.New(drain.Config{Observer: stateSteps{rec}})
	s := &drain.Shutdown{
		NotReady:     func() { rec.add("not ready") },
		PreStopDelay: delay,
		StopIntake:   func(context.Context) error { rec.add("stop intake"); return nil },
		StopWorkers:  func(context.Context) error { rec.add("stop workers"); return nil },
		Drainer:      d,
	}
	done := runAsync(s, nil)
	time.Sleep(delay / 2)
	if got := rec.list(); !slices.Equal(got, []string{"not ready"}) {
		t.Errorf("steps during the pre-stop delay = %q, want only [not ready]", got)
	}
	if d.Draining() {
		t.Error("the drain started during the pre-stop delay")
	}
	waitStats(t, done, 5*time.Second)
	gap := rec.when("stop intake") - rec.when("not ready")
	t.Logf("intake stopped %s after readiness went false", gap.Round(time.Millisecond))
	if gap < delay {
		t.Errorf("intake stopped %s after readiness went false, want at least the pre-stop delay %s", gap, delay)
	}
	if gap > delay+time.Second {
		t.Errorf("intake stopped %s after readiness went false, want about the pre-stop delay %s", gap, delay)
	}
}

// TestShutdownEscalate: a value on the escalate channel (a second signal)
// forces a graceful drain that waits for blocked work.
func TestShutdownEscalate(t *testing.T) {
	for _, dialect := range dialects {
		t.Run(dialect, func(t *testing.T) {
			r := newRig(t, dialect, drain.Config{Timeout: 30 * time.Second, CheckInterval: 10 * time.Millisecond})
			r.table()
			blocked := r.startBlocked(true)
			escalate := make(chan os.Signal, 1)
			s := &drain.Shutdown{Drainer: r.d, Deadline: time.Minute}
			done := runAsync(s, escalate)
			waitDraining(t, r.d)
			time.Sleep(200 * time.Millisecond)
			select {
			case st := <-done:
				t.Fatalf("the graceful drain returned while work was blocked: %+v", st)
			default:
			}
			sent := time.Now()
			escalate <- syscall.SIGTERM
			st := waitStats(t, done, 10*time.Second)
			took := time.Since(sent)
			t.Logf("stats: %+v; returned %s after the second signal", st, took.Round(time.Millisecond))
			if !st.Escalated || st.Success || st.InFlightEnd != 0 {
				t.Errorf("want Escalated, not Success, InFlightEnd 0; got %+v", st)
			}
			if took > 2*time.Second {
				t.Errorf("returned %s after the second signal, want promptly (the drain timeout is 30s)", took)
			}
			if err := <-blocked; err == nil {
				t.Error("the blocked statement should have been cancelled")
			}
			if n := r.count("SELECT count(*) FROM drain_rows"); n != 1 {
				t.Errorf("%d rows, want 1 (the forced transaction rolled back)", n)
			}
		})
	}
}

// TestShutdownDeadline: past the deadline the drain is forced, even while
// intake has not stopped (requests that do not finish).
func TestShutdownDeadline(t *testing.T) {
	const deadline = 700 * time.Millisecond
	for _, dialect := range dialects {
		t.Run(dialect, func(t *testing.T) {
			r := newRig(t, dialect, drain.Config{Timeout: 30 * time.Second, CheckInterval: 10 * time.Millisecond})
			r.table()
			blocked := r.startBlocked(true)
			var intakeErr error
			s := &drain.Shutdown{
				// A request blocked in the database keeps intake from
				// stopping until the deadline.
				StopIntake: func(ctx context.Context) error { <-ctx.Done(); intakeErr = ctx.Err(); return intakeErr },
				Drainer:    r.d,
				Deadline:   deadline,
			}
			start := time.Now()
			st := waitStats(t, runAsync(s, nil), 10*time.Second)
			took := time.Since(start)
			t.Logf("stats: %+v; Run took %s", st, took.Round(time.Millisecond))
			if !errors.Is(intakeErr, context.DeadlineExceeded) {
				t.Errorf("StopIntake's context ended with %v, want DeadlineExceeded", intakeErr)
			}
			if !st.Escalated || st.Success || st.InFlightEnd != 0 {
				t.Errorf("want Escalated, not Success, InFlightEnd 0; got %+v", st)
			}
			if took < deadline || took > deadline+1500*time.Millisecond {
				t.Errorf("Run took %s, want about the deadline %s (the drain timeout is 30s)", took, deadline)
			}
			if err := <-blocked; err == nil {
				t.Error("the blocked statement should have been cancelled")
			}
			if n := r.count("SELECT count(*) FROM drain_rows"); n != 1 {
				t.Errorf("%d rows, want 1 (the forced transaction rolled back)", n)
			}
		})
	}
}

// TestShutdownDefaultDeadline: without Deadline the sequence is bounded by
// pre-stop delay + drain timeout + 5s.
func TestShutdownDefaultDeadline(t *testing.T) {
	d := drain.New(drain.Config{Timeout: 300 * time.Millisecond})
	var left time.Duration
	s := &drain.Shutdown{
		PreStopDelay: 200 * time.Millisecond,
		StopIntake: func(ctx context.Context) error {
			dl, ok := ctx.Deadline()
			if !ok {
				t.Error("StopIntake's context has no deadline")
				return nil
			}
			left = time.Until(dl)
			return nil
		},
		Drainer: d,
	}
	start := time.Now()
	waitStats(t, runAsync(s, nil), 10*time.Second)
	// The deadline counts from the start of Run: 0.2 + 0.3 + 5 = 5.5s, of
	// which the pre-stop delay used 0.2s.
	if want := 5500*time.Millisecond - time.Since(start); left < want-500*time.Millisecond || left > want+500*time.Millisecond {
		t.Errorf("StopIntake had %s left before the deadline, want about %s", left.Round(time.Millisecond), want.Round(time.Millisecond))
	}
}

// TestShutdownWait: Wait runs the sequence when its context ends, and a
// signal after that escalates the drain.
func TestShutdownWait(t *testing.T) {
	r := newRig(t, testdb.SQLite, drain.Config{Timeout: 30 * time.Second, CheckInterval: 10 * time.Millisecond})
	r.table()
	blocked := r.startBlocked(false)
	notReady := make(chan struct{})
	s := &drain.Shutdown{NotReady: func() { close(notReady) }, Drainer: r.d, Deadline: time.Minute}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan drain.Stats, 1)
	go func() { done <- s.Wait(ctx, syscall.SIGUSR1) }()
	select {
	case <-notReady:
		t.Fatal("the sequence started before a signal or the context's end")
	case <-time.After(200 * time.Millisecond):
	}
	cancel()
	select {
	case <-notReady:
	case <-time.After(5 * time.Second):
		t.Fatal("the sequence did not start when the context ended")
	}
	waitDraining(t, r.d)
	// Wait listens for SIGUSR1 from before the sequence started: this
	// second signal escalates.
	if err := syscall.Kill(os.Getpid(), syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	st := waitStats(t, done, 10*time.Second)
	if !st.Escalated || st.InFlightEnd != 0 {
		t.Errorf("want Escalated with InFlightEnd 0 after the second signal; got %+v", st)
	}
	if err := <-blocked; err == nil {
		t.Error("the blocked statement should have been cancelled")
	}
}

// TestShutdownWithoutDrainer: the steps still run; the statistics are
// zero.
func TestShutdownWithoutDrainer(t *testing.T) {
	rec := newSteps()
	s := &drain.Shutdown{
		NotReady:    func() { rec.add("not ready") },
		StopIntake:  func(context.Context) error { rec.add("stop intake"); return errors.New("listener already closed") },
		StopWorkers: func(context.Context) error { rec.add("stop workers"); return nil },
	}
	st := waitStats(t, runAsync(s, nil), 5*time.Second)
	if got, want := rec.list(), []string{"not ready", "stop intake", "stop workers"}; !slices.Equal(got, want) {
		t.Errorf("steps = %q, want %q (an error stopping intake does not stop the sequence)", got, want)
	}
	if st != (drain.Stats{}) {
		t.Errorf("stats = %+v, want zero", st)
	}
}
