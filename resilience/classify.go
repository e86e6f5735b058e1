// Package resilience classifies database errors by code and retries what
// is safe to retry.
//
// Classify maps an error to a Category from typed errors first — a
// PostgreSQL SQLSTATE, a MySQL error number, a SQLite extended code,
// driver.ErrBadConn, pgconn.SafeToRetry, net and context errors — and
// falls back to message patterns only for errors that carry no code.
// Retry runs an operation again with capped, jittered exponential backoff
// (github.com/sethvargo/go-retry) while its error is retryable. Middleware
// plugs both into Bento's driver at the only safe boundaries: outside a
// transaction it retries reads, and writes the driver proves never reached
// the server; inside a transaction it never retries (the unit of work is
// the retry unit), and an error in reply to COMMIT that proves no rollback
// is ambiguous, resolved on PostgreSQL with pg_xact_status.
package resilience

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"syscall"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/ncruces/go-sqlite3"

	bentodriver "github.com/bento-go/bento/driver"
)

// Category is what kind of failure an error is, which decides whether it
// is worth retrying.
type Category uint8

// Categories.
const (
	// Unknown: nothing identifies the error. Not retried.
	Unknown Category = iota
	// Transient: the server rolled the work back because of contention
	// (serialization failure, deadlock, lock timeout, SQLITE_BUSY). Retry
	// the whole transaction.
	Transient
	// Timeout: a statement timeout, a pool wait timeout, or the caller's
	// context ending. Not retried.
	Timeout
	// Connection: the connection failed or could not be made (refused,
	// reset, terminated by the server, too many connections). Retried on a
	// new connection when the work is safe to repeat.
	Connection
	// Integrity: a constraint rejected the data (unique, foreign key, not
	// null, check). Not retried.
	Integrity
	// Permanent: the request can never succeed as it is (syntax, missing
	// table, permissions, bad data, a closed database, a drain in
	// progress). Not retried.
	Permanent
	// Ambiguous: a COMMIT (or an autocommit write) whose outcome is unknown:
	// it may have committed. Never retried blind; resolve it first.
	Ambiguous
)

var categoryNames = [...]string{"unknown", "transient", "timeout", "connection", "integrity", "permanent", "ambiguous"}

// String returns the category's name, as used in messages and metrics.
func (c Category) String() string {
	if int(c) < len(categoryNames) {
		return categoryNames[c]
	}
	return "category(" + strconv.Itoa(int(c)) + ")"
}

// Categories returns every category, for metrics that pre-create labels.
func Categories() []Category {
	return []Category{Unknown, Transient, Timeout, Connection, Integrity, Permanent, Ambiguous}
}

// Error is an error with its category. It keeps its cause: errors.Is and
// errors.As reach the driver's error through it, and its message shows the
// category.
type Error struct {
	Category Category
	// Code is the server's code when there is one: a SQLSTATE ("40001"),
	// a MySQL error number ("1213"), a SQLite code name ("SQLITE_BUSY").
	Code string
	// Op is what was being done: "exec", "query", "begin", "commit",
	// "rollback".
	Op  string
	Err error
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Category.String())
	b.WriteString(" error")
	if e.Code != "" {
		b.WriteString(" [")
		b.WriteString(e.Code)
		b.WriteByte(']')
	}
	if e.Op != "" {
		b.WriteString(" in ")
		b.WriteString(e.Op)
	}
	b.WriteString(": ")
	b.WriteString(e.Err.Error())
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// ErrCommitUnknown is matched (errors.Is) by every ambiguous-commit error:
// the COMMIT may or may not have taken effect.
var ErrCommitUnknown = errors.New("commit outcome unknown")

// Is makes errors.Is(err, ErrCommitUnknown) true for ambiguous errors.
func (e *Error) Is(target error) bool { return target == ErrCommitUnknown && e.Category == Ambiguous }

// Classify returns the category of err. A *Error anywhere in the chain
// decides; otherwise the typed driver errors do, then message patterns.
// Classify(nil) is Unknown.
func Classify(err error) Category {
	c, _ := classify(err)
	return c
}

// Code returns the server's code carried by err ("40001", "1213",
// "SQLITE_BUSY"), or "".
func Code(err error) string {
	_, code := classify(err)
	return code
}

