package driver

import (
	"context"
	"database/sql"
	sqldriver "database/sql/driver"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"

	"entgo.io/ent/dialect"
	entsql "entgo.io/ent/dialect/sql"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/stdlib"
)

// pgTx is a PostgreSQL transaction on a connection of its own, whose BEGIN
// is not a round trip of its own: it goes to the server in one pipeline
// with the transaction's first statement that writes (a unit of work's
// first INSERT, say), so a transaction of n statements costs n+1 round
// trips instead of n+2. A first statement that only reads is preceded by
// the BEGIN on its own instead: its rows are read as they come, not
// buffered. A transaction that runs no statement sends nothing at all.
// With deferWrites (WithDeferredWrites), the writes whose result nobody
// reads wait for the next statement that needs an answer, or for COMMIT,
// and go in its pipeline.
//
// It works through database/sql's *sql.Conn, so database/sql's pool still
// owns the connection; statements after the first go through the Conn
// with database/sql's usual machinery, and the pipelined ones through pgx
// on the same connection (sql.Conn.Raw), sharing its statement cache.
type pgTx struct {
	ctx      context.Context // the transaction's, for COMMIT and ROLLBACK
	db       *sql.DB
	conn     *sql.Conn
	ent      *entsql.Driver // ent's Exec/Query semantics on conn
	beginSQL string
	begun    bool
	broken   bool   // a pipelined step failed in a way that leaves the connection unusable
	wantXID  bool   // the BEGIN pipeline reads PostgresTxIDExpr, unless it is COMMIT's
	xid      string // what it read
	// deferWrites: statements whose result nobody reads (an Exec with a
	// nil destination) wait in deferred and go to the server in one
	// pipeline with the next statement that needs an answer, or COMMIT.
	deferWrites bool
	deferred    []queued
	pid         uint32 // the server process of the connection, once a statement was sent
}

// queued is a deferred statement.
type queued struct {
	query string
	args  []any
}

// PostgresTxIDExpr is the SQL expression of a PostgreSQL transaction's
// identity: its id (pg_current_xact_id, assigned by asking) and the start
// time of the server that assigned it, "xid@start". A transaction id
// identifies a transaction only within one life of the server: after a
// crash, ids whose WAL was never written are handed out again, so
// pg_xact_status of a lost transaction's id can report the commit of
// another one; package resilience trusts the status only from the same
// server life.
const PostgresTxIDExpr = "pg_current_xact_id()::text || '@' || extract(epoch from pg_postmaster_start_time())::text"

// beginPG takes a connection for a transaction whose BEGIN is deferred.
func beginPG(ctx context.Context, db *sql.DB, opts *sql.TxOptions, wantXID, deferWrites bool) (*pgTx, error) {
	begin, err := pgBeginSQL(opts)
	if err != nil {
		return nil, err
	}
	conn, err := db.Conn(ctx)
	if err != nil {
		return nil, err
	}
	t := &pgTx{ctx: ctx, db: db, beginSQL: begin, wantXID: wantXID, deferWrites: deferWrites}
	t.use(conn)
	return t, nil
}

func (t *pgTx) use(conn *sql.Conn) {
	t.conn, t.ent = conn, entsql.NewDriver(dialect.Postgres, entsql.Conn{ExecQuerier: conn})
}

// start runs f, the step that sends BEGIN. If it failed with the
// connection lost (one that died while idle in the pool, say: terminated
// by an administrator, or the server restarted), the connection is
// discarded and f runs again on a fresh one, at most twice, as
// database/sql retries a BEGIN on driver.ErrBadConn. Nothing the step did
// can have lasted: no COMMIT was sent, and a transaction whose connection
// ends is rolled back.
func (t *pgTx) start(ctx context.Context, f func(c *pgx.Conn) error) error {
	for attempt := 1; ; attempt++ {
		lost := false
		err := t.raw(func(c *pgx.Conn) error {
			err := f(c)
			if err != nil && (pgconn.SafeToRetry(err) || c.IsClosed()) {
				lost, t.broken = true, true
			}
			return err
		})
		if err == nil || attempt > 2 || !lost || ctx.Err() != nil {
			return err
		}
		_ = t.conn.Close()
		conn, cerr := t.db.Conn(ctx)
		if cerr != nil {
			return errors.Join(err, cerr)
		}
		t.use(conn)
		t.broken = false
	}
}

