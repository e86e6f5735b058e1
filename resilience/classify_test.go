package resilience_test

import (
	"context"
	"database/sql"
	sqldriver "database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/ncruces/go-sqlite3"
	sqlitedriver "github.com/ncruces/go-sqlite3/driver"

	bentodriver "github.com/bento-go/bento/driver"
	"github.com/bento-go/bento/internal/testdb"
	"github.com/bento-go/bento/resilience"
)

// realRow is one error produced by a real server, with what Classify,
// IsRetryable and Code must say about it.
type realRow struct {
	name string
	// produce returns the error the server gave. It may be called again
	// (up to producerAttempts times) while want rejects the error, for
	// producers that depend on a race between two sessions.
	produce func(t *testing.T) error
	// want reports whether the produced error is the one the row is about
	// (the right SQLSTATE, error number or SQLite code).
	want      func(error) bool
	cat       resilience.Category
	retryable bool
	// codes are the acceptable values of resilience.Code; a single value
	// in most rows.
	codes []string
	// cause reports whether an error still reaches the driver's own error
	// value (errors.As), checked on resilience.Wrap(err, "exec").
	cause func(error) bool
}

const producerAttempts = 5

// runRealRows produces each row's error from the server and checks it.
func runRealRows(t *testing.T, rows []realRow) {
	t.Helper()
	for _, r := range rows {
		t.Run(r.name, func(t *testing.T) {
			err := eventually(t, r.produce, r.want)
			t.Logf("%s: %T: %v", r.name, err, err)
			checkClassified(t, err, r.cat, r.retryable, r.codes, r.cause)
		})
	}
}

// eventually calls produce until want accepts its error, at most
// producerAttempts times, and fails the test if it never does.
func eventually(t *testing.T, produce func(t *testing.T) error, want func(error) bool) error {
	t.Helper()
	var err error
	for i := 1; i <= producerAttempts; i++ {
		err = produce(t)
		if t.Failed() {
			t.FailNow()
		}
		if want(err) {
			return err
		}
		t.Logf("attempt %d did not produce the expected error (got %T: %v); trying again", i, err, err)
	}
	t.Fatalf("the server never produced the expected error in %d attempts; last error: %T: %v", producerAttempts, err, err)
	return nil
}

// checkClassified asserts Classify, IsRetryable and Code on err, and that
// Wrap keeps the cause and names the category.
func checkClassified(t *testing.T, err error, cat resilience.Category, retryable bool, codes []string, cause func(error) bool) {
	t.Helper()
	if err == nil {
		t.Fatal("no error to classify")
	}
	if got := resilience.Classify(err); got != cat {
		t.Errorf("Classify(%T %q) = %v, want %v", err, err, got, cat)
	}
	if got := resilience.IsRetryable(err); got != retryable {
		t.Errorf("IsRetryable(%T %q) = %v, want %v", err, err, got, retryable)
	}
	if codes == nil {
		codes = []string{""}
	}
	if got := resilience.Code(err); !slices.Contains(codes, got) {
		t.Errorf("Code(%T %q) = %q, want one of %q", err, err, got, codes)
	}
	w := resilience.Wrap(err, "exec")
	var re *resilience.Error
	if !errors.As(w, &re) {
		t.Fatalf("Wrap(%T) = %T, want a *resilience.Error", err, w)
	}
	if re.Category != cat || re.Op != "exec" || re.Err != err {
		t.Errorf("Wrap: Category=%v Op=%q Err=%v; want %v, \"exec\", the original error", re.Category, re.Op, re.Err, cat)
	}
	if !strings.Contains(w.Error(), cat.String()) {
		t.Errorf("Wrap(...).Error() = %q, does not name the category %q", w.Error(), cat)
	}
	if !strings.Contains(w.Error(), err.Error()) {
		t.Errorf("Wrap(...).Error() = %q, lost the cause's message %q", w.Error(), err.Error())
	}
	if cause != nil && !cause(w) {
		t.Errorf("Wrap(%T) does not reach the driver's error through errors.As/Is: %v", err, w)
	}
	if !errors.Is(w, err) {
		t.Errorf("errors.Is(Wrap(err), err) = false")
	}
	// The wrapped error must classify like the bare one.
	if got := resilience.Classify(w); got != cat {
		t.Errorf("Classify(Wrap(err)) = %v, want %v", got, cat)
	}
	if got := resilience.IsRetryable(w); got != retryable {
		t.Errorf("IsRetryable(Wrap(err)) = %v, want %v", got, retryable)
	}
	if got, want := resilience.Code(w), resilience.Code(err); got != want {
		t.Errorf("Code(Wrap(err)) = %q, want %q", got, want)
	}
}

