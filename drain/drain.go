// Package drain shuts a database down without cutting work off: it counts
// the work in flight through the driver, refuses new work with ErrDraining
// once draining starts, waits for, or cancels, what is in flight, and only
// then closes the pool. sql.DB.Close alone is not a drain: it closes idle
// connections and lets running queries finish, but takes new work until
// the very end and cannot cancel anything.
//
// Three modes:
//
//   - Graceful: refuse new work, wait for in-flight work up to the
//     timeout, then close (escalating to Force if the timeout passes).
//   - Immediate: refuse new work and close the pool now, without waiting;
//     statements already running finish, and a transaction in flight
//     keeps its connection (it may still commit; the connection closes
//     when it ends, or when the process exits).
//   - Force: refuse new work, cancel in-flight work (its contexts), close.
//
// The Drainer is a driver middleware; put it first in the chain so that it
// sees every unit of work:
//
//	d := drain.New(drain.Config{Mode: drain.Graceful, Timeout: 30 * time.Second})
//	db, _ := bento.Open(cfg, bento.WithMiddleware(d.Middleware()))
//	d.SetPool(db.Pool(), db.Close)
//	...
//	stats := d.Drain(ctx)
package drain

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bento-go/bento/driver"
)

// ErrDraining is returned for work that arrives while draining. It is the
// driver's sentinel, so every layer recognises it; it is never retried.
var ErrDraining = driver.ErrDraining

// Mode is how Drain treats in-flight work.
type Mode string

// Modes.
const (
	Graceful  Mode = "graceful"
	Immediate Mode = "immediate"
	Force     Mode = "force"
)

// ParseMode accepts graceful, immediate or force.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(strings.ToLower(strings.TrimSpace(s))); m {
	case Graceful, Immediate, Force:
		return m, nil
	}
	return "", fmt.Errorf("unknown drain mode %q; accepted: graceful, immediate, force", s)
}

// Config configures a Drainer. Zero fields take the defaults shown.
type Config struct {
	// Mode of Drain (Graceful).
	Mode Mode
	// Timeout bounds the wait for in-flight work (30 s); Force waits at
	// most this long for cancelled work to return.
	Timeout time.Duration
	// CheckInterval is how often Drain looks at the in-flight count
	// (50 ms).
	CheckInterval time.Duration
	// Logger gets one line per drain phase.
	Logger *slog.Logger
	// Observer, if set, is told the drain state (metrics).
	Observer Observer
}

// Observer is told about drains.
type Observer interface {
	// State is called with "draining" when a drain starts and "closed" when
	// it ends.
	State(state string)
	// Drained is called once with the drain's statistics.
	Drained(Stats)
}

// Stats describe one drain.
type Stats struct {
	Mode Mode `json:"mode"`
	// Success: every in-flight unit of work finished on its own (Graceful
	// within the timeout); false when work had to be cancelled or cut.
	Success bool `json:"success"`
	// Escalated: a Graceful drain ran out of time (or was told) and
	// cancelled what was left.
	Escalated bool `json:"escalated"`
	// InFlightStart/End: units of work in flight when the drain started
	// and when the pool was closed.
	InFlightStart int64 `json:"in_flight_start"`
	InFlightEnd   int64 `json:"in_flight_end"`
	// ConnectionsStart/End: open connections of the pool.
	ConnectionsStart int `json:"connections_start"`
	ConnectionsEnd   int `json:"connections_end"`
	// Rejected counts work refused with ErrDraining.
	Rejected int64 `json:"rejected"`
	// Took is the drain's duration.
	Took time.Duration `json:"took_ns"`
	// CloseError is the pool's Close error, if any.
	CloseError string `json:"close_error,omitempty"`
}

// Drainer counts the work in flight through a driver and drains it. It is
// safe for concurrent use; Drain is idempotent.
type Drainer struct {
	cfg Config

	draining atomic.Bool
	inflight atomic.Int64
	rejected atomic.Int64

	forceCtx    context.Context
	forceCancel context.CancelFunc

	mu     sync.Mutex
	pool   *driver.Pool
	closer func() error
	once   sync.Once
	done   chan struct{}
	stats  Stats
	forced atomic.Bool
}

