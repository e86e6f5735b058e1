package outbox_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/bento-go/bento"
	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/ent"
	"github.com/bento-go/bento/ent/migrate"
	"github.com/bento-go/bento/internal/testdb"
	"github.com/bento-go/bento/outbox"
)

// noted is the event the write-path tests record.
type noted struct {
	Note string `json:"note"`
}

func (noted) EventType() string { return "Noted" }

// writeEnv is a migrated test database and a plain ent client on Bento's
// driver: no unit of work, no hooks.
type writeEnv struct {
	t      *testing.T
	db     *bento.DB
	client *ent.Client
}

func openWriteEnv(t *testing.T, cfg config.Config) *writeEnv {
	t.Helper()
	db, err := bento.Open(cfg)
	if err != nil {
		t.Fatalf("bento.Open: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	if err := db.Migrate(context.Background(), migrate.Tables...); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	return &writeEnv{t: t, db: db, client: ent.NewClient(ent.Driver(db.Driver()))}
}

// q adapts a query written with ? and `quotes` to the dialect.
func (w *writeEnv) q(query string) string {
	d := w.db.Dialect()
	if d == testdb.MySQL {
		return query
	}
	query = strings.ReplaceAll(query, "`", `"`)
	if d != testdb.Postgres {
		return query
	}
	var b strings.Builder
	n := 0
	for _, r := range query {
		if r == '?' {
			n++
			fmt.Fprintf(&b, "$%d", n)
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

func (w *writeEnv) count(query string, args ...any) int {
	w.t.Helper()
	var n int
	if err := w.db.Driver().DB().QueryRow(w.q(query), args...).Scan(&n); err != nil {
		w.t.Fatalf("%s: %v", query, err)
	}
	return n
}

// writtenRow is one outbox row as stored.
type writtenRow struct {
	ID, Type, Status string
	Sequence         int64
	Attempts         int
	Note             string
	Headers          map[string]string
}

// rows returns an aggregate's outbox rows by sequence.
func (w *writeEnv) rows(aggType, aggID string) []writtenRow {
	w.t.Helper()
	cast := ""
	if w.db.Dialect() == testdb.Postgres {
		cast = "::text"
	}
	rs, err := w.db.Driver().DB().Query(w.q("SELECT id"+cast+", `type`, status, `sequence`, attempts, payload"+cast+", headers"+cast+
		" FROM bento_outbox WHERE aggregatetype = ? AND aggregateid = ? ORDER BY `sequence`"), aggType, aggID)
	if err != nil {
		w.t.Fatal(err)
	}
	defer rs.Close()
	var out []writtenRow
	for rs.Next() {
		var r writtenRow
		var payload []byte
		var headers *[]byte
		if err := rs.Scan(&r.ID, &r.Type, &r.Status, &r.Sequence, &r.Attempts, &payload, &headers); err != nil {
			w.t.Fatal(err)
		}
		var ev noted
		if err := json.Unmarshal(payload, &ev); err != nil {
			w.t.Fatalf("payload %s: %v", payload, err)
		}
		r.Note = ev.Note
		if headers != nil {
			if err := json.Unmarshal(*headers, &r.Headers); err != nil {
				w.t.Fatalf("headers %s: %v", *headers, err)
			}
		}
		out = append(out, r)
	}
	if err := rs.Err(); err != nil {
		w.t.Fatal(err)
	}
	return out
}

func notes(rows []writtenRow) (seqs []int64, ns []string) {
	for _, r := range rows {
		seqs = append(seqs, r.Sequence)
		ns = append(ns, r.Note)
	}
	return seqs, ns
}

// TestWritePath drives the outbox write path with ent's client.Tx and a
// context from outbox.NewContext, without a unit of work. Invariant: the
// recorded events are written by COMMIT and only by COMMIT, each
// aggregate's numbered 1..n in recording order, continuing across
// transactions.
func TestWritePath(t *testing.T) {
	testdb.Each(t, func(t *testing.T, cfg config.Config) {
		w := openWriteEnv(t, cfg)
		base := outbox.WithCorrelationID(context.Background(), "corr-1")

		if err := outbox.Record(base, "Cart", "A", noted{"x"}); !errors.Is(err, outbox.ErrNoUnitOfWork) {
			t.Fatalf("Record without a collector: %v, want ErrNoUnitOfWork", err)
		}
		unbound, _ := outbox.NewContext(base)
		if err := outbox.Record(unbound, "Cart", "A", noted{"x"}); !errors.Is(err, outbox.ErrNoUnitOfWork) {
			t.Fatalf("Record with a collector no transaction was begun with: %v, want ErrNoUnitOfWork", err)
		}

		ctx, col := outbox.NewContext(base)
		tx, err := w.client.Tx(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range []struct {
			id    string
			notes []string
		}{{"A", []string{"a1", "a2"}}, {"B", []string{"b1"}}, {"A", []string{"a3"}}} {
			evs := make([]outbox.Event, len(r.notes))
			for i, n := range r.notes {
				evs[i] = noted{n}
			}
			if err := outbox.Record(ctx, "Cart", r.id, evs...); err != nil {
				t.Fatalf("Record: %v", err)
			}
		}
		if err := outbox.Record(ctx, "Cart", "", noted{"no id"}); err == nil {
			t.Fatal("Record accepted an empty aggregate id")
		}
		if col.Len() != 4 {
			t.Fatalf("collector holds %d events, want 4", col.Len())
		}
		if n := w.count("SELECT COUNT(*) FROM bento_outbox"); n != 0 {
			t.Fatalf("%d outbox rows before COMMIT, want 0", n)
		}
		if err := tx.Commit(); err != nil {
			t.Fatalf("Commit: %v", err)
		}
		if err := outbox.Record(ctx, "Cart", "A", noted{"late"}); !errors.Is(err, outbox.ErrCollectorClosed) {
			t.Fatalf("Record after COMMIT: %v, want ErrCollectorClosed", err)
		}

		a, b := w.rows("Cart", "A"), w.rows("Cart", "B")
		if seqs, ns := notes(a); !slices.Equal(seqs, []int64{1, 2, 3}) || !slices.Equal(ns, []string{"a1", "a2", "a3"}) {
			t.Fatalf("aggregate A: sequences %v notes %v, want [1 2 3] [a1 a2 a3]", seqs, ns)
		}
		if seqs, ns := notes(b); !slices.Equal(seqs, []int64{1}) || !slices.Equal(ns, []string{"b1"}) {
			t.Fatalf("aggregate B: sequences %v notes %v, want [1] [b1]", seqs, ns)
		}
		ids := map[string]bool{}
		for _, r := range append(a, b...) {
			if r.Type != "Noted" || r.Status != outbox.StatusPending || r.Attempts != 0 {
				t.Errorf("row %+v: want type Noted, status pending, 0 attempts", r)
			}
			if r.Headers[outbox.HeaderCorrelationID] != "corr-1" {
				t.Errorf("row %s headers %v, want correlation_id corr-1", r.Note, r.Headers)
			}
			u, err := uuid.Parse(r.ID)
			if err != nil || u.Version() != 7 {
				t.Errorf("row %s id %q: want a UUIDv7 (%v)", r.Note, r.ID, err)
			}
			ids[r.ID] = true
		}
		if len(ids) != 4 {
			t.Errorf("%d distinct ids for 4 events", len(ids))
		}
		if n := w.count("SELECT last_sequence FROM bento_outbox_sequences WHERE aggregatetype = 'Cart' AND aggregateid = 'A'"); n != 3 {
			t.Errorf("last_sequence of A = %d, want 3", n)
		}

		// A rolled-back transaction writes nothing, and takes no numbers.
		rctx, _ := outbox.NewContext(base)
		rtx, err := w.client.Tx(rctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := outbox.Record(rctx, "Cart", "A", noted{"rolled back"}); err != nil {
			t.Fatal(err)
		}
		if err := outbox.Record(rctx, "Cart", "C", noted{"rolled back"}); err != nil {
			t.Fatal(err)
		}
		if err := rtx.Rollback(); err != nil {
			t.Fatalf("Rollback: %v", err)
		}
		if err := outbox.Record(rctx, "Cart", "A", noted{"late"}); !errors.Is(err, outbox.ErrCollectorClosed) {
			t.Fatalf("Record after ROLLBACK: %v, want ErrCollectorClosed", err)
		}
		if n := w.count("SELECT COUNT(*) FROM bento_outbox"); n != 4 {
			t.Fatalf("%d outbox rows after a rollback, want still 4", n)
		}
		if n := w.count("SELECT COUNT(*) FROM bento_outbox_sequences WHERE aggregateid = 'C'"); n != 0 {
			t.Fatalf("a rolled-back transaction left a sequence row for C")
		}

		// A transaction without a collector, and one whose collector
		// stayed empty, commit as usual and write nothing.
		plain, err := w.client.Tx(base)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := plain.Order.Create().SetCustomer("plain@example.com").SetTotalCents(1).Save(base); err != nil {
			t.Fatal(err)
		}
		if err := plain.Commit(); err != nil {
			t.Fatalf("Commit without a collector: %v", err)
		}
		ectx, _ := outbox.NewContext(base)
		empty, err := w.client.Tx(ectx)
		if err != nil {
			t.Fatal(err)
		}
		if err := empty.Commit(); err != nil {
			t.Fatalf("Commit with an empty collector: %v", err)
		}
		if n := w.count("SELECT COUNT(*) FROM bento_outbox"); n != 4 {
			t.Fatalf("%d outbox rows, want still 4", n)
		}

		// The next transaction continues each aggregate's sequence.
		nctx, _ := outbox.NewContext(context.Background())
		ntx, err := w.client.Tx(nctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := outbox.Record(nctx, "Cart", "A", noted{"a4"}, noted{"a5"}); err != nil {
			t.Fatal(err)
		}
		if err := ntx.Commit(); err != nil {
			t.Fatal(err)
		}
		a = w.rows("Cart", "A")
		if seqs, ns := notes(a); !slices.Equal(seqs, []int64{1, 2, 3, 4, 5}) || ns[3] != "a4" || ns[4] != "a5" {
			t.Fatalf("aggregate A after a second transaction: sequences %v notes %v", seqs, ns)
		}
		if a[4].Headers != nil {
			t.Errorf("an event recorded without headers has headers %v", a[4].Headers)
		}
	})
}

// TestOutboxColumnTypes: the table is Debezium-compatible on PostgreSQL —
// id uuid, payload jsonb.
func TestOutboxColumnTypes(t *testing.T) {
	w := openWriteEnv(t, testdb.Config(t, testdb.Postgres))
	want := map[string]string{"id": "uuid", "payload": "jsonb", "headers": "jsonb", "aggregatetype": "character varying",
		"aggregateid": "character varying", "type": "character varying", "sequence": "bigint"}
	rows, err := w.db.Driver().DB().Query(`SELECT column_name, data_type FROM information_schema.columns
		WHERE table_schema = current_schema() AND table_name = 'bento_outbox'`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	got := map[string]string{}
	for rows.Next() {
		var name, typ string
		if err := rows.Scan(&name, &typ); err != nil {
			t.Fatal(err)
		}
		got[name] = typ
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	for col, typ := range want {
		if got[col] != typ {
			t.Errorf("bento_outbox.%s is %q, want %q", col, got[col], typ)
		}
	}
}
