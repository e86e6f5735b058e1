package shop_test

import (
	"bytes"
	"context"
	"flag"
	"net"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bento-go/bento"
	"github.com/bento-go/bento/driver"
	"github.com/bento-go/bento/ent"
	"github.com/bento-go/bento/ent/migrate"
	"github.com/bento-go/bento/ids"
	"github.com/bento-go/bento/internal/faultconn"
	"github.com/bento-go/bento/internal/testdb"
	"github.com/bento-go/bento/outbox"
	"github.com/bento-go/bento/resilience"
	"github.com/bento-go/bento/shop"
	"github.com/bento-go/bento/unitofwork"
)

// updatePgbench rewrites the pgbench scripts from the statements the unit
// of work sends: go test ./shop -run PgbenchScripts -update-pgbench.
var updatePgbench = flag.Bool("update-pgbench", false, "rewrite scripts/pgbench/*.sql from the statements the unit of work sends")

// The pgbench scripts of scripts/benchmarks.sh, relative to this package.
const (
	pgbenchSame = "../scripts/pgbench/place_order.sql"     // the unit of work's statements and round trips
	pgbenchOne  = "../scripts/pgbench/place_order_1rt.sql" // the same rows in one statement
)

// uuidv7 is a UUIDv7 made by PostgreSQL 15 (which has no uuidv7()): a
// random UUID whose first 48 bits are the Unix time in milliseconds and
// whose version nibble is 7, the kind of id Bento's events get
// (uuid.NewV7), so the outbox's primary key index grows at its right end
// as it does under Bento.
const uuidv7 = `(encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid()) placing ` +
	`substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) from 3) from 1 for 6), 52, 1), 53, 1), 'hex'))`

