package resilience

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"time"

	bentodriver "github.com/bento-go/bento/driver"
)

// Options configure Middleware.
type Options struct {
	// Policy retries statements outside a transaction that are safe to
	// repeat, and BEGIN. Zero value: DefaultPolicy.
	Policy Policy
	// ResolveTimeout bounds the resolution of an ambiguous COMMIT on
	// PostgreSQL. Zero: 10 s. Negative: never resolve; return Ambiguous.
	ResolveTimeout time.Duration
	// TxIDOnlyFromOutbox stops the middleware from reading
	// pg_current_xact_id() before COMMIT of a PostgreSQL transaction that
	// wrote; only a transaction id recorded by the outbox (for free, from
	// its INSERT … RETURNING) is then available to resolve an ambiguous
	// COMMIT. It saves one round trip per writing transaction.
	TxIDOnlyFromOutbox bool
	// Logger gets one line per retry and per resolved commit.
	Logger *slog.Logger
	// OnRetry, if set, is called before each retry, with the operation
	// ("exec", "query", "begin").
	OnRetry func(op string, err error, attempt int, delay time.Duration)
	// OnAmbiguous, if set, is called with the outcome of each ambiguous
	// COMMIT after resolution (OutcomeUnknown when it stayed unknown).
	OnAmbiguous func(Outcome)
}