// pgBeginSQL renders BEGIN for opts as pgx's database/sql driver does.
func pgBeginSQL(opts *sql.TxOptions) (string, error) {
	if opts == nil {
		return "begin", nil
	}
	q := "begin"
	switch opts.Isolation {
	case sql.LevelDefault:
	case sql.LevelReadUncommitted:
		q += " isolation level read uncommitted"
	case sql.LevelReadCommitted:
		q += " isolation level read committed"
	case sql.LevelRepeatableRead, sql.LevelSnapshot:
		q += " isolation level repeatable read"
	case sql.LevelSerializable:
		q += " isolation level serializable"
	default:
		return "", fmt.Errorf("bento: isolation level %s is not supported by PostgreSQL (accepted: default, read uncommitted, read committed, repeatable read, snapshot, serializable)", opts.Isolation)
	}
	if opts.ReadOnly {
		q += " read only"
	}
	return q, nil
}

// raw runs f on the pgx connection under the *sql.Conn. A connection that
// f found dead, or left in an unknown state, is discarded.
func (t *pgTx) raw(f func(c *pgx.Conn) error) error {
	var ferr error
	err := t.conn.Raw(func(dc any) error {
		sc, ok := dc.(*stdlib.Conn)
		if !ok {
			return fmt.Errorf("bento: the PostgreSQL connection is a %T, not pgx's", dc)
		}
		c := sc.Conn()
		t.pid = c.PgConn().PID()
		ferr = f(c)
		if t.broken || c.IsClosed() {
			return sqldriver.ErrBadConn // database/sql discards it
		}
		return nil
	})
	if ferr != nil {
		return ferr
	}
	if errors.Is(err, sqldriver.ErrBadConn) {
		return nil // ferr was nil: the step succeeded, only the connection goes
	}
	return err
}

// begin sends BEGIN on its own, before a statement that is not pipelined.
func (t *pgTx) begin(ctx context.Context) error {
	if t.begun {
		return nil
	}
	t.begun = true
	return t.start(ctx, func(c *pgx.Conn) error {
		_, err := c.Exec(ctx, t.beginSQL)
		return err
	})
}

// pipelined reports whether query goes to the server with the BEGIN.
func (t *pgTx) pipelined(query string) bool { return !t.begun && !IsReadOnly(query) }

// checkDest checks that v can receive the result of a statement of kind:
// nil or a *sql.Result for an Exec, an *entsql.Rows for a Query.
func checkDest(v any, kind Kind) error {
	switch v.(type) {
	case nil, *sql.Result:
		if kind == Query {
			return fmt.Errorf("bento: invalid type %T for query rows, expected *sql.Rows", v)
		}
	case *entsql.Rows:
		if kind == Exec {
			return fmt.Errorf("bento: invalid type %T for an Exec result, expected *sql.Result", v)
		}
	default:
		return fmt.Errorf("bento: invalid type %T for the statement's result", v)
	}
	return nil
}

// pgArgs returns a statement's arguments as pgx takes them.
func pgArgs(args any) ([]any, error) {
	argv, ok := args.([]any)
	if !ok && args != nil {
		return nil, fmt.Errorf("bento: invalid type %T for the arguments, expected []any", args)
	}
	return argv, nil
}

// closeBatch closes br and returns err, or Close's error if err is nil:
// Close repeats the batch's first error, which err already is.
func closeBatch(br pgx.BatchResults, err error) error {
	if cerr := br.Close(); err == nil {
		return cerr
	}
	return err
}

