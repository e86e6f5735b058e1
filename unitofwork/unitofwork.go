// Package unitofwork runs application code in a transaction over the
// user's generated ent client: begin, run, write the collected events to the
// outbox, commit — or roll back on an error, a panic or a cancelled
// context — and run the whole unit again on a retryable error.
//
// Bento's ent extension generates the constructor, so no type parameters
// or adapters are written by hand:
//
//	uow := ent.NewUnitOfWork(client)
//	err := uow.Do(ctx, func(ctx context.Context, tx *ent.Client) error {
//		o, err := tx.Order.Create().SetCustomer("a@example.com").Save(ctx)
//		if err != nil {
//			return err
//		}
//		return outbox.Raise(ctx, o, OrderPlaced{OrderID: o.ID})
//	})
//
// Application code depends on the small Port interface; tests can give it
// a fake.
package unitofwork

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/bento-go/bento/driver"
	"github.com/bento-go/bento/outbox"
	"github.com/bento-go/bento/resilience"
)

// Tx is what a generated ent *Tx offers: the client bound to it, Commit and
// Rollback.
type Tx[C any] interface {
	Client() C
	Commit() error
	Rollback() error
}

// Port is the unit of work as the application layer sees it: run fn
// atomically with a client bound to the transaction.
type Port[C any] interface {
	Do(ctx context.Context, fn func(ctx context.Context, c C) error, opts ...Option) error
}

// Func adapts a function to Port: a fake for tests of application code.
type Func[C any] func(ctx context.Context, fn func(ctx context.Context, c C) error, opts ...Option) error

// Do calls f.
func (f Func[C]) Do(ctx context.Context, fn func(ctx context.Context, c C) error, opts ...Option) error {
	return f(ctx, fn, opts...)
}

// ErrNestedOptions is returned by a Do nested in another Do of the same
// unit of work when it is given options: a nested Do joins the outer
// transaction, whose options are already set.
var ErrNestedOptions = errors.New("unitofwork: a nested Do joins the outer transaction and takes no options")

// UnitOfWork runs functions in transactions of one ent client. It is safe
// for concurrent use; each Do has its own transaction.
type UnitOfWork[C any, T Tx[C]] struct {
	begin    func(ctx context.Context, opts *sql.TxOptions) (T, error)
	defaults settings
}

type settings struct {
	isolation       sql.IsolationLevel
	readOnly        bool
	timeout         time.Duration
	policy          resilience.Policy
	key             string
	fingerprint     string
	rollbackTimeout time.Duration
	names           outbox.Names
	logger          *slog.Logger
	observer        Observer
	deferWrites     bool
	evidence        *resilience.CommitEvidence
}

// Option configures a UnitOfWork (New) or one Do.
type Option func(*settings)

// Isolation sets the transaction isolation level (default: the database's).
func Isolation(l sql.IsolationLevel) Option { return func(s *settings) { s.isolation = l } }

// ReadOnly makes the transaction read-only.
func ReadOnly() Option { return func(s *settings) { s.readOnly = true } }

// Timeout bounds each attempt; the attempt's context is cancelled after it.
func Timeout(d time.Duration) Option { return func(s *settings) { s.timeout = d } }

// Retry sets the retry policy of the whole unit (default:
// resilience.DefaultPolicy).
func Retry(p resilience.Policy) Option { return func(s *settings) { s.policy = p } }

// NoRetry runs the unit once.
func NoRetry() Option { return Retry(resilience.NoRetry()) }

// IdempotencyKey stores key with the unit's outcome in the same
// transaction; a later Do with the same key returns that outcome (for
// DoValue, the value) without running fn. It resolves an ambiguous COMMIT
// on every database: the retry finds the key if the commit happened.
func IdempotencyKey(key string) Option { return func(s *settings) { s.key = key } }

// IdempotencyFingerprint stores a fingerprint of the request with the
// IdempotencyKey (at most 64 characters: a hex SHA-256 of the request, say).
// A later Do with the same key and a different fingerprint applies nothing
// and returns an error wrapping ErrIdempotencyKeyReused: the key was sent
// again with another request. A key stored without a fingerprint, or a Do
// without one, is not checked.
func IdempotencyFingerprint(fp string) Option { return func(s *settings) { s.fingerprint = fp } }

// DeferWrites sends the unit's writes whose result nobody reads (ent's
// inserts of rows whose id the code set: ids.Blocks) with the next
// statement that needs an answer, or with COMMIT, instead of one round
// trip each (driver.WithDeferredWrites; PostgreSQL). A unit whose rows all
// get their ids before it runs is then one round trip, events included.
// The cost: such a write's error (a constraint it violates) is returned
// by the statement that sent it or by the commit, not by its Save; the
// unit then fails as a whole and nothing of it is committed.
func DeferWrites() Option { return func(s *settings) { s.deferWrites = true } }

