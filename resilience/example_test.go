package resilience_test

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/ncruces/go-sqlite3"

	"github.com/bento-go/bento"
	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/ent"
	"github.com/bento-go/bento/ent/migrate"
	"github.com/bento-go/bento/resilience"
	"github.com/bento-go/bento/unitofwork"
)

// Classify reads the driver's typed error: a SQLSTATE, a MySQL error
// number, a SQLite extended code, or a Go-level error.
func ExampleClassify() {
	for _, err := range []error{
		&pgconn.PgError{Severity: "ERROR", Code: "40001", Message: "could not serialize access due to concurrent update"},
		&pgconn.PgError{Severity: "ERROR", Code: "23505", Message: "duplicate key value violates unique constraint"},
		&pgconn.PgError{Severity: "FATAL", Code: "57P01", Message: "terminating connection due to administrator command"},
		&mysql.MySQLError{Number: 1213, Message: "Deadlock found when trying to get lock; try restarting transaction"},
		sqlite3.BUSY_SNAPSHOT,
		driver.ErrBadConn,
		io.ErrUnexpectedEOF,
		context.Canceled,
	} {
		fmt.Printf("%-10s retryable=%-5t code=%-20q %v\n",
			resilience.Classify(err), resilience.IsRetryable(err), resilience.Code(err), err)
	}
	// Output:
	// transient  retryable=true  code="40001"              ERROR: could not serialize access due to concurrent update (SQLSTATE 40001)
	// integrity  retryable=false code="23505"              ERROR: duplicate key value violates unique constraint (SQLSTATE 23505)
	// connection retryable=true  code="57P01"              FATAL: terminating connection due to administrator command (SQLSTATE 57P01)
	// transient  retryable=true  code="1213"               Error 1213: Deadlock found when trying to get lock; try restarting transaction
	// transient  retryable=true  code="SQLITE_BUSY_SNAPSHOT" sqlite3: database is locked
	// connection retryable=true  code=""                   driver: bad connection
	// connection retryable=true  code=""                   unexpected EOF
	// timeout    retryable=false code=""                   context canceled
}

// ClassifyCommit answers a different question from Classify: did the
// transaction commit? Only a proof that it did not (a server error in
// reply, or a COMMIT that never left the client) keeps the statement's
// category; anything else is Ambiguous.
func ExampleClassifyCommit() {
	terminated := &pgconn.PgError{Severity: "FATAL", Code: "57P01", Message: "terminating connection due to administrator command"}
	fmt.Println("57P01 on a statement:", resilience.Classify(terminated))
	fmt.Println("57P01 as COMMIT's reply:", resilience.ClassifyCommit(terminated))
	fmt.Println("EOF as COMMIT's reply:", resilience.ClassifyCommit(io.EOF))
	fmt.Println("COMMIT never sent:", resilience.ClassifyCommit(driver.ErrBadConn))
	fmt.Println("COMMIT turned into ROLLBACK:", resilience.ClassifyCommit(pgx.ErrTxCommitRollback))

	err := resilience.WrapCommit(io.ErrUnexpectedEOF)
	fmt.Println(err)
	fmt.Println("ErrCommitUnknown:", errors.Is(err, resilience.ErrCommitUnknown), "retryable:", resilience.IsRetryable(err))
	// Output:
	// 57P01 on a statement: connection
	// 57P01 as COMMIT's reply: ambiguous
	// EOF as COMMIT's reply: ambiguous
	// COMMIT never sent: connection
	// COMMIT turned into ROLLBACK: transient
	// ambiguous error in commit: unexpected EOF
	// ErrCommitUnknown: true retryable: false
}

// NotSent is the proof a write outside a transaction needs before it is
// repeated: the driver says the request never left the client.
func ExampleNotSent() {
	fmt.Println(resilience.NotSent(driver.ErrBadConn))
	fmt.Println(resilience.NotSent(fmt.Errorf("exec: %w", driver.ErrBadConn)))
	fmt.Println(resilience.NotSent(io.EOF))
	fmt.Println(resilience.NotSent(pgconn.ErrConnClosed))
	// Output:
	// true
	// true
	// false
	// false
}