// ---- predicates --------------------------------------------------------

func pgCode(code string) func(error) bool {
	return func(err error) bool {
		var pg *pgconn.PgError
		return errors.As(err, &pg) && pg.Code == code
	}
}

func pgCodeIn(codes ...string) func(error) bool {
	return func(err error) bool {
		var pg *pgconn.PgError
		return errors.As(err, &pg) && slices.Contains(codes, pg.Code)
	}
}

func isPgError(err error) bool {
	var pg *pgconn.PgError
	return errors.As(err, &pg)
}

func myNumber(n uint16) func(error) bool {
	return func(err error) bool {
		var my *mysql.MySQLError
		return errors.As(err, &my) && my.Number == n
	}
}

func isMySQLError(err error) bool {
	var my *mysql.MySQLError
	return errors.As(err, &my)
}

// sqliteCode matches a SQLite error by its extended code, whether the
// driver returned a *sqlite3.Error or a bare code (ncruces returns
// SQLITE_BUSY as a bare sqlite3.ExtendedErrorCode).
func sqliteCode(x sqlite3.ExtendedErrorCode) func(error) bool {
	return func(err error) bool {
		var e *sqlite3.Error
		if errors.As(err, &e) {
			return e.ExtendedCode() == x
		}
		var xc sqlite3.ExtendedErrorCode
		return errors.As(err, &xc) && xc == x
	}
}

func isSQLiteError(err error) bool {
	var e *sqlite3.Error
	return errors.As(err, &e)
}

// ---- shared helpers ------------------------------------------------------

