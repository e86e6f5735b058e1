package outbox_test

import (
	"context"
	"slices"
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
