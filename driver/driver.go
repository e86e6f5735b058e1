// Package driver is Bento's ent dialect.Driver: a wrapper over
// database/sql pools that every later layer plugs into.
//
// Driver forwards everything ent asks of a driver (Exec, Query, Tx, and the
// optional BeginTx, ExecContext and QueryContext that ent's generated code
// asserts) and reports Dialect exactly as ent expects. Work passes through a
// chain of Middleware (retry, drain, metrics, replica routing, outbox,
// statement logging) built once by New, so a layer that is not configured
// costs nothing.
//
// The Driver bounds the wait for a connection: a statement or transaction
// that finds every connection busy for the pool timeout fails with a
// *PoolTimeoutError instead of waiting for ever.
//
//	drv := driver.New(driver.Config{Dialect: "postgres", Primary: pool})
//	client := ent.NewClient(ent.Driver(drv))
package driver

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"entgo.io/ent/dialect"
)

// Kind says whether a statement was sent through Exec or Query.
type Kind uint8

// Statement kinds.
const (
	Exec Kind = iota
	Query
)

func (k Kind) String() string {
	if k == Query {
		return "query"
	}
	return "exec"
}

// Statement is one statement on its way to the database.
type Statement struct {
	Kind  Kind
	Query string
	// Args are the statement's arguments ([]any, as ent passes them).
	Args any
	// Dest receives the result: a *sql.Result for Exec, an *entsql.Rows
	// for Query.
	Dest any
	// Tx is the transaction the statement runs in; nil outside one.
	Tx *Tx
	// Pool runs a statement outside a transaction; nil means the primary.
	// Replica routing sets it.
	Pool *Pool
	// Commit marks a transaction's deferred last statement (Tx.DeferExec),
	// run by Commit with COMMIT right behind it, in one round trip where
	// the driver can: a failure of a Commit statement is a failure of the
	// COMMIT, whose outcome a lost connection leaves unknown.
	Commit bool
}

// ReadOnly reports whether the statement only reads: a SELECT that does
// not lock rows. Everything else (INSERT … RETURNING through Query, CTEs,
// SELECT … FOR UPDATE) counts as a write.
func (s Statement) ReadOnly() bool { return IsReadOnly(s.Query) }

// Handlers are the links of the middleware chain. A handler must call next
// at most once per call unless it retries, and must pass the context on.
type (
	// StatementHandler runs one statement.
	StatementHandler func(ctx context.Context, st Statement) error
	// BeginHandler starts a transaction.
	BeginHandler func(ctx context.Context, opts *sql.TxOptions) (*Tx, error)
	// EndHandler commits (commit true) or rolls back a transaction. The
	// context is the one the transaction was started with.
	EndHandler func(ctx context.Context, tx *Tx, commit bool) error
)

// Middleware intercepts the work passing through a Driver. Each field is
// optional; a nil field leaves that path alone.
type Middleware struct {
	// Name identifies the middleware in errors and docs.
	Name      string
	Statement func(next StatementHandler) StatementHandler
	Begin     func(next BeginHandler) BeginHandler
	End       func(next EndHandler) EndHandler
}

// Config configures a Driver.
type Config struct {
	// Dialect is "postgres", "mysql" or "sqlite3".
	Dialect string
	// Primary is the pool that takes writes and transactions.
	Primary *Pool
	// Middleware is applied outermost first: Middleware[0] sees every call
	// before Middleware[1].
	Middleware []Middleware
}

// Driver is an ent dialect.Driver. It is safe for concurrent use.
type Driver struct {
	dialect string
	primary *Pool
	stmt    StatementHandler
	begin   BeginHandler
	end     EndHandler
}

var (
	_ dialect.Driver = (*Driver)(nil)
	_ dialect.Tx     = (*Tx)(nil)
)