// testCtx bounds every statement of a producer so that a lost race can
// never hang the test.
func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func mustExec(t *testing.T, db interface {
	ExecContext(context.Context, string, ...any) (sql.Result, error)
}, q string, args ...any) {
	t.Helper()
	if _, err := db.ExecContext(testCtx(t), q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

// barrier lets n goroutines wait for each other. wait reports false if the
// others did not arrive in time, so a goroutine whose partner failed early
// cannot block for ever.
type barrier struct {
	wg   sync.WaitGroup
	done chan struct{}
}

func newBarrier(n int) *barrier {
	b := &barrier{done: make(chan struct{})}
	b.wg.Add(n)
	go func() { b.wg.Wait(); close(b.done) }()
	return b
}

func (b *barrier) wait() bool {
	b.wg.Done()
	select {
	case <-b.done:
		return true
	case <-time.After(20 * time.Second):
		return false
	}
}

var errBarrier = errors.New("test: the other transaction never reached the barrier")

// lockCrossed runs two transactions that lock row a then row b, and row b
// then row a, meeting at a barrier after their first lock, so that one of
// them must be chosen as the deadlock victim. setup runs first in each
// transaction. It returns the two transactions' errors (nil when one
// committed).
func lockCrossed(t *testing.T, db *sql.DB, setup, update string) [2]error {
	t.Helper()
	ctx := testCtx(t)
	b := newBarrier(2)
	var errs [2]error
	var wg sync.WaitGroup
	for i, order := range [2][2]int{{1, 2}, {2, 1}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = func() error {
				tx, err := db.BeginTx(ctx, nil)
				if err != nil {
					b.wait()
					return err
				}
				defer tx.Rollback()
				if setup != "" {
					if _, err := tx.ExecContext(ctx, setup); err != nil {
						b.wait()
						return err
					}
				}
				_, err = tx.ExecContext(ctx, update, order[0])
				if !b.wait() {
					return errBarrier
				}
				if err != nil {
					return err
				}
				if _, err := tx.ExecContext(ctx, update, order[1]); err != nil {
					return err
				}
				return tx.Commit()
			}()
		}()
	}
	wg.Wait()
	return errs
}

// oneVictim returns the error of the deadlock victim, and fails the test
// if the other transaction did not commit.
func oneVictim(t *testing.T, errs [2]error, victim func(error) bool) error {
	t.Helper()
	switch {
	case victim(errs[0]) && errs[1] == nil:
		return errs[0]
	case victim(errs[1]) && errs[0] == nil:
		return errs[1]
	}
	return fmt.Errorf("want exactly one deadlock victim and one commit, got %v and %v", errs[0], errs[1])
}

// ---- PostgreSQL ----------------------------------------------------------

func TestClassifyRealPostgres(t *testing.T) {
	u := testdb.URL(t, testdb.Postgres)
	db := testdb.OpenRaw(t, u)
	db.SetMaxOpenConns(10)
	mustExec(t, db, `CREATE TABLE parent (id int PRIMARY KEY)`)
	mustExec(t, db, `CREATE TABLE child (id int PRIMARY KEY, parent_id int NOT NULL REFERENCES parent (id))`)
	mustExec(t, db, `CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL)`)
	mustExec(t, db, `INSERT INTO accounts VALUES (1, 100), (2, 100)`)
	mustExec(t, db, `CREATE TABLE locks (id int PRIMARY KEY, v int NOT NULL DEFAULT 0)`)
	mustExec(t, db, `INSERT INTO locks (id) VALUES (1), (2)`)
	mustExec(t, db, `INSERT INTO parent VALUES (1)`)

	adminURL, err := url.Parse(testdb.PostgresAdminURL())
	if err != nil {
		t.Fatal(err)
	}

	rows := []realRow{
		{
			name: "23505 unique violation",
			produce: func(t *testing.T) error {
				_, err := db.ExecContext(testCtx(t), `INSERT INTO parent VALUES (1)`)
				return err
			},
			want: pgCode("23505"), cat: resilience.Integrity, retryable: false, codes: []string{"23505"}, cause: isPgError,
		},
		{
			name: "23503 foreign key violation",
			produce: func(t *testing.T) error {
				_, err := db.ExecContext(testCtx(t), `INSERT INTO child VALUES (1, 999)`)
				return err
			},
			want: pgCode("23503"), cat: resilience.Integrity, retryable: false, codes: []string{"23503"}, cause: isPgError,
		},
		{
			name:    "40001 serialization failure (write skew)",
			produce: func(t *testing.T) error { return pgWriteSkew(t, db) },
			want:    pgCode("40001"), cat: resilience.Transient, retryable: true, codes: []string{"40001"}, cause: isPgError,
		},
		{
			name: "40P01 deadlock",
			produce: func(t *testing.T) error {
				errs := lockCrossed(t, db, `SET LOCAL deadlock_timeout = '50ms'`, `UPDATE locks SET v = v + 1 WHERE id = $1`)
				return oneVictim(t, errs, pgCode("40P01"))
			},
			want: pgCode("40P01"), cat: resilience.Transient, retryable: true, codes: []string{"40P01"}, cause: isPgError,
		},
		{
			name:    "55P03 lock timeout",
			produce: func(t *testing.T) error { return pgLockTimeout(t, db) },
			want:    pgCode("55P03"), cat: resilience.Transient, retryable: true, codes: []string{"55P03"}, cause: isPgError,
		},
		{
			name: "57014 statement timeout",
			produce: func(t *testing.T) error {
				ctx := testCtx(t)
				tx, err := db.BeginTx(ctx, nil)
				if err != nil {
					t.Fatal(err)
				}
				defer tx.Rollback()
				mustExec(t, tx, `SET LOCAL statement_timeout = '50ms'`)
				_, err = tx.ExecContext(ctx, `SELECT pg_sleep(1)`)
				return err
			},
			want: pgCode("57014"), cat: resilience.Timeout, retryable: false, codes: []string{"57014"}, cause: isPgError,
		},
		{
			// What a write meets on a standby; here the transaction is
			// made read-only, which gives the same error.
			name: "25006 read-only transaction",
			produce: func(t *testing.T) error {
				ctx := testCtx(t)
				tx, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
				if err != nil {
					t.Fatal(err)
				}
				defer tx.Rollback()
				_, err = tx.ExecContext(ctx, `INSERT INTO parent VALUES (42)`)
				return err
			},
			want: pgCode("25006"), cat: resilience.Connection, retryable: true, codes: []string{"25006"}, cause: isPgError,
		},
		{
			name:    "57P01 terminated backend",
			produce: func(t *testing.T) error { return pgTerminated(t, db) },
			want:    pgCode("57P01"), cat: resilience.Connection, retryable: true, codes: []string{"57P01"}, cause: isPgError,
		},
		{
			name: "42P01 undefined table",
			produce: func(t *testing.T) error {
				_, err := db.ExecContext(testCtx(t), `SELECT * FROM no_such_table_xyz`)
				return err
			},
			want: pgCode("42P01"), cat: resilience.Permanent, retryable: false, codes: []string{"42P01"}, cause: isPgError,
		},
		{
			name: "3D000 missing database at connect",
			produce: func(t *testing.T) error {
				missing := *adminURL
				missing.Path = "/bt_missing_xyz"
				return pgPing(t, missing.String())
			},
			want: pgCodeIn("3D000", "28000"), cat: resilience.Permanent, retryable: false, codes: []string{"3D000", "28000"},
			cause: func(err error) bool {
				var ce *pgconn.ConnectError
				return isPgError(err) && errors.As(err, &ce)
			},
		},
		{
			name: "connection refused",
			produce: func(t *testing.T) error {
				return pgPing(t, "postgres://postgres@127.0.0.1:1/x?sslmode=disable&connect_timeout=5")
			},
			want: func(err error) bool {
				var ce *pgconn.ConnectError
				return errors.As(err, &ce) && errors.Is(err, syscall.ECONNREFUSED)
			},
			cat: resilience.Connection, retryable: true, codes: []string{""},
			cause: func(err error) bool {
				var ce *pgconn.ConnectError
				return errors.As(err, &ce) && errors.Is(err, syscall.ECONNREFUSED)
			},
		},
	}
	runRealRows(t, rows)
}

// pgPing opens a pool on rawURL and pings it, returning the connect error.
func pgPing(t *testing.T, rawURL string) error {
	t.Helper()
	db, err := sql.Open("pgx", rawURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	return db.PingContext(testCtx(t))
}

// pgWriteSkew runs two SERIALIZABLE transactions that each read both
// accounts and then update a different one: a write skew, which
// PostgreSQL's SSI must refuse for one of them with 40001. A barrier makes
// both read before either writes, and both write before either commits.
func pgWriteSkew(t *testing.T, db *sql.DB) error {
	t.Helper()
	ctx := testCtx(t)
	read, wrote := newBarrier(2), newBarrier(2)
	var errs [2]error
	var wg sync.WaitGroup
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = func() error {
				arrived := 0
				arrive := func(b *barrier) bool { arrived++; return b.wait() }
				defer func() { // never leave the other side waiting
					if arrived < 1 {
						read.wait()
					}
					if arrived < 2 {
						wrote.wait()
					}
				}()
				tx, err := db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelSerializable})
				if err != nil {
					return err
				}
				defer tx.Rollback()
				var sum int
				if err := tx.QueryRowContext(ctx, `SELECT sum(balance) FROM accounts WHERE id IN (1, 2)`).Scan(&sum); err != nil {
					return err
				}
				if !arrive(read) {
					return errBarrier
				}
				_, err = tx.ExecContext(ctx, `UPDATE accounts SET balance = balance - 150 WHERE id = $1`, i+1)
				if !arrive(wrote) {
					return errBarrier
				}
				if err != nil {
					return err
				}
				return tx.Commit()
			}()
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if pgCode("40001")(err) {
			return err
		}
	}
	return fmt.Errorf("no serialization failure: %v, %v", errs[0], errs[1])
}