// IsRetryable reports whether running the failed work again (the whole
// transaction, if it was in one) may succeed: Transient and Connection
// errors. Never a timeout (a statement timeout would recur; the caller's
// deadline has passed), a cancelled context, a closed database, a drain in
// progress, an ambiguous commit, or an error a Retry already gave up on.
func IsRetryable(err error) bool {
	if err == nil {
		return false
	}
	var re *RetryError
	if errors.As(err, &re) {
		return false
	}
	switch Classify(err) {
	case Transient, Connection:
		return !errors.Is(err, context.Canceled)
	}
	// Timeouts are not retried: a statement that ran out of time
	// (statement_timeout, max_statement_time) would run out again, and a
	// wait for a connection that timed out would wait again under the same
	// load. Lock timeouts (55P03, 1205) are Transient: the lock moves on.
	return false
}

// Wrap returns err as a *Error with its category and the operation op,
// or err itself if it is nil or already a *Error.
func Wrap(err error, op string) error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	c, code := classify(err)
	return &Error{Category: c, Code: code, Op: op, Err: err}
}

// ClassifyCommit returns the category of an error returned by COMMIT (or
// by a write outside a transaction, whose implicit commit is the same
// question). Only a proof that nothing committed keeps the statement
// category: a server error in reply (a serialization failure, a deferred
// constraint, pgx.ErrTxCommitRollback, MySQL deadlock), or a COMMIT that
// never left the client (pgconn.SafeToRetry, driver.ErrBadConn). Anything
// else — EOF, reset, timeout, a cancelled context, a FATAL reply such as
// pg_terminate_backend, MariaDB's connection killed — is Ambiguous.
func ClassifyCommit(err error) Category {
	if err == nil {
		return Unknown
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Category
	}
	if errors.Is(err, pgx.ErrTxCommitRollback) {
		return Transient
	}
	var pg *pgconn.PgError
	if errors.As(err, &pg) {
		if pg.Severity == "FATAL" || pg.Severity == "PANIC" || pg.Code == "40003" || pg.Code == "08007" {
			return Ambiguous
		}
		return pgCategory(pg.Code)
	}
	var my *mysql.MySQLError
	if errors.As(err, &my) {
		switch my.Number {
		case 1927, 1053, 1180: // connection killed, server shutdown, error during commit
			return Ambiguous
		}
		return mysqlCategory(my.Number)
	}
	var lite *sqlite3.Error
	if errors.As(err, &lite) {
		// In process: the driver rolls back a failed COMMIT itself.
		return sqliteCategory(lite.ExtendedCode())
	}
	if errors.Is(err, bentodriver.ErrDraining) {
		return Permanent
	}
	if NotSent(err) {
		return Connection // COMMIT was never sent; the server rolls back.
	}
	return Ambiguous
}

// NotSent reports whether the driver proves that the failed request never
// left the client: driver.ErrBadConn (go-sql-driver returns it only when
// nothing was written; pgx's stdlib for errors pgconn.SafeToRetry), or
// pgconn.SafeToRetry — except pgconn.ErrConnClosed: pgx before 5.13
// reported a connection it closed after a failed read of a reply as "conn
// closed" and claimed SafeToRetry although the request, COMMIT included,
// was sent. pgx 5.13 no longer claims it; the check stays, so that a
// "conn closed" is never taken for proof on any pgx version.
func NotSent(err error) bool {
	if errors.Is(err, pgconn.ErrConnClosed) {
		return false
	}
	return errors.Is(err, driver.ErrBadConn) || pgconn.SafeToRetry(err)
}

// WrapCommit is Wrap for an error returned by COMMIT: see ClassifyCommit.
func WrapCommit(err error) error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	_, code := classify(err)
	return &Error{Category: ClassifyCommit(err), Code: code, Op: "commit", Err: err}
}