// New returns a Driver that runs work on cfg.Primary through cfg.Middleware.
func New(cfg Config) *Driver {
	d := &Driver{dialect: cfg.Dialect, primary: cfg.Primary}
	d.stmt, d.begin, d.end = d.baseStatement, d.baseBegin, d.baseEnd
	for i := len(cfg.Middleware) - 1; i >= 0; i-- {
		m := cfg.Middleware[i]
		if m.Statement != nil {
			d.stmt = m.Statement(d.stmt)
		}
		if m.Begin != nil {
			d.begin = m.Begin(d.begin)
		}
		if m.End != nil {
			d.end = m.End(d.end)
		}
	}
	return d
}

// Dialect returns "postgres", "mysql" or "sqlite3", as ent expects.
func (d *Driver) Dialect() string { return d.dialect }

// Primary returns the primary pool.
func (d *Driver) Primary() *Pool { return d.primary }

// DB returns the primary's database/sql pool.
func (d *Driver) DB() *sql.DB { return d.primary.db }

// Close closes the primary pool. It is not a drain: see package drain.
func (d *Driver) Close() error { return d.primary.Close() }

// Exec runs a statement that returns no rows; v is nil or a *sql.Result.
func (d *Driver) Exec(ctx context.Context, query string, args, v any) error {
	return d.stmt(ctx, Statement{Kind: Exec, Query: query, Args: args, Dest: v})
}

// Query runs a statement that returns rows into v, an *entsql.Rows.
func (d *Driver) Query(ctx context.Context, query string, args, v any) error {
	return d.stmt(ctx, Statement{Kind: Query, Query: query, Args: args, Dest: v})
}

// ExecContext runs a statement through the chain and returns its result.
func (d *Driver) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	var res sql.Result
	if err := d.Exec(ctx, query, args, &res); err != nil {
		return nil, err
	}
	return res, nil
}

// QueryContext runs a query through the chain and returns database/sql
// rows; close them promptly, they hold a connection.
func (d *Driver) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	return queryContext(ctx, d.stmt, Statement{Kind: Query, Query: query, Args: args})
}

// Tx starts a transaction with default options.
func (d *Driver) Tx(ctx context.Context) (dialect.Tx, error) { return d.BeginTx(ctx, nil) }

// BeginTx starts a transaction. The context is the transaction's for its
// whole life: middleware reads values from it, and database/sql rolls the
// transaction back if it is cancelled.
func (d *Driver) BeginTx(ctx context.Context, opts *sql.TxOptions) (dialect.Tx, error) {
	tx, err := d.begin(ctx, opts)
	if err != nil {
		return nil, err
	}
	if slot, ok := ctx.Value(txSlotKey{}).(*TxSlot); ok {
		slot.Tx = tx
	}
	return tx, nil
}

func (d *Driver) baseStatement(ctx context.Context, st Statement) error {
	if p, ok := ctx.Value(probeKey{}).(*Probe); ok {
		p.observe(st)
	}
	if st.Tx != nil {
		if !st.Tx.wrote && !IsReadOnly(st.Query) {
			st.Tx.wrote = true
		}
		if st.Commit {
			return st.Tx.execCommit(ctx, st)
		}
		if rp, ok := st.Dest.(*stdRows); ok {
			argv, _ := st.Args.([]any)
			rows, err := st.Tx.raw.(interface {
				QueryContext(context.Context, string, ...any) (*sql.Rows, error)
			}).QueryContext(ctx, st.Query, argv...)
			rp.rows = rows
			return err
		}
		if st.Kind == Query {
			return st.Tx.raw.Query(ctx, st.Query, st.Args, st.Dest)
		}
		return st.Tx.raw.Exec(ctx, st.Query, st.Args, st.Dest)
	}
	p := st.Pool
	if p == nil {
		p = d.primary
	}
	w, err := p.acquire(ctx, p.writers != nil && !IsReadOnly(st.Query))
	if err != nil {
		return err
	}
	// The slot is held until the result arrives, not until rows are
	// closed: ent's migration asserts that the rows it gets are *sql.Rows,
	// so they cannot carry a release hook. ent reads rows at once.
	defer p.release(w)
	if st.Kind == Exec {
		return p.base.Exec(ctx, st.Query, st.Args, st.Dest)
	}
	if rp, ok := st.Dest.(*stdRows); ok {
		argv, _ := st.Args.([]any)
		rows, err := p.db.QueryContext(ctx, st.Query, argv...)
		rp.rows = rows
		return err
	}
	return p.base.Query(ctx, st.Query, st.Args, st.Dest)
}