// ResolveBy names a row the unit inserts and nothing else could (a new row
// whose id was taken beforehand from ids.Blocks): a COMMIT with no answer
// whose transaction id is unknown (a unit sent whole with its COMMIT,
// DeferWrites, does not read it) is resolved by whether the row exists
// once the server process that ran it has ended
// (resilience.ResolveByEvidence).
// PostgreSQL; without it such a COMMIT stays unknown (ErrCommitUnknown).
func ResolveBy(e resilience.CommitEvidence) Option {
	return func(s *settings) { s.evidence = &e }
}

// RollbackTimeout bounds a rollback, which runs on a context the caller's
// cancellation does not reach (default 5 s).
func RollbackTimeout(d time.Duration) Option { return func(s *settings) { s.rollbackTimeout = d } }

// Tables names the framework's tables (default outbox.NamesFor("")).
func Tables(n outbox.Names) Option { return func(s *settings) { s.names = n } }

// Logger sets the logger for retries (default: none).
func Logger(l *slog.Logger) Option { return func(s *settings) { s.logger = l } }

// Observer is told the outcome of every unit of work (metrics).
type Observer interface {
	// UnitDone is called once per Do: outcome is "committed", "replayed",
	// "failed" or "panicked"; attempts counts the transactions tried.
	UnitDone(outcome string, attempts int, took time.Duration, err error)
}

// WithObserver sets the Observer.
func WithObserver(o Observer) Option { return func(s *settings) { s.observer = o } }

// RetryPolicy returns the retry policy that New would use with opts
// (resilience.DefaultPolicy unless a Retry option sets one); the generated
// NewUnitOfWork gives it to the read-retry interceptor too.
func RetryPolicy(opts ...Option) resilience.Policy {
	s := settings{policy: resilience.DefaultPolicy()}
	for _, o := range opts {
		o(&s)
	}
	return s.policy
}

// New returns a unit of work that begins transactions with begin (the
// generated client's BeginTx). Options set the defaults of every Do.
func New[C any, T Tx[C]](begin func(ctx context.Context, opts *sql.TxOptions) (T, error), opts ...Option) *UnitOfWork[C, T] {
	s := settings{policy: resilience.DefaultPolicy(), rollbackTimeout: 5 * time.Second, names: outbox.NamesFor("")}
	for _, o := range opts {
		o(&s)
	}
	if s.logger == nil {
		s.logger = slog.New(slog.DiscardHandler)
	}
	return &UnitOfWork[C, T]{begin: begin, defaults: s}
}

// current is the transaction a Do is running, for nested Do calls.
type current[C any] struct{ client C }

type currentKey struct{ u any }