// TestPgbenchScripts: scripts/pgbench/place_order.sql is the unit of
// work's transaction for shop.Service.Place, statement for statement and
// round trip for round trip, and place_order_1rt.sql the same rows in one
// statement. Both are built here from the statements a unit of work sends
// on PostgreSQL (recorded by a middleware while it places an order), with
// pgbench expressions in place of the parameters, and compared with the
// files: an ent, outbox or driver change that alters a statement fails
// the test until the scripts are regenerated with -update-pgbench.
//
// The service is set up as bento serve and bento bench set it up: the ids
// of the order and its line taken beforehand (shop.WithIDs, from blocks
// of their sequences), so the unit of work defers its inserts
// (unitofwork.DeferWrites) and the driver sends them on PostgreSQL
// (driver/pgtx.go) in one pipeline: the order, its line and the outbox
// row (Tx.DeferExec), without BEGIN and COMMIT (PostgreSQL's implicit
// transaction, committed at the pipeline's Sync); the transaction id is
// not read (its answer would come with the commit's). The test checks it
// from outside the driver: one write to the server per order once the
// statements are prepared (and the id blocks read), with no BEGIN or
// COMMIT in it (read on the wire), the statements in order (a middleware
// records them), the outbox insert sent as the commit, no transaction id
// read.
func TestPgbenchScripts(t *testing.T) {
	cfg := testdb.Config(t, testdb.Postgres)
	type sent struct {
		query  string
		commit bool
		tx     *driver.Tx
	}
	var mu sync.Mutex
	var got []sent
	rec := driver.Middleware{Name: "record", Statement: func(next driver.StatementHandler) driver.StatementHandler {
		return func(ctx context.Context, st driver.Statement) error {
			s := sent{query: st.Query, commit: st.Commit, tx: st.Tx}
			mu.Lock()
			got = append(got, s)
			mu.Unlock()
			return next(ctx, st)
		}
	}}
	var writes atomic.Int64 // the client's writes to the server: one per round trip
	var wireMu sync.Mutex
	var wire []string // the statements they sent, by text (under wireMu)
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &countingConn{Conn: c, writes: &writes, mu: &wireMu, sent: &wire}, nil
	}
	db, err := bento.Open(cfg, bento.WithMiddleware(rec), bento.WithDialer(dial))
	if err != nil {
		t.Fatalf("bento.Open: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := db.Migrate(ctx, migrate.Tables...); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	client := ent.NewClient(ent.Driver(db.Driver()))
	svc := shop.NewService(ent.NewUnitOfWork(client, unitofwork.Tables(db.Names())), client,
		shop.WithIDs(ids.New(db.Driver(), db.Dialect(), ids.DefaultBlock)))
	place := func(customer string) {
		t.Helper()
		if _, err := svc.Place(ctx, shop.PlaceOrder{Customer: customer,
			Lines: []shop.Line{{SKU: "SKU-1", Quantity: 2, UnitPriceCents: 1250}}}, ""); err != nil {
			t.Fatalf("Place: %v", err)
		}
	}
	place("warm@example.com") // prepares the statements (pgx's statement cache), as a warm-up does
	mu.Lock()
	got = nil
	mu.Unlock()
	wireMu.Lock()
	wire = nil
	wireMu.Unlock()
	writes.Store(0)
	place("pgbench@example.com")
	if n := writes.Load(); n != 1 {
		t.Errorf("placing an order took %d writes to the server, want 1 round trip: place_order.sql's pipeline must follow", n)
	}
	wireMu.Lock()
	if begins, commits := (&faultconn.PGBound{Texts: wire}).Count(); begins != 0 || commits != 0 {
		t.Errorf("placing an order sent %d BEGIN and %d COMMIT (%q), want none (an implicit transaction): place_order.sql's pipeline must follow", begins, commits, wire)
	}
	wireMu.Unlock()
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 3 {
		t.Fatalf("a unit of work placing an order sent %d statements, want 3 (order, line, outbox row): %+v", len(got), got)
	}
	order, line, out := got[0].query, got[1].query, got[2].query
	if want := outbox.WriteStatements(testdb.Postgres, db.Names()).Insert; out != want {
		t.Fatalf("the third statement is not the outbox writer's:\n got %s\nwant %s", out, want)
	}
	if !got[2].commit {
		t.Fatal("the outbox insert was not sent as the commit: the unit of work's round trips changed; place_order.sql's pipeline must follow")
	}
	if got[2].tx == nil {
		t.Fatal("the outbox insert was not sent in a transaction")
	}
	if xid := resilience.TxID(got[2].tx); xid != "" {
		t.Fatalf("the unit of work read its transaction id (%s): its statements changed; place_order.sql's pipeline must follow", xid)
	}

	// The ids Bento takes from blocks of the sequences (a statement per
	// hundred orders, outside the transaction) come from the same
	// sequences in pgbench, one nextval per row; pgbench (15) cannot
	// \gset inside a pipeline, so the later statements read the order's
	// id with currval.
	seqs := map[string]string{}
	for _, table := range []string{"orders", "order_lines"} {
		var seq string
		if err := db.Driver().DB().QueryRowContext(ctx, "SELECT pg_get_serial_sequence($1, 'id')", table).Scan(&seq); err != nil {
			t.Fatal(err)
		}
		seqs[table] = seq
	}
	same, one := pgbenchScripts(t, order, line, out, "nextval('"+seqs["orders"]+"')", "nextval('"+seqs["order_lines"]+"')",
		"currval('"+seqs["orders"]+"')")
	for _, f := range []struct{ path, want string }{{pgbenchSame, same}, {pgbenchOne, one}} {
		if *updatePgbench {
			if err := os.WriteFile(f.path, []byte(f.want), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		b, err := os.ReadFile(f.path)
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != f.want {
			t.Errorf("%s is not built from the statements the unit of work sends; regenerate it with\n"+
				"  go test ./shop -run PgbenchScripts -update-pgbench\nwant:\n%s", f.path, f.want)
		}
	}
}

// countingConn counts the writes on a connection, but for pings, and
// appends the statements they send to sent (under mu).
type countingConn struct {
	net.Conn
	writes *atomic.Int64
	mu     *sync.Mutex
	sent   *[]string
	bound  faultconn.PGBound // this connection's
}

func (c *countingConn) Write(b []byte) (int, error) {
	if !bytes.Contains(b, []byte("-- ping")) { // database/sql's check of a connection idle for a while
		c.writes.Add(1)
	}
	c.mu.Lock()
	n := len(c.bound.Texts)
	c.bound.Record(b)
	*c.sent = append(*c.sent, c.bound.Texts[n:]...)
	c.mu.Unlock()
	return c.Conn.Write(b)
}

// pgbenchScripts returns the two pgbench scripts built from the unit of
// work's three statements: newOrder and newLine are the expressions of
// the ids of a new order and line, orderID the one that reads the order's
// id after its insert.
func pgbenchScripts(t *testing.T, order, line, out, newOrder, newLine, orderID string) (same, one string) {
	t.Helper()
	customer := `'pgbench-' || (:client_id)::text || '@example.com'`
	payload := func(id string) string {
		return `('{"order_id":' || ` + id + ` || ',"customer":"pgbench-' || (:client_id)::text || ` +
			`'@example.com","total_cents":2500,"lines":[{"sku":"SKU-1","quantity":2,"unit_price_cents":1250}]}')`
	}
	orderCols := map[string]string{"id": newOrder, "version": "1", "customer": customer, "status": "'pending'", "total_cents": "2500",
		"created_at": "now()", "updated_at": "now()"}
	lineCols := func(id string) map[string]string {
		return map[string]string{"id": newLine, "order_lines": id, "quantity": "2", "sku": "'SKU-1'", "unit_price_cents": "1250"}
	}
	outArgs := func(id string) []string {
		return []string{1: "'Order'", 2: id + "::text", 3: uuidv7, 4: "'OrderPlaced'", 5: payload(id + "::text"), 6: "NULL",
			7: "now()", 8: "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint"}
	}

	orderSQL := byColumn(t, order, orderCols)
	same = `-- Generated by TestPgbenchScripts (shop/pgbench_test.go) from the statements a unit of
-- work sends for shop.Service.Place on PostgreSQL; do not edit: regenerate with
--   go test ./shop -run PgbenchScripts -update-pgbench
-- The same statements (prepared, as pgx's statement cache has them), the
-- parameters replaced by pgbench expressions, in the same round trip: the
-- order, its line and the outbox row (sequence upsert and insert in one
-- statement) in one pipeline, without BEGIN and COMMIT: PostgreSQL runs
-- them as one implicit transaction, committed at the pipeline's end (its
-- Sync). The ids of the order and the line come from their sequences, as
-- Bento's (which reads them a hundred at a time, outside the transaction);
-- event ids are UUIDv7, as Bento's.
\startpipeline
` + orderSQL + `;
` + byColumn(t, line, lineCols(orderID)) + `;
` + positional(out, outArgs(orderID)) + `;
\endpipeline
`
	// One statement: the order's insert, its line's and the outbox's
	// sequence upsert as data-modifying CTEs, the id of the order read from
	// the first; no transaction id (nothing reads it).
	id := `(SELECT "id" FROM o)`
	returning := orderSQL
	if !strings.HasSuffix(returning, ` RETURNING "id"`) { // the order's id set by the code: ent asks for nothing back
		returning += ` RETURNING "id"`
	}
	outSQL := positional(out, outArgs(id))
	if !strings.HasPrefix(outSQL, "WITH ") {
		t.Fatalf("the outbox statement does not start with WITH: %s", out)
	}
	one = `-- Generated by TestPgbenchScripts (shop/pgbench_test.go); do not edit.
-- The physical limit: the rows place_order.sql writes (the order, its line,
-- the sequence upsert and the outbox row, the same statements as CTEs) in
-- one statement, one round trip, committed on its own.
WITH o AS (` + returning + `), l AS (` + byColumn(t, line, lineCols(id)) + `), ` + strings.TrimPrefix(outSQL, "WITH ") + `;
`
	return same, one
}

var (
	insertCols = regexp.MustCompile(`^INSERT INTO "[a-z_]+" \(([^)]*)\) VALUES \(([^)]*)\)`)
	param      = regexp.MustCompile(`\$(\d+)`)
)

// byColumn replaces the parameters of ent's INSERT … (columns) VALUES
// ($1, …) by the expression for each column in exprs.
func byColumn(t *testing.T, query string, exprs map[string]string) string {
	t.Helper()
	m := insertCols.FindStringSubmatchIndex(query)
	if m == nil {
		t.Fatalf("not an INSERT … (columns) VALUES (…): %s", query)
	}
	cols := strings.Split(query[m[2]:m[3]], ", ")
	vals := strings.Split(query[m[4]:m[5]], ", ")
	if len(cols) != len(vals) || len(cols) != len(exprs) {
		t.Fatalf("%d columns, %d values, %d pgbench expressions in %s", len(cols), len(vals), len(exprs), query)
	}
	out := make([]string, len(vals))
	for i, c := range cols {
		e, ok := exprs[strings.Trim(c, `"`)]
		if !ok || !param.MatchString(vals[i]) {
			t.Fatalf("column %s (value %s) has no pgbench expression in %s", c, vals[i], query)
		}
		out[i] = e
	}
	return query[:m[4]] + strings.Join(out, ", ") + query[m[5]:]
}

// positional replaces $n in query by args[n].
func positional(query string, args []string) string {
	return param.ReplaceAllStringFunc(query, func(p string) string {
		n := 0
		for _, c := range p[1:] {
			n = n*10 + int(c-'0')
		}
		return args[n]
	})
}