// Wrap keeps the driver's error: errors.As still finds it, and the message
// starts with the category and the code.
func ExampleWrap() {
	cause := &pgconn.PgError{Severity: "ERROR", Code: "23505", Message: `duplicate key value violates unique constraint "orders_pkey"`}
	err := resilience.Wrap(fmt.Errorf("placing order: %w", cause), "exec")
	fmt.Println(err)

	var pg *pgconn.PgError
	if errors.As(err, &pg) {
		fmt.Println("SQLSTATE:", pg.Code)
	}
	var re *resilience.Error
	if errors.As(err, &re) {
		fmt.Println("category:", re.Category, "code:", re.Code, "op:", re.Op)
	}
	fmt.Println("same error wrapped again:", resilience.Wrap(err, "query") == err)
	// Output:
	// integrity error [23505] in exec: placing order: ERROR: duplicate key value violates unique constraint "orders_pkey" (SQLSTATE 23505)
	// SQLSTATE: 23505
	// category: integrity code: 23505 op: exec
	// same error wrapped again: true
}

// The defaults behind DB_RETRY_*; see DefaultPolicy for why.
func ExampleDefaultPolicy() {
	p := resilience.DefaultPolicy()
	fmt.Println("attempts:", p.MaxAttempts)
	fmt.Println("first delay:", p.BaseDelay, "cap:", p.MaxDelay, "jitter: ±", p.JitterPercent, "%")
	fmt.Println("overall:", p.MaxElapsed)
	// Output:
	// attempts: 10
	// first delay: 10ms cap: 2s jitter: ± 50 %
	// overall: 30s
}

// Do retries an operation while its error is retryable: here it fails
// twice with a serialization failure, then succeeds.
func ExamplePolicy_Do() {
	p := resilience.Policy{
		MaxAttempts:   5,
		BaseDelay:     time.Millisecond,
		MaxDelay:      10 * time.Millisecond,
		JitterPercent: 50,
		OnRetry: func(err error, attempt int, delay time.Duration) {
			fmt.Printf("attempt %d failed (%s); retrying\n", attempt, resilience.Classify(err))
		},
	}
	attempts := 0
	err := p.Do(context.Background(), func(ctx context.Context) error {
		attempts++
		if attempts <= 2 {
			return &pgconn.PgError{Severity: "ERROR", Code: "40001", Message: "could not serialize access due to concurrent update"}
		}
		return nil
	})
	fmt.Println("attempts:", attempts, "error:", err)
	// Output:
	// attempt 1 failed (transient); retrying
	// attempt 2 failed (transient); retrying
	// attempts: 3 error: <nil>
}

// An error the policy does not retry comes back at once, as it is; when
// the attempts run out, Do returns a *RetryError that keeps the last
// attempt's error and is no longer retryable.
func ExampleRetryError() {
	p := resilience.Policy{MaxAttempts: 3, BaseDelay: time.Millisecond}
	ctx := context.Background()

	attempts := 0
	err := p.Do(ctx, func(ctx context.Context) error {
		attempts++
		return &mysql.MySQLError{Number: 1146, Message: "Table 'shop.orderz' doesn't exist"}
	})
	fmt.Println(attempts, "attempt:", err)

	attempts = 0
	err = p.Do(ctx, func(ctx context.Context) error {
		attempts++
		return &mysql.MySQLError{Number: 1213, Message: "Deadlock found when trying to get lock; try restarting transaction"}
	})
	fmt.Println(attempts, "attempts:", err)
	var re *resilience.RetryError
	var my *mysql.MySQLError
	fmt.Println(errors.As(err, &re), errors.As(err, &my), my.Number)
	fmt.Println(resilience.Classify(err), resilience.IsRetryable(err))
	// Output:
	// 1 attempt: Error 1146: Table 'shop.orderz' doesn't exist
	// 3 attempts: gave up after 3 attempts: Error 1213: Deadlock found when trying to get lock; try restarting transaction
	// true true 1213
	// transient false
}