func classify(err error) (Category, string) {
	if err == nil {
		return Unknown, ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Category, e.Code
	}
	// Shutdown and programming errors first: never retried.
	switch {
	case errors.Is(err, bentodriver.ErrDraining), errors.Is(err, sql.ErrTxDone), errors.Is(err, sql.ErrConnDone),
		errors.Is(err, pgx.ErrTxClosed):
		return Permanent, ""
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return Timeout, ""
	case errors.Is(err, bentodriver.ErrPoolTimeout):
		return Timeout, ""
	case errors.Is(err, pgx.ErrTxCommitRollback):
		return Transient, ""
	}
	var pg *pgconn.PgError
	if errors.As(err, &pg) {
		return pgCategory(pg.Code), pg.Code
	}
	var my *mysql.MySQLError
	if errors.As(err, &my) {
		return mysqlCategory(my.Number), strconv.Itoa(int(my.Number))
	}
	var lite *sqlite3.Error
	if errors.As(err, &lite) {
		x := lite.ExtendedCode()
		return sqliteCategory(x), sqliteCodeName(x)
	}
	var xc sqlite3.ExtendedErrorCode
	if errors.As(err, &xc) { // bare codes, e.g. sqlite3.INTERRUPT
		return sqliteCategory(xc), sqliteCodeName(xc)
	}
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) {
		return Connection, "" // nothing executed; auth and missing-database codes were caught above
	}
	switch {
	case errors.Is(err, driver.ErrBadConn), pgconn.SafeToRetry(err):
		return Connection, ""
	case pgconn.Timeout(err):
		return Timeout, ""
	case errors.Is(err, mysql.ErrInvalidConn), errors.Is(err, mysql.ErrPktSync), errors.Is(err, mysql.ErrPktSyncMul),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNABORTED),
		errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.ETIMEDOUT), errors.Is(err, syscall.EHOSTUNREACH),
		errors.Is(err, syscall.ENETUNREACH):
		return Connection, ""
	}
	var ne net.Error
	if errors.As(err, &ne) {
		if ne.Timeout() {
			return Timeout, ""
		}
		return Connection, ""
	}
	return classifyMessage(err.Error()), ""
}

// pgCategory maps a SQLSTATE (research/reliability.md §5).
func pgCategory(code string) Category {
	switch code {
	case "40001", "40P01", "40000", "55P03", "72000", "58000", "58030", "53000", "53200", "53400":
		return Transient
	case "40002":
		return Integrity
	case "40003", "08007":
		return Ambiguous
	case "08P01":
		return Permanent
	case "57P01", "57P02", "57P03", "57P05", "53300", "25P03":
		return Connection
	case "25006":
		// read_only_sql_transaction: after a failover the server reached
		// is a standby (an old primary demoted, a DNS name or VIP not yet
		// moved, default_transaction_read_only set for a switchover). The
		// work is retried on a new connection, which a multi-host DB_URL
		// with target_session_attrs=read-write opens on the new primary.
		// A write in a transaction the application made READ ONLY gets
		// the same code: it fails again at each attempt and is reported
		// as a connection error once the retries are spent.
		return Connection
	case "57014", "25P04":
		return Timeout
	case "57P04", "53100", "25P02", "3D000", "3F000":
		return Permanent
	}
	if len(code) < 2 {
		return Unknown
	}
	switch code[:2] {
	case "08":
		return Connection
	case "23":
		return Integrity
	case "42", "28", "22", "0A", "3D", "3F", "XX", "2B", "21", "44", "P0", "26", "34", "0B", "2F", "38", "39":
		return Permanent
	}
	return Unknown
}

// mysqlCategory maps a MySQL/MariaDB error number (reliability.md §5).
func mysqlCategory(n uint16) Category {
	switch n {
	case 1213, 1205, 1020, 1614, 3572, 149:
		return Transient
	case 1040, 1203, 1226, 1042, 1053, 1927, 4031, 1290, 1836, 1043, 1047, 1081, 1152, 1158, 1159, 1160, 1161:
		return Connection
	case 1317, 1969, 3024, 1028:
		return Timeout
	case 1180:
		return Ambiguous
	case 1062, 1586, 1451, 1452, 1216, 1217, 1048, 1364, 3819, 4025, 1169, 1557, 1761, 1762, 1859:
		return Integrity
	case 1054, 1064, 1146, 1045, 1044, 1049, 1142, 1143, 1406, 1264, 1366, 1292, 1365, 1050, 1051, 1060, 1061, 1091, 1792,
		1021, 1114, 1037, 1038, 1041, 1227, 1370, 1305, 1149, 1109, 1110, 1136, 1138, 1171, 1241, 1242:
		return Permanent
	}
	return Unknown
}