// bufferRows reads rows into memory and closes them; v, an *entsql.Rows,
// gets them.
func bufferRows(m *pgtype.Map, rows pgx.Rows, v any) error {
	// A copy: the connection reuses the descriptions for its next result
	// (the transaction id's, with BeginTxID).
	buf := &bufferedRows{m: m, fields: slices.Clone(rows.FieldDescriptions())}
	for rows.Next() {
		raw := rows.RawValues()
		n := 0
		for _, b := range raw {
			n += len(b)
		}
		// One allocation for the row's values, one for its slices.
		data, row := make([]byte, 0, n), make([][]byte, len(raw))
		for i, b := range raw {
			if b != nil {
				data = append(data, b...)
				row[i] = data[len(data)-len(b) : len(data) : len(data)]
			}
		}
		buf.rows = append(buf.rows, row)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	*v.(*entsql.Rows) = entsql.Rows{ColumnScanner: buf}
	return nil
}

// Exec runs a statement with ent's semantics (v: nil or *sql.Result).
func (t *pgTx) Exec(ctx context.Context, query string, args, v any) error {
	return t.stmt(ctx, query, args, v, Exec)
}

// Query runs a query with ent's semantics (v: *entsql.Rows).
func (t *pgTx) Query(ctx context.Context, query string, args, v any) error {
	return t.stmt(ctx, query, args, v, Query)
}

func (t *pgTx) stmt(ctx context.Context, query string, args, v any, kind Kind) error {
	if t.deferWrites && kind == Exec && v == nil && !IsReadOnly(query) {
		argv, err := pgArgs(args)
		if err != nil {
			return err
		}
		t.deferred = append(t.deferred, queued{query: query, args: argv})
		return nil
	}
	if len(t.deferred) > 0 || t.pipelined(query) {
		return t.flush(ctx, query, args, v, kind)
	}
	if err := t.begin(ctx); err != nil {
		return err
	}
	if !IsReadOnly(query) {
		return t.write(ctx, query, args, v, kind)
	}
	if kind == Exec {
		return t.ent.Exec(ctx, query, args, v)
	}
	return t.ent.Query(ctx, query, args, v)
}

// flush sends the deferred statements and query in one pipeline, after
// BEGIN and the transaction id's SELECT (PostgresTxIDExpr, if wanted) if
// nothing was sent yet, and reads query's result into v: for an Exec, v
// is nil or a *sql.Result; for a Query, an *entsql.Rows that gets the rows
// read into memory (a statement that writes returns few). An empty query
// sends only the rest.
func (t *pgTx) flush(ctx context.Context, query string, args, v any, kind Kind) error {
	argv, err := pgArgs(args)
	if err != nil {
		return err
	}
	if query != "" {
		if err := checkDest(v, kind); err != nil {
			return err
		}
	}
	deferred, began := t.takeDeferred()
	step := func(c *pgx.Conn) error {
		xid := began && t.wantXID
		br := c.SendBatch(ctx, t.pipeline(began, xid, deferred, query, argv))
		err := t.readHead(br, began, xid)
		if err == nil {
			err = readDeferred(br, deferred)
		}
		if err == nil && query != "" {
			err = t.readOne(c.TypeMap(), br, v, kind)
		}
		return closeBatch(br, err)
	}
	if began {
		return t.start(ctx, step)
	}
	return t.raw(step)
}

// takeDeferred takes the deferred statements out of t for a pipeline
// about to send them, and reports whether that pipeline begins the
// transaction; t counts as begun from now on.
func (t *pgTx) takeDeferred() (deferred []queued, began bool) {
	deferred, began = t.deferred, !t.begun
	t.deferred, t.begun = nil, true
	return deferred, began
}

// pipeline queues, in order: BEGIN when the pipeline begins the
// transaction, the transaction id's SELECT if xid, the deferred
// statements, and query unless it is empty.
func (t *pgTx) pipeline(began, xid bool, deferred []queued, query string, argv []any) *pgx.Batch {
	b := &pgx.Batch{}
	if began {
		b.Queue(t.beginSQL)
	}
	if xid {
		b.Queue("SELECT " + PostgresTxIDExpr)
	}
	for _, q := range deferred {
		b.Queue(q.query, q.args...)
	}
	if query != "" {
		b.Queue(query, argv...)
	}
	return b
}

// readHead reads the results of BEGIN and the transaction id's SELECT,
// if the pipeline sent them.
func (t *pgTx) readHead(br pgx.BatchResults, began, xid bool) error {
	if began {
		if _, err := br.Exec(); err != nil {
			return err
		}
	}
	if xid {
		return br.QueryRow().Scan(&t.xid)
	}
	return nil
}

// readDeferred reads the results of the deferred statements. The first
// that failed is named in the error; the server skipped the rest of the
// pipeline after it.
func readDeferred(br pgx.BatchResults, deferred []queued) error {
	for _, q := range deferred {
		if _, err := br.Exec(); err != nil {
			return &DeferredError{Query: q.query, Err: err}
		}
	}
	return nil
}

// DeferredError is the failure of a statement that was deferred
// (WithDeferredWrites), returned by the statement or Commit that sent it.
type DeferredError struct {
	Query string // the deferred statement, without its arguments
	Err   error
}

func (e *DeferredError) Error() string {
	q := e.Query
	if len(q) > 120 {
		q = strings.ToValidUTF8(q[:120], "") + "…"
	}
	return fmt.Sprintf("bento: deferred statement %q: %v", q, e.Err)
}

func (e *DeferredError) Unwrap() error { return e.Err }

// readOne reads one statement's result into v.
func (t *pgTx) readOne(m *pgtype.Map, br pgx.BatchResults, v any, kind Kind) error {
	if kind == Exec {
		tag, err := br.Exec()
		if err == nil && v != nil {
			*v.(*sql.Result) = pgResult(tag.RowsAffected())
		}
		return err
	}
	rows, err := br.Query()
	if err != nil {
		return err
	}
	return bufferRows(m, rows, v)
}

// write runs a statement that may write on the pgx connection itself,
// with the rows it returns (RETURNING: few) read into memory, as the
// pipelined first statement is: past database/sql's per-statement work
// (converting the arguments again; for rows, a goroutine that watches a
// cancellable context until they are closed). Errors and a connection
// left broken are handled as database/sql would: the connection is
// discarded (raw).
func (t *pgTx) write(ctx context.Context, query string, args, v any, kind Kind) error {
	argv, err := pgArgs(args)
	if err != nil {
		return err
	}
	if err := checkDest(v, kind); err != nil {
		return err
	}
	return t.raw(func(c *pgx.Conn) error {
		if kind == Exec {
			tag, err := c.Exec(ctx, query, argv...)
			if err == nil && v != nil {
				*v.(*sql.Result) = pgResult(tag.RowsAffected())
			}
			return err
		}
		rows, err := c.Query(ctx, query, argv...)
		if err != nil {
			return err
		}
		return bufferRows(c.TypeMap(), rows, v)
	})
}

// QueryContext runs a query and returns database/sql rows (never
// pipelined: the rows stream from the connection).
func (t *pgTx) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	if len(t.deferred) > 0 {
		if err := t.flush(ctx, "", nil, nil, Exec); err != nil {
			return nil, err
		}
	}
	if err := t.begin(ctx); err != nil {
		return nil, err
	}
	return t.conn.QueryContext(ctx, query, args...)
}