// openExample opens a migrated in-memory SQLite database through Bento and
// an ent client on it.
func openExample(opts ...bento.Option) (*bento.DB, *ent.Client) {
	cfg := config.Default()
	u, err := config.ParseURL(":memory:")
	if err != nil {
		panic(err)
	}
	cfg.DB.URL = u
	db, err := bento.Open(cfg, opts...)
	if err != nil {
		panic(err)
	}
	if err := db.Migrate(context.Background(), migrate.Tables...); err != nil {
		panic(err)
	}
	return db, ent.NewClient(ent.Driver(db.Driver()))
}

// The whole unit of work is the retry unit: a retryable error rolls the
// transaction back and runs the function again in a new one. The order
// created by the failed attempt is gone; one order remains.
func Example_unitOfWorkRetry() {
	db, client := openExample()
	defer db.Close()
	ctx := context.Background()
	uow := ent.NewUnitOfWork(client, unitofwork.Retry(bento.RetryPolicy(db.Config().Retry)))

	runs := 0
	err := uow.Do(ctx, func(ctx context.Context, tx *ent.Client) error {
		runs++
		if _, err := tx.Order.Create().SetCustomer("a@example.com").SetTotalCents(2500).Save(ctx); err != nil {
			return err
		}
		if runs == 1 {
			return sqlite3.BUSY_SNAPSHOT // as if another connection had written first
		}
		return nil
	})
	fmt.Println("runs:", runs, "error:", err, "orders:", client.Order.Query().CountX(ctx))
	// Output:
	// runs: 2 error: <nil> orders: 1
}

// An idempotency key is stored with the unit's outcome in the same
// transaction; a later Do with the same key returns that outcome without
// running the function. It is also how an ambiguous COMMIT is resolved on
// MySQL/MariaDB and SQLite: the retry finds the key if the commit happened.
func Example_idempotencyKey() {
	db, client := openExample()
	defer db.Close()
	ctx := context.Background()
	uow := ent.NewUnitOfWork(client)

	runs := 0
	place := func() (int, error) {
		return unitofwork.DoValue(ctx, uow, func(ctx context.Context, tx *ent.Client) (int, error) {
			runs++
			o, err := tx.Order.Create().SetCustomer("b@example.com").SetTotalCents(900).Save(ctx)
			if err != nil {
				return 0, err
			}
			return o.ID, nil
		}, unitofwork.IdempotencyKey("checkout-7f3a"))
	}
	first, err1 := place()
	second, err2 := place()
	fmt.Println("same order:", first == second, "errors:", err1, err2)
	fmt.Println("runs:", runs, "orders:", client.Order.Query().CountX(ctx))
	// Output:
	// same order: true errors: <nil> <nil>
	// runs: 1 orders: 1
}

// Configuring retries: bento.Open's driver middleware takes the DB_RETRY_*
// policy unless Options.Policy is set; the unit of work and the read-retry
// interceptor take the policy they are given.
func ExampleOptions() {
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	retries := 0
	db, client := openExample(bento.WithResilience(resilience.Options{
		// Policy: zero, so the DB_RETRY_* settings apply.
		ResolveTimeout:     5 * time.Second, // PostgreSQL: how long to poll pg_xact_status
		TxIDOnlyFromOutbox: false,           // true: no SELECT pg_current_xact_id() round trip
		Logger:             logger,
		OnRetry: func(op string, err error, attempt int, delay time.Duration) {
			retries++
		},
		OnAmbiguous: func(o resilience.Outcome) {
			fmt.Println("ambiguous commit resolved:", o)
		},
	}))
	defer db.Close()
	ctx := context.Background()

	policy := bento.RetryPolicy(db.Config().Retry) // DB_RETRY_*
	policy.OnRetry = func(err error, attempt int, delay time.Duration) {
		logger.Warn("unit of work retried", "attempt", attempt, "category", resilience.Classify(err).String())
	}
	uow := ent.NewUnitOfWork(client, unitofwork.Retry(policy))

	// One call that must not be repeated, whatever the error.
	err := uow.Do(ctx, func(ctx context.Context, tx *ent.Client) error {
		return tx.Order.Create().SetCustomer("c@example.com").SetTotalCents(100).Exec(ctx)
	}, unitofwork.NoRetry())
	fmt.Println("error:", err, "driver retries:", retries)
	// Output:
	// error: <nil> driver retries: 0
}