// sqliteCategory maps a SQLite extended result code (reliability.md §3).
func sqliteCategory(x sqlite3.ExtendedErrorCode) Category {
	switch x {
	case sqlite3.BUSY_TIMEOUT:
		return Timeout
	case sqlite3.ExtendedErrorCode(sqlite3.LOCKED) | (1 << 8): // LOCKED_SHAREDCACHE
		return Transient
	}
	switch x.Code() {
	case sqlite3.BUSY, sqlite3.SCHEMA, sqlite3.PROTOCOL, sqlite3.ABORT:
		return Transient
	case sqlite3.INTERRUPT:
		return Timeout
	case sqlite3.CONSTRAINT:
		return Integrity
	case sqlite3.LOCKED, sqlite3.FULL, sqlite3.IOERR, sqlite3.NOMEM, sqlite3.CORRUPT, sqlite3.NOTADB, sqlite3.READONLY,
		sqlite3.CANTOPEN, sqlite3.MISUSE, sqlite3.ERROR, sqlite3.RANGE, sqlite3.MISMATCH, sqlite3.TOOBIG, sqlite3.AUTH,
		sqlite3.PERM, sqlite3.NOLFS, sqlite3.FORMAT, sqlite3.INTERNAL, sqlite3.NOTFOUND, sqlite3.EMPTY:
		return Permanent
	}
	return Unknown
}

func sqliteCodeName(x sqlite3.ExtendedErrorCode) string {
	return fmt.Sprintf("SQLITE_%s", strings.ToUpper(strings.ReplaceAll(strings.TrimPrefix(sqliteName(x), "sqlite3: "), " ", "_")))
}

// sqliteName returns the code's name by its number: SQLite's messages are
// sentences, so the name is built from the constants this package knows.
func sqliteName(x sqlite3.ExtendedErrorCode) string {
	if n, ok := sqliteNames[x]; ok {
		return n
	}
	if n, ok := sqliteNames[sqlite3.ExtendedErrorCode(x.Code())]; ok {
		return n + "_" + strconv.Itoa(int(x)>>8)
	}
	return strconv.Itoa(int(x))
}

var sqliteNames = map[sqlite3.ExtendedErrorCode]string{
	sqlite3.ExtendedErrorCode(sqlite3.ERROR): "ERROR", sqlite3.ExtendedErrorCode(sqlite3.INTERNAL): "INTERNAL",
	sqlite3.ExtendedErrorCode(sqlite3.PERM): "PERM", sqlite3.ExtendedErrorCode(sqlite3.ABORT): "ABORT",
	sqlite3.ExtendedErrorCode(sqlite3.BUSY): "BUSY", sqlite3.ExtendedErrorCode(sqlite3.LOCKED): "LOCKED",
	sqlite3.ExtendedErrorCode(sqlite3.NOMEM): "NOMEM", sqlite3.ExtendedErrorCode(sqlite3.READONLY): "READONLY",
	sqlite3.ExtendedErrorCode(sqlite3.INTERRUPT): "INTERRUPT", sqlite3.ExtendedErrorCode(sqlite3.IOERR): "IOERR",
	sqlite3.ExtendedErrorCode(sqlite3.CORRUPT): "CORRUPT", sqlite3.ExtendedErrorCode(sqlite3.FULL): "FULL",
	sqlite3.ExtendedErrorCode(sqlite3.CANTOPEN): "CANTOPEN", sqlite3.ExtendedErrorCode(sqlite3.SCHEMA): "SCHEMA",
	sqlite3.ExtendedErrorCode(sqlite3.CONSTRAINT): "CONSTRAINT", sqlite3.ExtendedErrorCode(sqlite3.MISUSE): "MISUSE",
	sqlite3.ExtendedErrorCode(sqlite3.NOTADB): "NOTADB",
	sqlite3.BUSY_RECOVERY:                     "BUSY_RECOVERY", sqlite3.BUSY_SNAPSHOT: "BUSY_SNAPSHOT", sqlite3.BUSY_TIMEOUT: "BUSY_TIMEOUT",
	sqlite3.CONSTRAINT_CHECK: "CONSTRAINT_CHECK", sqlite3.CONSTRAINT_FOREIGNKEY: "CONSTRAINT_FOREIGNKEY",
	sqlite3.CONSTRAINT_NOTNULL: "CONSTRAINT_NOTNULL", sqlite3.CONSTRAINT_PRIMARYKEY: "CONSTRAINT_PRIMARYKEY",
	sqlite3.CONSTRAINT_UNIQUE: "CONSTRAINT_UNIQUE", sqlite3.CONSTRAINT_TRIGGER: "CONSTRAINT_TRIGGER",
	sqlite3.IOERR_WRITE: "IOERR_WRITE", sqlite3.IOERR_FSYNC: "IOERR_FSYNC", sqlite3.IOERR_SHORT_READ: "IOERR_SHORT_READ",
	sqlite3.ABORT_ROLLBACK: "ABORT_ROLLBACK", sqlite3.READONLY_DBMOVED: "READONLY_DBMOVED",
}