// Do runs fn in a transaction and commits it, writing the events recorded
// in it (outbox.Raise) to the outbox just before COMMIT.
//
//   - fn gets a context to pass on and a client bound to the transaction.
//   - An error from fn, a panic (re-panicked after), or a context cancelled
//     before COMMIT rolls back. The rollback runs on a context the caller's
//     cancellation does not reach, bounded by RollbackTimeout.
//   - A retryable error (resilience.IsRetryable: a serialization failure, a
//     deadlock, a lost connection, an aggregate version conflict) runs fn
//     again in a fresh transaction with backoff. fn must therefore only
//     change the database through the client it is given.
//   - A COMMIT whose outcome is unknown is resolved on PostgreSQL
//     (pg_xact_status) before anything is decided; elsewhere it is returned
//     as resilience.ErrCommitUnknown unless an IdempotencyKey is set, in
//     which case the retry finds out. Work that committed is never re-run.
//   - A Do nested in another Do of the same UnitOfWork (same context chain)
//     joins the outer transaction: fn runs in it, and its error goes to the
//     outer fn. It takes no options.
//
// What Do returns when fn fails: fn's error itself when it is not retried
// (err == the value fn returned; errors.Unwrap, errors.Is and errors.As see
// what they would see on fn's error); a rollback that fails after it is
// logged, not added to it. A retryable error that is still failing when
// the policy gives up comes back as a *resilience.RetryError whose Err is
// the last attempt's error. An error after an attempt whose COMMIT outcome
// stayed unknown is wrapped with resilience.ErrCommitUnknown ("<err> (and an
// earlier attempt's commit outcome is unknown: ...)"), so that errors.Is
// finds both.
func (u *UnitOfWork[C, T]) Do(ctx context.Context, fn func(ctx context.Context, c C) error, opts ...Option) error {
	if cur, ok := ctx.Value(currentKey{u}).(*current[C]); ok {
		if len(opts) > 0 {
			return ErrNestedOptions
		}
		return fn(ctx, cur.client)
	}
	s := u.defaults
	for _, o := range opts {
		o(&s)
	}
	if len(s.fingerprint) > 64 {
		return fmt.Errorf("unitofwork: IdempotencyFingerprint is %d characters; accepted: at most 64 (a hex SHA-256, say)", len(s.fingerprint))
	}
	start := time.Now()
	attempts := 0
	outcome := "failed"
	defer func() {
		if s.observer == nil {
			return
		}
		if r := recover(); r != nil {
			s.observer.UnitDone("panicked", attempts, time.Since(start), fmt.Errorf("panic: %v", r))
			panic(r)
		}
	}()
	var replayed, unknown bool
	run := func(ctx context.Context) error {
		attempts++
		var (
			err     error
			settled bool
		)
		replayed, settled, err = u.attempt(ctx, &s, fn)
		if settled {
			unknown = false // the key lookup told what the earlier commit did
		}
		if errors.Is(err, resilience.ErrCommitUnknown) {
			unknown = true
		}
		return err
	}
	// The first attempt runs as it is; the retry policy and its callbacks
	// are built only after a failure.
	err := run(ctx)
	if err != nil {
		p := s.policy
		p.Retryable = func(err error) bool {
			if s.key != "" && resilience.Classify(err) == resilience.Ambiguous {
				return true // the next attempt finds the key if the commit happened
			}
			if s.readOnly && resilience.Code(err) == "25006" {
				// A write in the unit's own read-only transaction: 25006 is
				// a connection error only when a standby sent it.
				return false
			}
			return resilience.IsRetryable(err)
		}
		userOnRetry := p.OnRetry
		p.OnRetry = func(err error, attempt int, delay time.Duration) {
			s.logger.Warn("bento: unit of work retrying", "attempt", attempt, "delay", delay,
				"category", resilience.Classify(err).String(), "code", resilience.Code(err), "error", err.Error())
			if userOnRetry != nil {
				userOnRetry(err, attempt, delay)
			}
		}
		err = p.Continue(ctx, err, run)
	}
	if err != nil && unknown && !errors.Is(err, resilience.ErrCommitUnknown) {
		// An earlier attempt's COMMIT may have taken effect and no later
		// attempt could find out: the caller must know.
		err = fmt.Errorf("%w (and an earlier attempt's commit outcome is unknown: %w)", err, resilience.ErrCommitUnknown)
	}
	switch {
	case err != nil:
	case replayed:
		outcome = "replayed"
	default:
		outcome = "committed"
	}
	if s.observer != nil {
		s.observer.UnitDone(outcome, attempts, time.Since(start), err)
	}
	return err
}

// attempt runs fn once in a new transaction. It reports whether the
// outcome was replayed from an idempotency key, and whether the key's
// lookup succeeded (which settles an earlier attempt's unknown commit).
func (u *UnitOfWork[C, T]) attempt(ctx context.Context, s *settings, fn func(ctx context.Context, c C) error) (replayed, settled bool, err error) {
	if s.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.timeout)
		defer cancel()
	}
	sink, _ := ctx.Value(resultKey{}).(*resultSink)
	if sink != nil {
		sink.want = s.key != ""
		sink.value = nil
	}
	ctx, _ = outbox.NewContext(ctx)
	slot := &driver.TxSlot{}
	ctx = driver.WithTxSlot(ctx, slot)
	if s.deferWrites {
		ctx = driver.WithDeferredWrites(ctx)
	}
	// The transaction lives on a context that the caller's cancellation
	// does not reach, so that its rollback can still run; cancelTx ends it.
	txCtx, cancelTx := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelTx()
	tx, err := u.begin(txCtx, &sql.TxOptions{Isolation: s.isolation, ReadOnly: s.readOnly})
	if err != nil {
		return false, false, err
	}
	if slot.Tx == nil {
		_ = u.rollback(tx, cancelTx, s)
		return false, false, errors.New("unitofwork: the client's driver is not Bento's driver (driver.New): build the ent client on bento.DB.Driver()")
	}
	if s.evidence != nil {
		resilience.SetCommitEvidence(slot.Tx, *s.evidence)
	}
	client := tx.Client()
	ctx = context.WithValue(ctx, currentKey{u}, &current[C]{client: client})
	finished := false
	defer func() {
		if !finished {
			// fn panicked: roll back, then let the panic go on.
			_ = u.rollback(tx, cancelTx, s)
		}
	}()
	if s.key != "" {
		stored, found, err := lookupKey(ctx, slot.Tx, s.names, s.key)
		if err != nil {
			finished = true
			return false, false, u.rollbackAfter(err, tx, cancelTx, s)
		}
		settled = true
		if found {
			finished = true
			if err := stored.check(s.key, s.fingerprint); err != nil {
				return false, true, u.rollbackAfter(err, tx, cancelTx, s)
			}
			if sink != nil {
				sink.replay, sink.replayed = stored.result, true
			}
			return true, true, u.rollback(tx, cancelTx, s)
		}
	}
	err = fn(ctx, client)
	if err == nil && ctx.Err() != nil {
		err = fmt.Errorf("unitofwork: context ended before commit: %w", context.Cause(ctx))
	}
	if err == nil && s.key != "" {
		var result []byte
		if sink != nil {
			result = sink.value
		}
		if err = storeKey(ctx, slot.Tx, s.names, s.key, s.fingerprint, result); err != nil && resilience.Classify(err) == resilience.Integrity {
			// Another unit with the same key committed first: roll back
			// ours and return its outcome.
			finished = true
			_ = u.rollback(tx, cancelTx, s)
			stored, found, lerr := lookupKeyOutside(ctx, slot.Tx.Driver(), s.names, s.key)
			if lerr != nil {
				err = errors.Join(err, lerr)
			}
			if lerr != nil || !found {
				return false, settled, err
			}
			if err := stored.check(s.key, s.fingerprint); err != nil {
				return false, true, err
			}
			if sink != nil {
				sink.replay, sink.replayed = stored.result, true
			}
			return true, true, nil
		}
	}
	finished = true
	if err != nil {
		return false, settled, u.rollbackAfter(err, tx, cancelTx, s)
	}
	return false, settled, tx.Commit()
}