// WithoutRetry runs work once, as a health check must: the fault is
// reported, not ridden out. Errors are still classified.
func ExampleWithoutRetry() {
	db, _ := openExample()
	defer db.Close()
	ctx := resilience.WithoutRetry(context.Background())
	_, err := db.Driver().ExecContext(ctx, "DELETE FROM no_such_table")
	fmt.Println(resilience.Classify(err))
	fmt.Println(err)
	// Output:
	// permanent
	// permanent error [SQLITE_ERROR] in exec: sqlite3: SQL logic error: no such table: no_such_table
}

// ReadRetry retries a whole ent query, rows included, when it only read
// outside a transaction. ent.NewUnitOfWork registers it with
// DefaultPolicy; a client used without a unit of work registers it itself.
func ExampleReadRetry() {
	db, client := openExample()
	defer db.Close()
	client.Intercept(resilience.ReadRetry(bento.RetryPolicy(db.Config().Retry)))
	n, err := client.Order.Query().Count(context.Background())
	fmt.Println(n, err)
	// Output:
	// 0 <nil>
}

// TestDocCodeTables keeps docs/resilience.md honest: every row of its code
// tables must say what Classify says, and every code, SQLite constant and
// message pattern in classify.go's switches must appear in a row.
func TestDocCodeTables(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "docs", "resilience.md"))
	if err != nil {
		t.Fatal(err)
	}
	tables := docTables(t, string(doc))
	categories := map[string]resilience.Category{}
	for _, c := range resilience.Categories() {
		categories[c.String()] = c
	}
	check := func(table, token string, err error, want string) {
		t.Helper()
		c, ok := categories[want]
		if !ok {
			t.Errorf("%s: %s: %q is not a category", table, token, want)
			return
		}
		if got := resilience.Classify(err); got != c {
			t.Errorf("%s: docs/resilience.md says %s is %s; Classify says %s", table, token, want, got)
		}
	}
	documented := map[string]map[string]bool{}
	for name, rows := range tables {
		documented[name] = map[string]bool{}
		for _, r := range rows {
			for _, tok := range r.tokens {
				tok, _, _ = strings.Cut(tok, "=") // SQLite: NAME=value
				documented[name][tok] = true
			}
		}
	}

	for _, r := range tables["postgres"] {
		for _, code := range r.tokens {
			c := code
			if class, ok := strings.CutSuffix(code, "xxx"); ok {
				c = class + "999" // a code of the class that is listed nowhere
			}
			check("postgres", code, &pgconn.PgError{Code: c}, r.category)
		}
	}
	for _, r := range tables["mysql"] {
		for _, tok := range r.tokens {
			n, err := strconv.ParseUint(tok, 10, 16)
			if err != nil {
				t.Errorf("mysql: %q is not an error number", tok)
				continue
			}
			check("mysql", tok, &mysql.MySQLError{Number: uint16(n)}, r.category)
		}
	}
	for _, r := range tables["sqlite"] {
		for _, tok := range r.tokens {
			name, value, ok := strings.Cut(tok, "=")
			x, known := sqliteCodes[name]
			if !ok || !known {
				t.Errorf("sqlite: %q: want `NAME` (value) with a known name", tok)
				continue
			}
			if v, _ := strconv.Atoi(value); v != int(x) {
				t.Errorf("sqlite: %s is %d, the docs say %s", name, x, value)
			}
			check("sqlite", name, x, r.category)
		}
	}
	for _, r := range tables["patterns"] {
		for _, p := range r.tokens {
			check("patterns", p, errors.New(p), r.category)
		}
	}

	// Every case of classify.go is in the tables.
	src, err := parser.ParseFile(token.NewFileSet(), "classify.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{}
	for _, decl := range src.Decls {
		switch d := decl.(type) {
		case *ast.FuncDecl:
			table := map[string]string{"pgCategory": "postgres", "mysqlCategory": "mysql", "sqliteCategory": "sqlite"}[d.Name.Name]
			if table == "" {
				continue
			}
			ast.Inspect(d.Body, func(n ast.Node) bool {
				cc, ok := n.(*ast.CaseClause)
				if !ok {
					return true
				}
				for _, e := range cc.List {
					ast.Inspect(e, func(n ast.Node) bool {
						switch x := n.(type) {
						case *ast.BasicLit:
							v := strings.Trim(x.Value, `"`)
							if table == "postgres" && len(v) == 2 {
								v += "xxx"
							}
							if table != "sqlite" {
								want[table] = append(want[table], v)
							}
						case *ast.SelectorExpr:
							if id, ok := x.X.(*ast.Ident); ok && id.Name == "sqlite3" && x.Sel.Name != "ExtendedErrorCode" {
								want[table] = append(want[table], x.Sel.Name)
							}
						}
						return true
					})
				}
				return true
			})
		case *ast.GenDecl:
			for _, spec := range d.Specs {
				vs, ok := spec.(*ast.ValueSpec)
				if !ok || len(vs.Names) != 1 || vs.Names[0].Name != "messagePatterns" {
					continue
				}
				ast.Inspect(vs, func(n ast.Node) bool {
					if cl, ok := n.(*ast.CompositeLit); ok && len(cl.Elts) == 2 {
						if lit, ok := cl.Elts[0].(*ast.BasicLit); ok {
							p, _ := strconv.Unquote(lit.Value)
							want["patterns"] = append(want["patterns"], p)
						}
					}
					return true
				})
			}
		}
	}
	for table, toks := range want {
		if len(toks) == 0 {
			t.Errorf("found no cases for %s in classify.go", table)
		}
		for _, tok := range toks {
			if !documented[table][tok] {
				t.Errorf("classify.go maps %s %s, but docs/resilience.md does not list it", table, tok)
			}
		}
	}
}