// New returns a Drainer.
func New(cfg Config) *Drainer {
	if cfg.Mode == "" {
		cfg.Mode = Graceful
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.CheckInterval <= 0 {
		cfg.CheckInterval = 50 * time.Millisecond
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	d := &Drainer{cfg: cfg, done: make(chan struct{})}
	d.forceCtx, d.forceCancel = context.WithCancel(context.Background())
	return d
}

// SetPool tells the Drainer which pool to report on and how to close it
// (bento.DB.Close). Drain before SetPool drains nothing and closes nothing.
func (d *Drainer) SetPool(p *driver.Pool, closer func() error) {
	d.mu.Lock()
	d.pool, d.closer = p, closer
	d.mu.Unlock()
}

// Draining reports whether a drain started (readiness should be false).
func (d *Drainer) Draining() bool { return d.draining.Load() }

// InFlight returns the units of work in flight.
func (d *Drainer) InFlight() int64 { return d.inflight.Load() }

// Rejected returns how many units of work were refused with ErrDraining.
func (d *Drainer) Rejected() int64 { return d.rejected.Load() }

// Done is closed when a drain finished.
func (d *Drainer) Done() <-chan struct{} { return d.done }

// txEnded keys the flag that makes a transaction's end count once.
type txEnded struct{}

type txCancel struct{}

// Middleware returns the driver middleware that counts and refuses work.
// A transaction counts as one unit from BEGIN to its end; statements in it
// are never refused (the transaction may finish). A statement outside a
// transaction is one unit.
func (d *Drainer) Middleware() driver.Middleware {
	return driver.Middleware{
		Name: "drain",
		Statement: func(next driver.StatementHandler) driver.StatementHandler {
			return func(ctx context.Context, st driver.Statement) error {
				if st.Tx != nil {
					if st.Tx.Value(txCancel{}) == nil {
						return next(ctx, st) // not begun through this Drainer
					}
					// Not refused (the transaction may finish), but
					// cancelled by Force: database/sql runs a statement of
					// a transaction on the statement's context, not the
					// transaction's, and rolls the transaction back only
					// after the running statement returned.
					switch done := ctx.Done(); {
					case done == nil:
						// Nothing else cancels the statement: it ends with
						// the transaction's context, which Force cancels
						// (Begin), without a context of its own.
						return d.explain(next(txBound{Context: ctx, tx: st.Tx.Context()}, st))
					case done == st.Tx.Context().Done():
						// It runs on the transaction's context (a
						// statement deferred to COMMIT): Force cancels it
						// already.
						return d.explain(next(ctx, st))
					}
					ctx, cancel, stop := d.cancellable(ctx)
					err := next(ctx, st)
					if st.Kind == driver.Query {
						stop()
					} else {
						cancel()
					}
					return d.explain(err)
				}
				if !d.enter() {
					return d.reject()
				}
				defer d.inflight.Add(-1)
				ctx, cancel, stop := d.cancellable(ctx)
				err := next(ctx, st)
				if st.Kind == driver.Query {
					// The rows outlive the call and read on ctx: a cancelled
					// ctx would close them. Only stop watching for Force.
					stop()
				} else {
					cancel()
				}
				return d.explain(err)
			}
		},
		Begin: func(next driver.BeginHandler) driver.BeginHandler {
			return func(ctx context.Context, opts *sql.TxOptions) (*driver.Tx, error) {
				if !d.enter() {
					return nil, d.reject()
				}
				// The transaction's context ends on Force: database/sql then
				// rolls it back and its statements are cancelled.
				ctx, cancel, _ := d.cancellable(ctx)
				tx, err := next(ctx, opts)
				if err != nil {
					cancel()
					d.inflight.Add(-1)
					return nil, d.explain(err)
				}
				tx.SetValue(txCancel{}, cancel)
				return tx, nil
			}
		},
		End: func(next driver.EndHandler) driver.EndHandler {
			return func(ctx context.Context, tx *driver.Tx, commit bool) error {
				err := next(ctx, tx, commit)
				if tx.Value(txEnded{}) == nil && (tx.Done() || err == nil) {
					tx.SetValue(txEnded{}, true)
					if cancel, ok := tx.Value(txCancel{}).(func()); ok {
						cancel()
					}
					d.inflight.Add(-1)
				}
				return d.explain(err)
			}
		},
	}
}

// explain turns the errors a drain itself causes into ErrDraining, so that
// callers hear "shutting down" rather than a cancelled context or a closed
// database: work cancelled by Force, and work that met the pool closed by
// an immediate drain.
func (d *Drainer) explain(err error) error {
	if err == nil || !d.draining.Load() || errors.Is(err, ErrDraining) {
		return err
	}
	if (d.forced.Load() && errors.Is(err, context.Canceled)) || strings.Contains(err.Error(), "sql: database is closed") {
		return fmt.Errorf("%w: %w", ErrDraining, err)
	}
	return err
}

// enter counts a unit of work in, unless draining.
func (d *Drainer) enter() bool {
	if d.draining.Load() {
		return false
	}
	d.inflight.Add(1)
	if d.draining.Load() { // a drain started meanwhile: back out
		d.inflight.Add(-1)
		return false
	}
	return true
}

func (d *Drainer) reject() error {
	d.rejected.Add(1)
	return ErrDraining
}

// cancellable returns ctx cancelled also by Force, a function that ends
// it, and one that only stops watching for Force (leaving ctx alive).
func (d *Drainer) cancellable(ctx context.Context) (context.Context, func(), func() bool) {
	ctx, cancel := context.WithCancelCause(ctx)
	stop := context.AfterFunc(d.forceCtx, func() { cancel(errForced) })
	return ctx, func() {
		stop()
		cancel(nil)
	}, stop
}

// txBound is the context of a statement in a transaction whose own
// context cannot be cancelled: it has the statement context's values and
// ends when the transaction's context does (on Force, or when the
// transaction ends). Being cancelled only through the transaction's
// context, it costs one small allocation instead of a context and a Force
// watch of its own per statement.
type txBound struct {
	context.Context // the statement's: values
	tx              context.Context
}

func (c txBound) Done() <-chan struct{} { return c.tx.Done() }
func (c txBound) Err() error            { return c.tx.Err() }

// AfterFunc lets context.AfterFunc and the contexts derived from c (the
// drivers' cancellation watches) register on the transaction's context
// directly instead of starting a goroutine that waits for Done.
func (c txBound) AfterFunc(f func()) func() bool { return context.AfterFunc(c.tx, f) }

// errForced is the cause of the cancellation of work in flight by Force.
// It wraps ErrDraining, so that work cut short by the drain (a unit of work
// waiting for a pool slot, say) is classified like work refused by it —
// not retried, answered as "shutting down" — instead of as an unknown
// error.
var errForced = fmt.Errorf("bento: drain: in-flight work cancelled (force): %w", ErrDraining)

// Force cancels the work in flight now, whatever the mode: a second signal
// or a passed deadline escalates a graceful drain with it.
func (d *Drainer) Force() {
	d.forced.Store(true)
	d.forceCancel()
}

// Drain drains with the configured mode and returns its statistics. ctx
// bounds it: if ctx ends first, in-flight work is cancelled (Force). A
// second call waits for the first and returns the same statistics; a call
// before anything started just closes.
func (d *Drainer) Drain(ctx context.Context) Stats {
	d.once.Do(func() { d.run(ctx, d.cfg.Mode) })
	<-d.done
	return d.stats
}

func (d *Drainer) run(ctx context.Context, mode Mode) {
	start := time.Now()
	d.draining.Store(true)
	if d.cfg.Observer != nil {
		d.cfg.Observer.State("draining")
	}
	d.mu.Lock()
	pool, closer := d.pool, d.closer
	d.mu.Unlock()
	st := Stats{Mode: mode, InFlightStart: d.inflight.Load()}
	if pool != nil {
		st.ConnectionsStart = pool.Stats().Open
	}
	d.cfg.Logger.Info("bento: drain started", "mode", string(mode), "in_flight", st.InFlightStart,
		"connections", st.ConnectionsStart, "timeout", d.cfg.Timeout)

	switch mode {
	case Graceful:
		if !d.wait(ctx, d.cfg.Timeout) {
			st.Escalated = true
			d.cfg.Logger.Warn("bento: drain: in-flight work did not finish in time; cancelling it",
				"in_flight", d.inflight.Load(), "timeout", d.cfg.Timeout)
			d.Force()
			d.wait(context.Background(), d.cfg.Timeout)
		}
	case Force:
		d.Force()
		d.cfg.Logger.Info("bento: drain: cancelled in-flight work", "in_flight", d.inflight.Load())
		d.wait(context.Background(), d.cfg.Timeout)
	case Immediate:
	}
	st.Escalated = st.Escalated || (mode == Graceful && d.forced.Load())
	st.InFlightEnd = d.inflight.Load()
	st.Success = mode != Force && st.InFlightEnd == 0 && !st.Escalated
	if closer != nil {
		if err := closer(); err != nil {
			st.CloseError = err.Error()
		}
	}
	if pool != nil {
		st.ConnectionsEnd = pool.Stats().Open
	}
	st.Rejected = d.rejected.Load()
	st.Took = time.Since(start)
	d.stats = st
	d.cfg.Logger.Info("bento: drain finished", "mode", string(mode), "success", st.Success, "escalated", st.Escalated,
		"in_flight_end", st.InFlightEnd, "rejected", st.Rejected, "connections_end", st.ConnectionsEnd, "took", st.Took.Round(time.Millisecond))
	if d.cfg.Observer != nil {
		d.cfg.Observer.State("closed")
		d.cfg.Observer.Drained(st)
	}
	close(d.done)
}

// wait polls the in-flight count until it is zero (true), the timeout
// passes, ctx ends, or Force is called (false).
func (d *Drainer) wait(ctx context.Context, timeout time.Duration) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(d.cfg.CheckInterval)
	defer tick.Stop()
	for {
		if d.inflight.Load() <= 0 {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-deadline.C:
			return false
		case <-d.forceCtx.Done():
			if !d.forced.Load() {
				return false
			}
			// Forced: keep waiting for the cancelled work to return.
			select {
			case <-tick.C:
			case <-deadline.C:
				return false
			case <-ctx.Done():
				return false
			}
		case <-tick.C:
		}
	}
}
