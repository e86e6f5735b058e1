package outbox_test

import (
	"context"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/bento-go/bento"
	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/driver"
	"github.com/bento-go/bento/ent/migrate"
	"github.com/bento-go/bento/internal/testdb"
	"github.com/bento-go/bento/outbox"
)

// TestWriteStatements: the statements outbox.WriteStatements returns are
// the ones the writer sends (a middleware records every statement of a
// transaction that records one event), and written by hand with the
// arguments their documentation lists they store the next row of the
// aggregate's sequence.
func TestWriteStatements(t *testing.T) {
	testdb.Each(t, func(t *testing.T, cfg config.Config) {
		var mu sync.Mutex
		var sent []string
		rec := driver.Middleware{Name: "record", Statement: func(next driver.StatementHandler) driver.StatementHandler {
			return func(ctx context.Context, st driver.Statement) error {
				mu.Lock()
				sent = append(sent, st.Query)
				mu.Unlock()
				return next(ctx, st)
			}
		}}
		db, err := bento.Open(cfg, bento.WithMiddleware(rec))
		if err != nil {
			t.Fatalf("bento.Open: %v", err)
		}
		t.Cleanup(func() { db.Close() })
		ctx := context.Background()
		if err := db.Migrate(ctx, migrate.Tables...); err != nil {
			t.Fatalf("Migrate: %v", err)
		}
		st := outbox.WriteStatements(db.Dialect(), db.Names())

		mu.Lock()
		sent = nil
		mu.Unlock()
		ectx, _ := outbox.NewContext(ctx)
		tx, err := db.Driver().BeginTx(ectx, nil)
		if err != nil {
			t.Fatal(err)
		}
		// A statement that writes first, as in a unit of work: on
		// PostgreSQL it goes with BEGIN and learns the transaction id, so
		// the outbox statement goes with COMMIT, without RETURNING.
		if err := tx.Exec(ectx, "DELETE FROM "+db.Names().Outbox+" WHERE 1 = 0", []any{}, nil); err != nil {
			t.Fatal(err)
		}
		if err := outbox.Record(ectx, "Cart", "S", noted{"by the writer"}); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatalf("Commit: %v", err)
		}
		mu.Lock()
		got := slices.Clone(sent)
		mu.Unlock()
		want := []string{st.Insert}
		if st.Sequence != "" {
			want = []string{st.Sequence, st.Insert}
		}
		if len(got) > 0 {
			got = got[1:]
		}
		if !slices.Equal(got, want) {
			t.Fatalf("the writer sent\n%q\nWriteStatements says\n%q", got, want)
		}

		// The same statements by hand, with the documented arguments.
		raw := db.Driver().DB()
		htx, err := raw.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer htx.Rollback()
		id, now := uuid.Must(uuid.NewV7()).String(), time.Now().UTC()
		payload := `{"note": "by hand"}`
		if st.Sequence == "" {
			_, err = htx.ExecContext(ctx, st.Insert, "Cart", "S", id, "Noted", payload, nil, now, now.UnixMicro())
		} else {
			var seq int64
			if db.Dialect() == testdb.MySQL {
				if _, err = htx.ExecContext(ctx, st.Sequence, "Cart", "S", 1); err == nil {
					err = htx.QueryRowContext(ctx, "SELECT LAST_INSERT_ID()").Scan(&seq)
				}
			} else {
				err = htx.QueryRowContext(ctx, st.Sequence, "Cart", "S", 1).Scan(&seq)
			}
			if err == nil {
				_, err = htx.ExecContext(ctx, st.Insert, id, "Cart", "S", "Noted", payload, seq, nil, now, now.UnixMicro())
			}
		}
		if err != nil {
			t.Fatalf("writing with WriteStatements: %v", err)
		}
		if err := htx.Commit(); err != nil {
			t.Fatal(err)
		}
		w := &writeEnv{t: t, db: db}
		rows := w.rows("Cart", "S")
		if seqs, ns := notes(rows); !slices.Equal(seqs, []int64{1, 2}) || !slices.Equal(ns, []string{"by the writer", "by hand"}) {
			t.Fatalf("sequences %v notes %v, want [1 2] [by the writer by hand]", seqs, ns)
		}
		if r := rows[1]; r.ID != id || r.Type != "Noted" || r.Status != outbox.StatusPending || r.Attempts != 0 || r.Headers != nil {
			t.Fatalf("row written by hand: %+v", r)
		}
	})
}

// pgbenchArgs are the values scripts/pgbench/place_order.sql puts in
// place of the PostgreSQL outbox statement's parameters.
var pgbenchArgs = []string{
	1: `'Order'`,
	2: `(:order_id)::bigint::text`,
	3: `gen_random_uuid()`,
	4: `'OrderPlaced'`,
	5: `jsonb_build_object('order_id', (:order_id)::bigint, 'customer', 'pgbench-' || (:client_id)::text || '@example.com', 'total_cents', 2500, 'lines', jsonb_build_array(jsonb_build_object('sku', 'SKU-1', 'quantity', 2, 'unit_price_cents', 1250)))`,
	6: `NULL`,
	7: `now()`,
	8: `(extract(epoch FROM clock_timestamp()) * 1000000)::bigint`,
}

// TestPgbenchScriptMatchesWriter: the outbox statement of the pgbench
// script is the writer's (WriteStatements), its parameters replaced by
// pgbenchArgs; it fails when either changes without the other.
func TestPgbenchScriptMatchesWriter(t *testing.T) {
	const path = "../scripts/pgbench/place_order.sql"
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "--") {
			lines = append(lines, l)
		}
	}
	script := strings.Join(lines, "\n")
	start := strings.Index(script, "WITH s AS (")
	if start < 0 {
		t.Fatalf("%s has no outbox statement (WITH s AS (…))", path)
	}
	end := strings.Index(script[start:], ";")
	if end < 0 {
		t.Fatalf("%s: the outbox statement has no ending ';'", path)
	}
	got := oneLine(script[start : start+end])
	want := regexp.MustCompile(`\$\d+`).ReplaceAllStringFunc(outbox.WriteStatements(testdb.Postgres, outbox.NamesFor("")).Insert,
		func(p string) string { return pgbenchArgs[p[1]-'0'] })
	if got != want {
		t.Fatalf("%s's outbox statement is not the writer's:\n got %s\nwant %s", path, got, oneLine(want))
	}
}

// oneLine collapses runs of blanks into one space.
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