type docRow struct {
	tokens   []string
	category string
}

// docTables reads the tables between <!-- codes:NAME --> and <!-- /codes -->:
// the first cell's `backticked` tokens (for SQLite, NAME=value from
// "`NAME` (value)") and the row's category cell.
func docTables(t *testing.T, doc string) map[string][]docRow {
	t.Helper()
	names := map[string]bool{}
	for _, c := range resilience.Categories() {
		names[c.String()] = true
	}
	tick := regexp.MustCompile("`([^`]+)`( \\((\\d+)\\))?")
	out := map[string][]docRow{}
	table := ""
	for line := range strings.Lines(doc) {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "<!-- codes:"):
			table = strings.TrimSuffix(strings.TrimPrefix(line, "<!-- codes:"), " -->")
			continue
		case line == "<!-- /codes -->":
			table = ""
			continue
		case table == "" || !strings.HasPrefix(line, "|"):
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), " | ")
		var r docRow
		for _, m := range tick.FindAllStringSubmatch(cells[0], -1) {
			tok := m[1]
			if m[3] != "" {
				tok += "=" + m[3]
			}
			r.tokens = append(r.tokens, tok)
		}
		if len(r.tokens) == 0 {
			continue // the header
		}
		for _, c := range cells[1:] {
			if c = strings.TrimSpace(c); names[c] {
				r.category = c
				break
			}
		}
		if r.category == "" {
			t.Errorf("docs/resilience.md, table %s: no category in %q", table, line)
		}
		out[table] = append(out[table], r)
	}
	for _, name := range []string{"postgres", "mysql", "sqlite", "patterns"} {
		if len(out[name]) == 0 {
			t.Errorf("docs/resilience.md has no rows in table %s", name)
		}
	}
	return out
}