func (d *Driver) baseBegin(ctx context.Context, opts *sql.TxOptions) (*Tx, error) {
	p := d.primary
	w, err := p.acquire(ctx, opts == nil || !opts.ReadOnly)
	if err != nil {
		return nil, err
	}
	var raw dialect.Tx
	if p.deferBegin {
		raw, err = beginPG(ctx, p.db, opts, p.txID, ctx.Value(deferWritesKey{}) != nil)
	} else {
		raw, err = p.base.BeginTx(ctx, opts)
	}
	if err != nil {
		p.release(w)
		return nil, err
	}
	tx := &Tx{drv: d, ctx: ctx, raw: raw, pool: p, writeSlot: w}
	tx.vals = tx.buf[:0]
	if opts != nil {
		tx.opts = *opts
	}
	return tx, nil
}

func (d *Driver) baseEnd(ctx context.Context, tx *Tx, commit bool) error {
	if tx.done {
		return sql.ErrTxDone
	}
	tx.done = true
	defer tx.pool.release(tx.writeSlot)
	final := tx.final
	tx.final = nil
	if commit && final != nil {
		final.Commit = true
		return d.stmt(ctx, *final)
	}
	if commit {
		return tx.raw.Commit()
	}
	err := tx.raw.Rollback()
	if err != nil && d.dialect == dialect.SQLite && strings.Contains(err.Error(), "no transaction is active") {
		// SQLite already rolled the transaction back itself (after
		// SQLITE_FULL, BUSY, IOERR, NOMEM or INTERRUPT): the rollback the
		// caller asked for has happened.
		return nil
	}
	return err
}

// stdRows carries *sql.Rows out of the chain for QueryContext.
type stdRows struct{ rows *sql.Rows }

func queryContext(ctx context.Context, h StatementHandler, st Statement) (*sql.Rows, error) {
	var r stdRows
	st.Dest = &r
	if err := h(ctx, st); err != nil {
		return nil, err
	}
	return r.rows, nil
}

// Tx is a transaction of a Driver; it implements ent's dialect.Tx. A Tx
// is used by one goroutine at a time, as database/sql requires.
type Tx struct {
	drv  *Driver
	ctx  context.Context
	raw  dialect.Tx
	pool *Pool
	opts sql.TxOptions
	done bool
	vals []txValue
	buf  [6]txValue // vals' first backing array: no allocation for the usual few

	writeSlot bool       // holds the pool's write slot
	wrote     bool       // a statement that is not IsReadOnly ran
	final     *Statement // DeferExec's statement, run by Commit
}

// Wrote reports whether a statement that may write (not IsReadOnly) ran in
// the transaction.
func (tx *Tx) Wrote() bool { return tx.wrote }

type txValue struct{ key, val any }

// Context returns the context the transaction was started with.
func (tx *Tx) Context() context.Context { return tx.ctx }

// Options returns the options the transaction was started with.
func (tx *Tx) Options() sql.TxOptions { return tx.opts }

// Pool returns the pool the transaction runs on.
func (tx *Tx) Pool() *Pool { return tx.pool }

// Driver returns the driver the transaction belongs to.
func (tx *Tx) Driver() *Driver { return tx.drv }

// Done reports whether the transaction was committed or rolled back.
func (tx *Tx) Done() bool { return tx.done }