// messagePatterns classify errors that carry no code, by substrings of
// their lower-cased message. Typed checks always come first.
var messagePatterns = []struct {
	substr string
	cat    Category
}{
	// Integrity (before "does not exist"/"duplicate" style permanent ones).
	{"violates unique constraint", Integrity}, {"duplicate key value", Integrity}, {"unique constraint failed", Integrity},
	{"duplicate entry", Integrity}, {"violates foreign key constraint", Integrity}, {"foreign key constraint fail", Integrity},
	{"violates not-null constraint", Integrity}, {"not null constraint failed", Integrity}, {"cannot be null", Integrity},
	{"violates check constraint", Integrity}, {"check constraint failed", Integrity}, {"violates exclusion constraint", Integrity},
	// Transient.
	{"deadlock", Transient}, {"could not serialize access", Transient}, {"serialization failure", Transient},
	{"lock wait timeout", Transient}, {"database is locked", Transient}, {"database table is locked", Transient},
	{"could not obtain lock", Transient}, {"lock timeout", Transient}, {"try restarting transaction", Transient},
	{"record has changed since last read", Transient}, {"out of memory", Transient}, {"resource temporarily unavailable", Transient},
	// Connection.
	{"too many connections", Connection}, {"too many clients", Connection}, {"connection reset", Connection},
	{"broken pipe", Connection}, {"connection refused", Connection}, {"server closed the connection", Connection},
	{"terminating connection", Connection}, {"the database system is starting up", Connection},
	{"the database system is shutting down", Connection}, {"the database system is in recovery mode", Connection},
	{"invalid connection", Connection}, {"bad connection", Connection}, {"unexpected eof", Connection},
	{"connection was killed", Connection}, {"server has gone away", Connection}, {"lost connection", Connection},
	{"conn closed", Connection}, {"connection is shut down", Connection}, {"no route to host", Connection},
	{"network is unreachable", Connection}, {"failed to connect", Connection},
	// Timeout.
	{"statement timeout", Timeout}, {"canceling statement due to", Timeout}, {"query execution was interrupted", Timeout},
	{"i/o timeout", Timeout}, {"deadline exceeded", Timeout}, {"timed out", Timeout}, {"timeout expired", Timeout},
	// Permanent.
	{"database is closed", Permanent}, {"closed pool", Permanent}, {"transaction has already been committed or rolled back", Permanent},
	{"syntax error", Permanent}, {"does not exist", Permanent}, {"no such table", Permanent}, {"no such column", Permanent},
	{"unknown column", Permanent}, {"unknown database", Permanent}, {"permission denied", Permanent}, {"access denied", Permanent},
	{"password authentication failed", Permanent}, {"invalid input syntax", Permanent}, {"division by zero", Permanent},
	{"value too long", Permanent}, {"out of range", Permanent}, {"disk full", Permanent}, {"database or disk is full", Permanent},
	{"malformed", Permanent}, {"not a database", Permanent}, {"readonly database", Permanent}, {"read-only", Permanent},
}

func classifyMessage(msg string) Category {
	m := strings.ToLower(msg)
	for _, p := range messagePatterns {
		if strings.Contains(m, p.substr) {
			return p.cat
		}
	}
	return Unknown
}