// rollbackAfter rolls tx back after the attempt failed with err, and
// returns err itself: a rollback that fails too is logged, not joined to
// it, so that the caller gets fn's error as fn returned it (==,
// errors.Unwrap). The transaction is over either way: a failed rollback
// leaves nothing committed, and database/sql does not reuse a connection
// whose rollback failed on a broken connection.
func (u *UnitOfWork[C, T]) rollbackAfter(err error, tx T, cancelTx context.CancelFunc, s *settings) error {
	if rerr := u.rollback(tx, cancelTx, s); rerr != nil {
		s.logger.Warn("bento: unit of work: rollback failed after an error", "error", err.Error(), "rollback_error", rerr.Error())
	}
	return err
}

// rollback rolls tx back within the rollback timeout.
func (u *UnitOfWork[C, T]) rollback(tx T, cancelTx context.CancelFunc, s *settings) error {
	t := time.AfterFunc(s.rollbackTimeout, cancelTx)
	defer t.Stop()
	err := tx.Rollback()
	if err == nil || errors.Is(err, sql.ErrTxDone) {
		return nil
	}
	return fmt.Errorf("unitofwork: rollback: %w", err)
}

// resultSink carries DoValue's result to and from the idempotency table.
type resultSink struct {
	want     bool   // an idempotency key is set: encode the result
	value    []byte // the encoded result of this run
	replay   []byte // the stored result of an earlier run
	replayed bool
}

type resultKey struct{}

// DoValue is Do for a function that returns a value. With an
// IdempotencyKey, the value is stored as JSON with the key, and a replay
// returns the stored value decoded.
func DoValue[V any, C any](ctx context.Context, u Port[C], fn func(ctx context.Context, c C) (V, error), opts ...Option) (V, error) {
	r := &valueRun[V, C]{fn: fn}
	ctx = context.WithValue(ctx, resultKey{}, &r.sink)
	var zero V
	if err := u.Do(ctx, r.run, opts...); err != nil {
		return zero, err
	}
	if r.sink.replayed {
		var v V
		if len(r.sink.replay) > 0 && string(r.sink.replay) != "null" {
			if err := json.Unmarshal(r.sink.replay, &v); err != nil {
				return zero, fmt.Errorf("unitofwork: decoding the stored result of the idempotency key: %w", err)
			}
		}
		return v, nil
	}
	return r.out, nil
}

// valueRun is one DoValue: its function, its result and the sink the
// idempotency key's storage reads, in one allocation.
type valueRun[V, C any] struct {
	fn   func(ctx context.Context, c C) (V, error)
	out  V
	sink resultSink
}

func (r *valueRun[V, C]) run(ctx context.Context, c C) error {
	v, err := r.fn(ctx, c)
	if err != nil {
		return err
	}
	r.out = v
	if r.sink.want {
		b, err := json.Marshal(v)
		if err != nil {
			return fmt.Errorf("unitofwork: encoding the result for the idempotency key: %w", err)
		}
		r.sink.value = b
	}
	return nil
}