// SetValue attaches a value to the transaction under key (comparable, as
// for context.WithValue). Middleware uses it to hand results upward, such
// as the PostgreSQL transaction id the outbox reads before COMMIT.
func (tx *Tx) SetValue(key, val any) {
	for i := range tx.vals {
		if tx.vals[i].key == key {
			tx.vals[i].val = val
			return
		}
	}
	tx.vals = append(tx.vals, txValue{key, val})
}

// Value returns the value attached under key, or nil.
func (tx *Tx) Value(key any) any {
	for _, v := range tx.vals {
		if v.key == key {
			return v.val
		}
	}
	return nil
}

// Exec runs a statement in the transaction.
func (tx *Tx) Exec(ctx context.Context, query string, args, v any) error {
	return tx.drv.stmt(ctx, Statement{Kind: Exec, Query: query, Args: args, Dest: v, Tx: tx})
}

// Query runs a query in the transaction.
func (tx *Tx) Query(ctx context.Context, query string, args, v any) error {
	return tx.drv.stmt(ctx, Statement{Kind: Query, Query: query, Args: args, Dest: v, Tx: tx})
}

// ExecContext runs a statement in the transaction and returns its result.
func (tx *Tx) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	var res sql.Result
	if err := tx.Exec(ctx, query, args, &res); err != nil {
		return nil, err
	}
	return res, nil
}

// QueryContext runs a query in the transaction and returns its rows.
func (tx *Tx) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	return queryContext(ctx, tx.drv.stmt, Statement{Kind: Query, Query: query, Args: args, Tx: tx})
}

// Commit commits the transaction through the chain (the outbox writes its
// rows first).
func (tx *Tx) Commit() error { return tx.drv.end(tx.ctx, tx, true) }

// DeferExec makes query the transaction's last statement: Commit runs it,
// through the middleware chain like any statement (Statement.Commit set),
// and then commits, and Rollback drops it. On PostgreSQL with
// PoolConfig.PipelineBegin the statement and COMMIT go to the server in
// one round trip instead of two. Commit returns the statement's error if
// it fails, the transaction then rolled back. Its result is not
// available; a transaction defers one statement at most.
func (tx *Tx) DeferExec(query string, args ...any) error {
	switch {
	case tx.done:
		return sql.ErrTxDone
	case tx.final != nil:
		return errors.New("bento: DeferExec: the transaction already has a deferred statement")
	}
	tx.final = &Statement{Kind: Exec, Query: query, Args: args, Tx: tx}
	return nil
}

// BeginTxID is the transaction's id as PostgreSQL reported it in the
// pipeline that sent BEGIN (the value of PostgresTxIDExpr; PoolConfig.
// BeginTxID), or "" if it was not asked for or not sent yet.
func (tx *Tx) BeginTxID() string {
	if pt, ok := tx.raw.(*pgTx); ok {
		return pt.xid
	}
	return ""
}

// WholeWithCommit reports whether the transaction has sent nothing yet,
// on a pool that reads transaction ids with BEGIN (PoolConfig.BeginTxID):
// if nothing needs an answer before, its statements go to the server with
// its COMMIT, in one round trip. Its id is then not read (BeginTxID stays
// ""): it would come back with the COMMIT's answer or not at all, so it
// could never resolve a lost COMMIT. A row that only the transaction
// inserts can (resilience.CommitEvidence).
func (tx *Tx) WholeWithCommit() bool {
	pt, ok := tx.raw.(*pgTx)
	return ok && pt.wantXID && !pt.begun
}

// BackendPID is the process id of the PostgreSQL server process that ran
// the transaction, once it sent a statement (0 before, and on other
// dialects). A COMMIT with no answer has ended once that process has.
func (tx *Tx) BackendPID() uint32 {
	if pt, ok := tx.raw.(*pgTx); ok {
		return pt.pid
	}
	return 0
}