// Middleware returns the driver middleware that classifies every error
// (each comes back as a *Error carrying its Category) and retries only
// where it is safe:
//
//   - Outside a transaction, a read (driver.IsReadOnly) is retried on a
//     retryable error; a write only when the driver proves it never
//     reached the server (driver.ErrBadConn, pgconn.SafeToRetry). A write
//     that failed after it was sent is classified like a COMMIT: it may
//     have been applied, so it is Ambiguous unless the server said no.
//   - BEGIN is retried on connection and transient errors: nothing has
//     happened yet.
//   - Inside a transaction nothing is retried: the whole unit of work is
//     the retry unit (package unitofwork).
//   - An error in reply to COMMIT that proves no rollback is Ambiguous. On
//     PostgreSQL the middleware resolves it with pg_xact_status on another
//     connection: a transaction that committed makes Commit return nil; one
//     that aborted returns a retryable Connection error.
func Middleware(opts Options) bentodriver.Middleware {
	if opts.Policy.MaxAttempts == 0 {
		opts.Policy = DefaultPolicy()
	}
	if opts.ResolveTimeout == 0 {
		opts.ResolveTimeout = 10 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	m := &middleware{opts: opts}
	return bentodriver.Middleware{Name: "resilience", Statement: m.statement, Begin: m.begin, End: m.end}
}

type middleware struct{ opts Options }

// policyFor returns the policy with the retry callback for op.
func (m *middleware) policyFor(op string, retryable func(error) bool) Policy {
	p := m.opts.Policy
	p.Retryable = retryable
	user := p.OnRetry
	p.OnRetry = func(err error, attempt int, delay time.Duration) {
		m.opts.Logger.Warn("bento: retrying", "op", op, "category", Classify(err).String(), "code", Code(err),
			"attempt", attempt, "delay", delay, "error", err.Error())
		if m.opts.OnRetry != nil {
			m.opts.OnRetry(op, err, attempt, delay)
		}
		if user != nil {
			user(err, attempt, delay)
		}
	}
	return p
}

// noRetryKey marks a context whose work must not be retried.
type noRetryKey struct{}

// WithoutRetry returns a context under which the driver and ReadRetry run
// work once: errors are still classified, nothing is repeated. Health
// checks use it: they must report the fault, not ride it out.
func WithoutRetry(ctx context.Context) context.Context {
	return context.WithValue(ctx, noRetryKey{}, true)
}

// noResolveKey marks a transaction whose ambiguous COMMIT need not be
// resolved.
type noResolveKey struct{}

// WithoutCommitResolution returns a context for BeginTx whose transaction
// is not prepared for resolving an ambiguous COMMIT (no
// pg_current_xact_id() round trip): for work that is safe to repeat
// whatever its COMMIT did, such as the relay marking rows published.
func WithoutCommitResolution(ctx context.Context) context.Context {
	return context.WithValue(ctx, noResolveKey{}, true)
}

func retryDisabled(ctx context.Context) bool {
	v, _ := ctx.Value(noRetryKey{}).(bool)
	return v
}

func (m *middleware) statement(next bentodriver.StatementHandler) bentodriver.StatementHandler {
	return func(ctx context.Context, st bentodriver.Statement) error {
		err := next(ctx, st)
		if err == nil {
			return nil
		}
		op := st.Kind.String()
		if st.Commit {
			// The statement went with COMMIT (Tx.DeferExec): a lost
			// connection may have committed.
			return WrapCommit(err)
		}
		if st.Tx != nil {
			return Wrap(err, op)
		}
		read := st.ReadOnly()
		if !safeToRepeat(read, err) || retryDisabled(ctx) {
			return wrapStatement(err, op, read)
		}
		p := m.policyFor(op, func(err error) bool { return safeToRepeat(read, err) })
		err = p.retry(ctx, err, func(ctx context.Context) error { return next(ctx, st) })
		if err == nil {
			return nil
		}
		return wrapStatement(err, op, read)
	}
}

// wrapStatement classifies a failed statement outside a transaction: a
// write is its own commit.
func wrapStatement(err error, op string, read bool) error {
	if read {
		return Wrap(err, op)
	}
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	_, code := classify(err)
	return &Error{Category: ClassifyCommit(err), Code: code, Op: op, Err: err}
}

// safeToRepeat: a retryable error on a read, or on any statement that
// provably never reached the server. A pool timeout is not repeated here:
// it already waited the full pool timeout.
func safeToRepeat(read bool, err error) bool {
	if !IsRetryable(err) || errors.Is(err, bentodriver.ErrPoolTimeout) {
		return false
	}
	return read || NotSent(err)
}

func (m *middleware) begin(next bentodriver.BeginHandler) bentodriver.BeginHandler {
	return func(ctx context.Context, opts *sql.TxOptions) (*bentodriver.Tx, error) {
		tx, err := next(ctx, opts)
		if err == nil {
			return tx, nil
		}
		if retryDisabled(ctx) {
			return nil, Wrap(err, "begin")
		}
		retryable := func(err error) bool {
			c := Classify(err)
			return (c == Connection || c == Transient) && IsRetryable(err)
		}
		p := m.policyFor("begin", retryable)
		err = p.retry(ctx, err, func(ctx context.Context) error {
			var err error
			tx, err = next(ctx, opts)
			return err
		})
		if err != nil {
			return nil, Wrap(err, "begin")
		}
		return tx, nil
	}
}

func (m *middleware) end(next bentodriver.EndHandler) bentodriver.EndHandler {
	return func(ctx context.Context, tx *bentodriver.Tx, commit bool) error {
		if !commit {
			return Wrap(next(ctx, tx, false), "rollback")
		}
		if ctx.Err() != nil {
			// database/sql does not send COMMIT on a done context: it rolls
			// back. The outcome is certain.
			err := next(ctx, tx, true)
			if err == nil {
				return nil
			}
			return &Error{Category: Timeout, Op: "commit", Err: fmt.Errorf("context ended before COMMIT; rolled back: %w", err)}
		}
		var xid string
		noResolve, _ := ctx.Value(noResolveKey{}).(bool)
		resolvable := m.opts.ResolveTimeout > 0 && !noResolve && tx.Pool().Dialect() == "postgres" && tx.Wrote()
		if resolvable {
			xid = TxID(tx)
			// A transaction sent whole with its COMMIT (one round trip)
			// gets no SELECT of its id first: it would cost a round trip,
			// and a row only it inserted (CommitEvidence) resolves it.
			if xid == "" && !m.opts.TxIDOnlyFromOutbox && !tx.WholeWithCommit() {
				var err error
				if xid, err = CurrentTxID(ctx, tx); err != nil {
					return errors.Join(Wrap(err, "commit"), next(ctx, tx, false))
				}
			}
		}
		err := next(ctx, tx, true)
		if err == nil {
			return nil
		}
		if resolvable && xid == "" {
			xid = TxID(tx) // read in the COMMIT's pipeline, if its answer came
		}
		// A statement sent with the COMMIT (Tx.DeferExec) comes back
		// already classified by the statement hook (WrapCommit): this is
		// the same failure, so it is classified once, from its cause, and
		// its text does not repeat "ambiguous error in commit".
		if e, ok := err.(*Error); ok && e.Op == "commit" {
			err = e.Err
		}
		cat := ClassifyCommit(err)
		_, code := classify(err)
		// Without the transaction's id (a unit sent whole with its COMMIT:
		// the id's answer was lost with the COMMIT's), a row only it
		// inserted resolves it, once its server process has ended.
		evidence, byRow := tx.Value(evidenceKey{}).(CommitEvidence)
		byRow = byRow && resolvable && xid == ""
		if cat != Ambiguous || (xid == "" && !byRow) {
			if cat == Ambiguous && !noResolve && m.opts.OnAmbiguous != nil { // work that needs no resolution is not counted
				m.opts.OnAmbiguous(OutcomeUnknown)
			}
			return &Error{Category: cat, Code: code, Op: "commit", Err: err}
		}
		var (
			outcome Outcome
			rerr    error
			what    string // what was resolved, for the log and the error
		)
		if xid != "" {
			outcome, rerr = ResolveCommit(ctx, tx.Pool().DB(), xid, m.opts.ResolveTimeout)
			what = "transaction " + xid
		} else {
			outcome, rerr = ResolveByEvidence(ctx, tx.Pool().DB(), evidence, tx.BackendPID(), m.opts.ResolveTimeout)
			what = fmt.Sprintf("the transaction of %s.%s = %v", evidence.Table, evidence.Column, evidence.Value)
		}
		if m.opts.OnAmbiguous != nil {
			m.opts.OnAmbiguous(outcome)
		}
		m.opts.Logger.Warn("bento: ambiguous commit resolved", "xid", xid, "resolved_by", what, "outcome", outcome.String(), "error", err.Error())
		switch outcome {
		case Committed:
			return nil
		case Aborted:
			return &Error{Category: Connection, Code: code, Op: "commit",
				Err: fmt.Errorf("%w (resolved: %s aborted, nothing was committed)", err, what)}
		default:
			return &Error{Category: Ambiguous, Code: code, Op: "commit", Err: errors.Join(err, rerr)}
		}
	}
}