// pgLockTimeout holds a row FOR UPDATE in one transaction while another
// with lock_timeout 100ms asks for the same lock.
func pgLockTimeout(t *testing.T, db *sql.DB) error {
	t.Helper()
	ctx := testCtx(t)
	holder, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback()
	mustExec(t, holder, `SELECT * FROM locks WHERE id = 1 FOR UPDATE`)
	waiter, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer waiter.Rollback()
	mustExec(t, waiter, `SET LOCAL lock_timeout = '100ms'`)
	_, err = waiter.ExecContext(ctx, `SELECT * FROM locks WHERE id = 1 FOR UPDATE`)
	return err
}

// pgTerminated terminates the backend of a held connection from another
// connection, then uses the held one.
func pgTerminated(t *testing.T, db *sql.DB) error {
	t.Helper()
	ctx := testCtx(t)
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var pid int
	if err := conn.QueryRowContext(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	var ok bool
	// The timeout argument makes pg_terminate_backend wait until the
	// backend has gone.
	if err := db.QueryRowContext(ctx, `SELECT pg_terminate_backend($1, 10000)`, pid).Scan(&ok); err != nil || !ok {
		t.Fatalf("pg_terminate_backend(%d) = %v, %v", pid, ok, err)
	}
	_, err = conn.ExecContext(ctx, `SELECT 1`)
	return err
}

// ---- MariaDB -------------------------------------------------------------

func TestClassifyRealMySQL(t *testing.T) {
	db := testdb.OpenRaw(t, testdb.URL(t, testdb.MySQL))
	db.SetMaxOpenConns(10)
	mustExec(t, db, `CREATE TABLE locks (id int PRIMARY KEY, v int NOT NULL DEFAULT 0) ENGINE=InnoDB`)
	mustExec(t, db, `INSERT INTO locks (id) VALUES (1), (2)`)
	mustExec(t, db, `CREATE TABLE items (id int PRIMARY KEY) ENGINE=InnoDB`)
	mustExec(t, db, `INSERT INTO items VALUES (1)`)

	rows := []realRow{
		{
			name: "1062 duplicate entry",
			produce: func(t *testing.T) error {
				_, err := db.ExecContext(testCtx(t), `INSERT INTO items VALUES (1)`)
				return err
			},
			want: myNumber(1062), cat: resilience.Integrity, retryable: false, codes: []string{"1062"}, cause: isMySQLError,
		},
		{
			name: "1213 deadlock",
			produce: func(t *testing.T) error {
				errs := lockCrossed(t, db, "", `UPDATE locks SET v = v + 1 WHERE id = ?`)
				return oneVictim(t, errs, myNumber(1213))
			},
			want: myNumber(1213), cat: resilience.Transient, retryable: true, codes: []string{"1213"}, cause: isMySQLError,
		},
		{
			name:    "1205 lock wait timeout (transaction stays open)",
			produce: func(t *testing.T) error { return myLockWaitTimeout(t, db) },
			want:    myNumber(1205), cat: resilience.Transient, retryable: true, codes: []string{"1205"}, cause: isMySQLError,
		},
		{
			name: "1146 unknown table",
			produce: func(t *testing.T) error {
				_, err := db.ExecContext(testCtx(t), `SELECT * FROM no_such_table_xyz`)
				return err
			},
			want: myNumber(1146), cat: resilience.Permanent, retryable: false, codes: []string{"1146"}, cause: isMySQLError,
		},
		{
			name:    "killed connection",
			produce: func(t *testing.T) error { return myKilled(t, db) },
			// What the driver returns for a killed connection depends on
			// timing: MariaDB's 1927 error packet, or the closed socket.
			want: func(err error) bool {
				return myNumber(1927)(err) || errors.Is(err, mysql.ErrInvalidConn) || errors.Is(err, sqldriver.ErrBadConn)
			},
			cat: resilience.Connection, retryable: true, codes: []string{"", "1927"},
			cause: func(err error) bool {
				return myNumber(1927)(err) || errors.Is(err, mysql.ErrInvalidConn) || errors.Is(err, sqldriver.ErrBadConn)
			},
		},
	}
	runRealRows(t, rows)
}

// myLockWaitTimeout holds a row FOR UPDATE while another transaction, with
// innodb_lock_wait_timeout 1, inserts a row and then asks for the lock. It
// also asserts InnoDB's behaviour that makes 1205 dangerous to retry
// statement by statement: only the statement is rolled back, the
// transaction stays open with its earlier work.
func myLockWaitTimeout(t *testing.T, db *sql.DB) error {
	t.Helper()
	ctx := testCtx(t)
	holder, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback()
	mustExec(t, holder, `SELECT * FROM locks WHERE id = 1 FOR UPDATE`)

	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	mustExec(t, conn, `SET SESSION innodb_lock_wait_timeout = 1`)
	defer conn.ExecContext(context.Background(), `SET SESSION innodb_lock_wait_timeout = DEFAULT`)
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	mustExec(t, tx, `INSERT INTO items VALUES (1205)`)
	_, lockErr := tx.ExecContext(ctx, `SELECT * FROM locks WHERE id = 1 FOR UPDATE`)
	if !myNumber(1205)(lockErr) {
		return lockErr
	}
	// The transaction is still open: a later statement succeeds and sees
	// the row inserted before the timeout.
	var one int
	if err := tx.QueryRowContext(ctx, `SELECT 1`).Scan(&one); err != nil || one != 1 {
		t.Errorf("after 1205, SELECT 1 in the same transaction = %d, %v; want 1, nil (transaction still open)", one, err)
	}
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM items WHERE id = 1205`).Scan(&n); err != nil || n != 1 {
		t.Errorf("after 1205, the row inserted earlier in the transaction: count = %d, %v; want 1 (only the statement was rolled back)", n, err)
	}
	var inTx int
	if err := tx.QueryRowContext(ctx, `SELECT @@in_transaction`).Scan(&inTx); err != nil || inTx != 1 {
		t.Errorf("after 1205, @@in_transaction = %d, %v; want 1", inTx, err)
	}
	if err := tx.Rollback(); err != nil {
		t.Errorf("rollback after 1205: %v", err)
	}
	if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM items WHERE id = 1205`).Scan(&n); err != nil || n != 0 {
		t.Errorf("after rollback, count of the row = %d, %v; want 0", n, err)
	}
	return lockErr
}