// execCommit sends query and COMMIT (after BEGIN, if nothing was sent
// yet) in one pipeline, then gives the connection back to the pool. If
// query fails, the server skips the COMMIT: the transaction is rolled back
// and query's error returned. Any other failure is COMMIT's, with the
// connection discarded as end does.
//
// A transaction sent whole, with default options, whose statements are
// all INSERT, UPDATE, DELETE, MERGE or WITH (implicitOK), goes without
// BEGIN and COMMIT: PostgreSQL runs the statements of a pipeline up to its
// Sync as one implicit transaction, which commits at the Sync, or is
// rolled back there if a statement failed (the server skipping the rest).
// Two statements less for the server and the client, the same atomicity;
// an error raised while committing (a deferred constraint) comes with the
// Sync's answer, as it would have with COMMIT's.
//
// A transaction sent whole with its COMMIT does not read its id, even
// with wantXID. The server keeps a pipeline's answers until its end (the
// Sync), unless they fill its output buffer, which a few writes' answers
// do not; so the id would reach the client with the COMMIT's answer or not
// at all, and the id is only ever needed when that answer is lost (to
// resolve the COMMIT). Such a transaction is resolved by a row that only
// it inserted (resilience.CommitEvidence), if it has one.
func (t *pgTx) execCommit(ctx context.Context, query string, args any) error {
	argv, err := pgArgs(args)
	if err != nil {
		return errors.Join(err, t.end(false))
	}
	defer t.conn.Close()
	deferred, began := t.takeDeferred()
	implicit := began && t.implicitOK(deferred, query)
	sendBegin := began && !implicit
	var stmtErr error
	return t.raw(func(c *pgx.Conn) error {
		b := t.pipeline(sendBegin, false, deferred, query, argv)
		if !implicit {
			b.Queue("commit")
		}
		br := c.SendBatch(ctx, b)
		err := t.readHead(br, sendBegin, false)
		if err == nil {
			if err = readDeferred(br, deferred); err != nil {
				stmtErr = err
			}
		}
		if err == nil && query != "" {
			if _, err = br.Exec(); err != nil {
				stmtErr = err
			}
		}
		var tag pgconn.CommandTag
		if err == nil && !implicit {
			tag, err = br.Exec()
		}
		err = closeBatch(br, err)
		if stmtErr != nil && !c.IsClosed() {
			var pg *pgconn.PgError
			if errors.As(stmtErr, &pg) && pg.Severity != "FATAL" && pg.Severity != "PANIC" {
				if implicit {
					// The Sync rolled the implicit transaction back.
					return stmtErr
				}
				// The server skipped COMMIT and holds the failed
				// transaction open: end it.
				if _, rerr := c.Exec(ctx, "rollback"); rerr == nil {
					return stmtErr
				}
			}
		}
		if err != nil {
			t.broken = true
			return err
		}
		if tag.String() == "ROLLBACK" {
			return pgx.ErrTxCommitRollback
		}
		return nil
	})
}