// execCommit runs a deferred statement and commits.
func (tx *Tx) execCommit(ctx context.Context, st Statement) error {
	if pt, ok := tx.raw.(*pgTx); ok {
		return pt.execCommit(ctx, st.Query, st.Args)
	}
	if err := tx.raw.Exec(ctx, st.Query, st.Args, nil); err != nil {
		_ = tx.raw.Rollback()
		return err
	}
	return tx.raw.Commit()
}

// Rollback rolls the transaction back. Calling it after Commit or
// Rollback returns sql.ErrTxDone.
func (tx *Tx) Rollback() error { return tx.drv.end(tx.ctx, tx, false) }

type deferWritesKey struct{}

// WithDeferredWrites returns a context whose transactions (BeginTx) defer
// their writes whose result nobody reads: an Exec with a nil destination,
// which is how ent inserts a row whose id the caller set (Create with
// SetID, or an id field with a default). Such a statement is not sent when
// it is run: it waits, and goes to the server in one pipeline with the
// transaction's next statement that needs an answer (a query, an update
// whose row count ent checks) or with COMMIT. A unit of work whose writes
// all have client-made ids is then one round trip, BEGIN to COMMIT.
//
// The contract changes in one way: a deferred statement's error (a unique
// or foreign key violation, say) is not returned by the call that ran it
// but by the statement that sends it, or by Commit; the transaction is
// then rolled back, and nothing of it is committed. Use it where the code
// does not branch on a write's error before the end of the transaction.
// Statements still run in the order they were issued, and a read in the
// transaction sees every write before it.
//
// It applies on PostgreSQL with PoolConfig.PipelineBegin (bento.Open sets
// it); elsewhere every statement is sent when it is run.
func WithDeferredWrites(ctx context.Context) context.Context {
	return context.WithValue(ctx, deferWritesKey{}, true)
}

// TxSlot receives the *Tx that BeginTx starts with a context made by
// WithTxSlot. The unit of work uses it to reach the Driver's Tx behind
// ent's generated one.
type TxSlot struct{ Tx *Tx }

type txSlotKey struct{}

// WithTxSlot returns a context that makes BeginTx store its Tx in slot.
func WithTxSlot(ctx context.Context, slot *TxSlot) context.Context {
	return context.WithValue(ctx, txSlotKey{}, slot)
}

// TxFromContext returns the Tx that BeginTx stored in the context's slot
// (a unit of work's context), or nil.
func TxFromContext(ctx context.Context) *Tx {
	if slot, ok := ctx.Value(txSlotKey{}).(*TxSlot); ok {
		return slot.Tx
	}
	return nil
}

// String describes the driver for logs.
func (d *Driver) String() string { return fmt.Sprintf("bento driver (%s)", d.dialect) }

type primaryKey struct{}

// UsePrimary returns a context whose work runs on the primary even where a
// read could go to a replica (replica routing honours it).
func UsePrimary(ctx context.Context) context.Context {
	return context.WithValue(ctx, primaryKey{}, true)
}

// PrimaryOnly reports whether ctx was made by UsePrimary.
func PrimaryOnly(ctx context.Context) bool {
	v, _ := ctx.Value(primaryKey{}).(bool)
	return v
}

// Probe records what statements ran under a context made by WithProbe:
// layers above the driver (an ent interceptor retrying a whole query, rows
// scanning included) use it to learn whether what they are about to
// repeat only read, outside any transaction.
type Probe struct {
	Statements int  // statements that reached the database
	InTx       bool // one of them ran in a transaction
	Writes     bool // one of them may have written (not IsReadOnly)
}

type probeKey struct{}

// WithProbe returns a context under which the driver records its
// statements in p. p must not be shared between goroutines.
func WithProbe(ctx context.Context, p *Probe) context.Context {
	return context.WithValue(ctx, probeKey{}, p)
}

func (p *Probe) observe(st Statement) {
	p.Statements++
	if st.Tx != nil {
		p.InTx = true
	}
	if !p.Writes && !IsReadOnly(st.Query) {
		p.Writes = true
	}
}