// sqliteCodes are the SQLite codes docs/resilience.md names.
var sqliteCodes = map[string]sqlite3.ExtendedErrorCode{
	"ERROR": sqlite3.ExtendedErrorCode(sqlite3.ERROR), "INTERNAL": sqlite3.ExtendedErrorCode(sqlite3.INTERNAL),
	"PERM": sqlite3.ExtendedErrorCode(sqlite3.PERM), "ABORT": sqlite3.ExtendedErrorCode(sqlite3.ABORT),
	"BUSY": sqlite3.ExtendedErrorCode(sqlite3.BUSY), "LOCKED": sqlite3.ExtendedErrorCode(sqlite3.LOCKED),
	"NOMEM": sqlite3.ExtendedErrorCode(sqlite3.NOMEM), "READONLY": sqlite3.ExtendedErrorCode(sqlite3.READONLY),
	"INTERRUPT": sqlite3.ExtendedErrorCode(sqlite3.INTERRUPT), "IOERR": sqlite3.ExtendedErrorCode(sqlite3.IOERR),
	"CORRUPT": sqlite3.ExtendedErrorCode(sqlite3.CORRUPT), "NOTFOUND": sqlite3.ExtendedErrorCode(sqlite3.NOTFOUND),
	"FULL": sqlite3.ExtendedErrorCode(sqlite3.FULL), "CANTOPEN": sqlite3.ExtendedErrorCode(sqlite3.CANTOPEN),
	"PROTOCOL": sqlite3.ExtendedErrorCode(sqlite3.PROTOCOL), "EMPTY": sqlite3.ExtendedErrorCode(sqlite3.EMPTY),
	"SCHEMA": sqlite3.ExtendedErrorCode(sqlite3.SCHEMA), "TOOBIG": sqlite3.ExtendedErrorCode(sqlite3.TOOBIG),
	"CONSTRAINT": sqlite3.ExtendedErrorCode(sqlite3.CONSTRAINT), "MISMATCH": sqlite3.ExtendedErrorCode(sqlite3.MISMATCH),
	"MISUSE": sqlite3.ExtendedErrorCode(sqlite3.MISUSE), "NOLFS": sqlite3.ExtendedErrorCode(sqlite3.NOLFS),
	"AUTH": sqlite3.ExtendedErrorCode(sqlite3.AUTH), "FORMAT": sqlite3.ExtendedErrorCode(sqlite3.FORMAT),
	"RANGE": sqlite3.ExtendedErrorCode(sqlite3.RANGE), "NOTADB": sqlite3.ExtendedErrorCode(sqlite3.NOTADB),
	"NOTICE": sqlite3.ExtendedErrorCode(sqlite3.NOTICE), "WARNING": sqlite3.ExtendedErrorCode(sqlite3.WARNING),
	"BUSY_RECOVERY": sqlite3.BUSY_RECOVERY, "BUSY_SNAPSHOT": sqlite3.BUSY_SNAPSHOT, "BUSY_TIMEOUT": sqlite3.BUSY_TIMEOUT,
	"LOCKED_SHAREDCACHE": sqlite3.LOCKED_SHAREDCACHE, "LOCKED_VTAB": sqlite3.LOCKED_VTAB,
	"ABORT_ROLLBACK": sqlite3.ABORT_ROLLBACK, "IOERR_WRITE": sqlite3.IOERR_WRITE,
	"CONSTRAINT_UNIQUE": sqlite3.CONSTRAINT_UNIQUE, "CONSTRAINT_FOREIGNKEY": sqlite3.CONSTRAINT_FOREIGNKEY,
	"CONSTRAINT_NOTNULL": sqlite3.CONSTRAINT_NOTNULL, "CONSTRAINT_CHECK": sqlite3.CONSTRAINT_CHECK,
	"CONSTRAINT_PRIMARYKEY": sqlite3.CONSTRAINT_PRIMARYKEY, "CONSTRAINT_TRIGGER": sqlite3.CONSTRAINT_TRIGGER,
}