// implicitOK reports whether a transaction of the deferred statements and
// query (if not empty), sent whole, can be PostgreSQL's implicit
// transaction instead of BEGIN … COMMIT: its BEGIN has default options
// and each statement is data manipulation (isDML), which runs in an
// implicit transaction as in an explicit one. Statements that need a
// transaction block (SAVEPOINT, LOCK, SET LOCAL, DECLARE) or options
// (isolation, read only) keep BEGIN and COMMIT.
func (t *pgTx) implicitOK(deferred []queued, query string) bool {
	if t.beginSQL != "begin" {
		return false
	}
	for _, q := range deferred {
		if !isDML(q.query) {
			return false
		}
	}
	return query == "" || isDML(query)
}

// end commits or rolls back, then gives the connection back to the pool.
// A COMMIT that PostgreSQL turned into a ROLLBACK (the transaction had
// failed) returns pgx.ErrTxCommitRollback, as pgx's own transactions do.
func (t *pgTx) end(commit bool) error {
	if commit && len(t.deferred) > 0 {
		return t.execCommit(t.ctx, "", nil)
	}
	t.deferred = nil
	defer t.conn.Close()
	if !t.begun {
		return nil
	}
	stmt := "rollback"
	if commit {
		stmt = "commit"
	}
	err := t.raw(func(c *pgx.Conn) error {
		tag, err := c.Exec(t.ctx, stmt)
		if err != nil {
			// A failed COMMIT's outcome is unknown, and pgx closes a
			// connection whose ROLLBACK failed: never reuse it.
			t.broken = true
			return err
		}
		if commit && tag.String() == "ROLLBACK" {
			return pgx.ErrTxCommitRollback
		}
		return nil
	})
	if !commit && errors.Is(err, sql.ErrConnDone) {
		// An earlier step lost the connection: the server rolled the
		// transaction back when it went.
		return nil
	}
	return err
}

// Commit commits the transaction on its context.
func (t *pgTx) Commit() error { return t.end(true) }

// Rollback rolls the transaction back on its context.
func (t *pgTx) Rollback() error { return t.end(false) }

// pgResult is the sql.Result of a pipelined statement.
type pgResult int64

func (r pgResult) LastInsertId() (int64, error) {
	return 0, errors.New("bento: LastInsertId is not supported by PostgreSQL; use RETURNING")
}
func (r pgResult) RowsAffected() (int64, error) { return int64(r), nil }

// bufferedRows are a pipelined query's rows, read into memory and scanned
// with pgx's type map like pgx's own rows.
type bufferedRows struct {
	m      *pgtype.Map
	fields []pgconn.FieldDescription
	rows   [][][]byte
	i      int
	plans  []pgtype.ScanPlan // per column, for the destination type it was made for
	types  []reflect.Type
}

func (r *bufferedRows) Close() error { return nil }
func (r *bufferedRows) ColumnTypes() ([]*sql.ColumnType, error) {
	return nil, errors.New("bento: column types are not available for the rows of a transaction's first statement")
}
func (r *bufferedRows) Columns() ([]string, error) {
	names := make([]string, len(r.fields))
	for i, f := range r.fields {
		names[i] = f.Name
	}
	return names, nil
}
func (r *bufferedRows) Err() error          { return nil }
func (r *bufferedRows) NextResultSet() bool { return false }
func (r *bufferedRows) Next() bool {
	if r.i >= len(r.rows) {
		return false
	}
	r.i++
	return true
}
func (r *bufferedRows) Scan(dest ...any) error {
	if r.i == 0 || r.i > len(r.rows) {
		return errors.New("bento: Scan called without a row (call Next first)")
	}
	if len(dest) != len(r.fields) {
		return fmt.Errorf("bento: Scan expected %d destination arguments, got %d", len(r.fields), len(dest))
	}
	if r.plans == nil {
		r.plans, r.types = make([]pgtype.ScanPlan, len(dest)), make([]reflect.Type, len(dest))
	}
	row := r.rows[r.i-1]
	for i, d := range dest {
		if d == nil {
			continue
		}
		f := r.fields[i]
		if t := reflect.TypeOf(d); r.plans[i] == nil || r.types[i] != t {
			r.plans[i], r.types[i] = r.m.PlanScan(f.DataTypeOID, f.Format, d), t
		}
		if err := r.plans[i].Scan(row[i], d); err != nil {
			return fmt.Errorf("bento: scanning column %q: %w", f.Name, err)
		}
	}
	return nil
}