// myKilled kills a held connection from another connection, then uses the
// held one.
func myKilled(t *testing.T, db *sql.DB) error {
	t.Helper()
	ctx := testCtx(t)
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var id int64
	if err := conn.QueryRowContext(ctx, `SELECT CONNECTION_ID()`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	mustExec(t, db, fmt.Sprintf(`KILL CONNECTION %d`, id))
	// KILL returns before the killed thread has closed its socket; wait
	// until the server no longer lists it.
	deadline := time.Now().Add(10 * time.Second)
	for {
		var n int
		if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = ?`, id).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("connection %d still listed 10s after KILL", id)
		}
		time.Sleep(5 * time.Millisecond)
	}
	_, err = conn.ExecContext(ctx, `SELECT 1`)
	return err
}

// ---- SQLite --------------------------------------------------------------

func openSQLite(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sqlitedriver.Open("file:" + path + "?_pragma=busy_timeout(100)&_pragma=foreign_keys(1)&_pragma=journal_mode(wal)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func TestClassifyRealSQLite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "classify.db")
	db1 := openSQLite(t, path)
	mustExec(t, db1, `CREATE TABLE parent (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)`)
	mustExec(t, db1, `CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER NOT NULL REFERENCES parent (id))`)
	mustExec(t, db1, `INSERT INTO parent (id, name) VALUES (1, 'a')`)
	db2 := openSQLite(t, path)

	rows := []realRow{
		{
			name: "SQLITE_BUSY second writer",
			produce: func(t *testing.T) error {
				ctx := testCtx(t)
				conn, err := db1.Conn(ctx)
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				mustExec(t, conn, `BEGIN IMMEDIATE`)
				defer mustExec(t, conn, `ROLLBACK`)
				start := time.Now()
				_, err = db2.ExecContext(ctx, `INSERT INTO parent (id, name) VALUES (2, 'b')`)
				t.Logf("second writer failed after %v", time.Since(start).Round(time.Millisecond))
				return err
			},
			want: sqliteCode(sqlite3.ExtendedErrorCode(sqlite3.BUSY)), cat: resilience.Transient, retryable: true,
			codes: []string{"SQLITE_BUSY"},
			// The driver returns SQLITE_BUSY as a bare code, not a
			// *sqlite3.Error: the cause to reach is the code itself.
			cause: func(err error) bool {
				return errors.Is(err, sqlite3.BUSY) && sqliteCode(sqlite3.ExtendedErrorCode(sqlite3.BUSY))(err)
			},
		},
		{
			name: "SQLITE_CONSTRAINT_UNIQUE",
			produce: func(t *testing.T) error {
				_, err := db2.ExecContext(testCtx(t), `INSERT INTO parent (id, name) VALUES (3, 'a')`)
				return err
			},
			want: sqliteCode(sqlite3.CONSTRAINT_UNIQUE), cat: resilience.Integrity, retryable: false,
			codes: []string{"SQLITE_CONSTRAINT_UNIQUE"}, cause: isSQLiteError,
		},
		{
			name: "SQLITE_CONSTRAINT_FOREIGNKEY",
			produce: func(t *testing.T) error {
				_, err := db2.ExecContext(testCtx(t), `INSERT INTO child (id, parent_id) VALUES (1, 999)`)
				return err
			},
			want: sqliteCode(sqlite3.CONSTRAINT_FOREIGNKEY), cat: resilience.Integrity, retryable: false,
			codes: []string{"SQLITE_CONSTRAINT_FOREIGNKEY"}, cause: isSQLiteError,
		},
	}
	runRealRows(t, rows)
}

// ---- errors without a server ---------------------------------------------

func TestClassifyUnit(t *testing.T) {
	transient := &pgconn.PgError{Severity: "ERROR", Code: "40001", Message: "could not serialize access"}
	rows := []struct {
		name      string
		err       error
		cat       resilience.Category
		retryable bool
		code      string
	}{
		{"nil", nil, resilience.Unknown, false, ""},
		{"context.Canceled", context.Canceled, resilience.Timeout, false, ""},
		{"wrapped context.Canceled", fmt.Errorf("query: %w", context.Canceled), resilience.Timeout, false, ""},
		{"context.DeadlineExceeded", context.DeadlineExceeded, resilience.Timeout, false, ""},
		{"driver.ErrBadConn", sqldriver.ErrBadConn, resilience.Connection, true, ""},
		{"io.EOF", io.EOF, resilience.Connection, true, ""},
		{"io.ErrUnexpectedEOF", io.ErrUnexpectedEOF, resilience.Connection, true, ""},
		{"sql.ErrTxDone", sql.ErrTxDone, resilience.Permanent, false, ""},
		{"bentodriver.ErrDraining", bentodriver.ErrDraining, resilience.Permanent, false, ""},
		{"PoolTimeoutError", &bentodriver.PoolTimeoutError{}, resilience.Timeout, false, ""},
		{"database is closed (message)", errors.New("sql: database is closed"), resilience.Permanent, false, ""},
		{"deadlock (message)", errors.New("some deadlock detected"), resilience.Transient, true, ""},
		{"unknown message", errors.New("blah"), resilience.Unknown, false, ""},
		{"pgx.ErrTxCommitRollback", pgx.ErrTxCommitRollback, resilience.Transient, true, ""},
		// A failover: the node reached is a standby (a demoted primary)
		// or a standby still starting or being promoted.
		{"25006 read-only transaction (a standby)", &pgconn.PgError{Severity: "ERROR", Code: "25006",
			Message: "cannot execute INSERT in a read-only transaction"}, resilience.Connection, true, "25006"},
		{"57P03 starting up", &pgconn.PgError{Severity: "FATAL", Code: "57P03",
			Message: "the database system is starting up"}, resilience.Connection, true, "57P03"},
		{"57P03 not yet accepting connections", &pgconn.PgError{Severity: "FATAL", Code: "57P03",
			Message: "the database system is not yet accepting connections"}, resilience.Connection, true, "57P03"},
		{"recovery mode (message)", errors.New("FATAL: the database system is in recovery mode"), resilience.Connection, true, ""},
		{"RetryError over a transient error", &resilience.RetryError{Attempts: 3, Err: transient}, resilience.Transient, false, "40001"},
	}
	for _, r := range rows {
		t.Run(r.name, func(t *testing.T) {
			if got := resilience.Classify(r.err); got != r.cat {
				t.Errorf("Classify(%v) = %v, want %v", r.err, got, r.cat)
			}
			if got := resilience.IsRetryable(r.err); got != r.retryable {
				t.Errorf("IsRetryable(%v) = %v, want %v", r.err, got, r.retryable)
			}
			if got := resilience.Code(r.err); got != r.code {
				t.Errorf("Code(%v) = %q, want %q", r.err, got, r.code)
			}
			if r.err == nil {
				if w := resilience.Wrap(nil, "exec"); w != nil {
					t.Errorf("Wrap(nil) = %v, want nil", w)
				}
				return
			}
			w := resilience.Wrap(r.err, "exec")
			if !errors.Is(w, r.err) {
				t.Errorf("Wrap lost the cause: %v", w)
			}
			if !strings.Contains(w.Error(), r.cat.String()) {
				t.Errorf("Wrap(...).Error() = %q, does not name %q", w.Error(), r.cat)
			}
			if again := resilience.Wrap(w, "query"); again != w {
				t.Errorf("Wrap of a *Error = %v, want it unchanged", again)
			}
		})
	}
}

func TestClassifyCommit(t *testing.T) {
	rows := []struct {
		name string
		err  error
		cat  resilience.Category
	}{
		{"io.EOF", io.EOF, resilience.Ambiguous},
		{"context.Canceled", context.Canceled, resilience.Ambiguous},
		{"driver.ErrBadConn", sqldriver.ErrBadConn, resilience.Connection},
		{"pgx.ErrTxCommitRollback", pgx.ErrTxCommitRollback, resilience.Transient},
		{"FATAL 57P01", &pgconn.PgError{Severity: "FATAL", Code: "57P01"}, resilience.Ambiguous},
		{"ERROR 40001", &pgconn.PgError{Severity: "ERROR", Code: "40001"}, resilience.Transient},
		{"MySQL 1927", &mysql.MySQLError{Number: 1927}, resilience.Ambiguous},
		{"mysql.ErrInvalidConn", mysql.ErrInvalidConn, resilience.Ambiguous},
	}
	for _, r := range rows {
		t.Run(r.name, func(t *testing.T) {
			if got := resilience.ClassifyCommit(r.err); got != r.cat {
				t.Errorf("ClassifyCommit(%v) = %v, want %v", r.err, got, r.cat)
			}
			w := resilience.WrapCommit(r.err)
			var e *resilience.Error
			if !errors.As(w, &e) || e.Category != r.cat || e.Op != "commit" || !errors.Is(w, r.err) {
				t.Errorf("WrapCommit(%v) = %#v, want a *Error{%v, commit} keeping the cause", r.err, w, r.cat)
			}
			if got, want := errors.Is(w, resilience.ErrCommitUnknown), r.cat == resilience.Ambiguous; got != want {
				t.Errorf("errors.Is(WrapCommit(%v), ErrCommitUnknown) = %v, want %v", r.err, got, want)
			}
		})
	}
	if !errors.Is(resilience.WrapCommit(io.EOF), resilience.ErrCommitUnknown) {
		t.Error("errors.Is(WrapCommit(io.EOF), ErrCommitUnknown) = false, want true")
	}
	if resilience.WrapCommit(nil) != nil {
		t.Error("WrapCommit(nil) != nil")
	}
}
