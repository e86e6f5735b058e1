package sqlcreate

import (
	"context"
	stdsql "database/sql"
	"database/sql/driver"
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"

	"entgo.io/ent/dialect"
	entsql "entgo.io/ent/dialect/sql"
	"entgo.io/ent/dialect/sql/sqlgraph"
	"entgo.io/ent/schema/field"
)

// recorder is a dialect.Driver (and Tx) that records what is sent to it.
// Its Exec number failAt (from 1; 0 for none) fails.
type recorder struct {
	dialect string
	log     []string
	execs   int
	failAt  int
}

func (r *recorder) Exec(_ context.Context, query string, args, v any) error {
	r.log = append(r.log, fmt.Sprintf("exec %s %#v", query, args))
	if r.execs++; r.execs == r.failAt {
		return fmt.Errorf("recorder: exec %d failed", r.execs)
	}
	if res, ok := v.(*stdsql.Result); ok {
		*res = driverResult(1)
	}
	return nil
}

func (r *recorder) Query(_ context.Context, query string, args, _ any) error {
	r.log = append(r.log, fmt.Sprintf("query %s %#v", query, args))
	return fmt.Errorf("recorder: no rows for %q", query)
}

func (r *recorder) Tx(context.Context) (dialect.Tx, error) {
	r.log = append(r.log, "begin")
	return r, nil
}
func (r *recorder) Commit() error   { r.log = append(r.log, "commit"); return nil }
func (r *recorder) Rollback() error { r.log = append(r.log, "rollback"); return nil }
func (r *recorder) Close() error    { return nil }
func (r *recorder) Dialect() string { return r.dialect }

type driverResult int64

func (r driverResult) LastInsertId() (int64, error) { return int64(r), nil }
func (r driverResult) RowsAffected() (int64, error) { return int64(r), nil }

// formatted is a value ent renders with a placeholder of its own.
type formatted string

func (formatted) FormatParam(p string, _ *entsql.StmtInfo) string { return "lower(" + p + ")" }

var dialects = []string{dialect.Postgres, dialect.MySQL, dialect.SQLite}

// TestNodeAsSqlgraph creates random specs with Node and with
// sqlgraph.CreateNode and requires the same statements, arguments,
// transactions and errors from both, on every dialect, with the driver
// failing no statement, the first or the second; the specs include every
// case Node must leave to sqlgraph.
func TestNodeAsSqlgraph(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	direct := map[string]int{}
	for i := range 3000 {
		for _, d := range dialects {
			spec := randomSpec(rng, i)
			_, _, ok := insert(d, spec)
			if ok {
				direct[d]++
			}
			failAt := i % 3 // none, the first Exec or the second
			want, wantErr := run(d, spec, failAt, sqlgraph.CreateNode)
			got, gotErr := run(d, spec, failAt, Node)
			if !reflect.DeepEqual(got, want) || fmt.Sprint(gotErr) != fmt.Sprint(wantErr) {
				t.Fatalf("%s, spec %d (direct: %v):\n Node:     %q, %v\n sqlgraph: %q, %v", d, i, ok, got, gotErr, want, wantErr)
			}
		}
	}
	t.Logf("specs written by Node itself, of 3000: %v", direct)
	for _, d := range dialects {
		// The generator makes about a third of its specs qualify: a
		// test whose specs all went to sqlgraph would prove nothing.
		if direct[d] < 500 {
			t.Errorf("%s: only %d of 3000 random specs were written by Node itself", d, direct[d])
		}
	}
}

// run creates spec (a fresh copy: sqlgraph may change it) with create on
// a recorder of dialect d whose Exec number failAt fails.
func run(d string, spec *sqlgraph.CreateSpec, failAt int, create func(context.Context, dialect.Driver, *sqlgraph.CreateSpec) error) ([]string, error) {
	r := &recorder{dialect: d, failAt: failAt}
	err := create(context.Background(), r, clone(spec))
	return r.log, err
}

func clone(s *sqlgraph.CreateSpec) *sqlgraph.CreateSpec {
	c := *s
	if s.ID != nil {
		id := *s.ID
		c.ID = &id
	}
	c.Fields = make([]*sqlgraph.FieldSpec, len(s.Fields))
	for i, f := range s.Fields {
		fc := *f
		c.Fields[i] = &fc
	}
	return &c
}

func randomSpec(rng *rand.Rand, i int) *sqlgraph.CreateSpec {
	pick := func(odds int) bool { return rng.IntN(odds) == 0 }
	names := []string{"orders", "order_lines", "users", "t1"}
	odd := []string{"ALLOWED", "DISTINCT_x", "a b", `q"uote`, "back`tick", "9lives", "count(x)", "x AS y"}
	name := func() string {
		if pick(25) {
			return odd[rng.IntN(len(odd))]
		}
		return names[rng.IntN(len(names))]
	}
	spec := sqlgraph.NewCreateSpec(name(), sqlgraph.NewFieldSpec("id", field.TypeInt))
	switch {
	case pick(15):
		spec.ID = nil
	case pick(10):
		// no id value: the database assigns it
	case pick(5):
		spec.ID.Value = fmt.Sprintf("k-%d", i)
	default:
		spec.ID.Value = i + 1
	}
	if pick(8) {
		spec.Schema = "s1"
	}
	cols := []string{"version", "customer", "status", "total_cents", "created_at", "updated_at", "metadata", "note"}
	for _, c := range cols {
		if pick(3) {
			continue
		}
		if pick(40) {
			c = odd[rng.IntN(len(odd))]
		}
		switch rng.IntN(12) {
		case 0:
			spec.SetField(c, field.TypeJSON, map[string]any{"k": i, "v": []int{1, 2}})
		case 1:
			spec.SetField(c, field.TypeJSON, nil)
		case 2:
			if pick(4) {
				spec.SetField(c, field.TypeJSON, make(chan int)) // does not marshal
			} else {
				spec.SetField(c, field.TypeJSON, []string{"a"})
			}
		case 3:
			spec.SetField(c, field.TypeString, nil)
		case 4:
			if pick(5) {
				spec.SetField(c, field.TypeTime, entsql.Expr("NOW()"))
			} else {
				spec.SetField(c, field.TypeTime, time.Unix(int64(i), 0).UTC())
			}
		case 5:
			if pick(5) {
				spec.SetField(c, field.TypeString, formatted("X"))
			} else {
				spec.SetField(c, field.TypeString, "x")
			}
		case 6:
			var p *string
			spec.SetField(c, field.TypeString, p) // a typed nil is a parameter
		default:
			spec.SetField(c, field.TypeInt64, int64(rng.IntN(1000)))
		}
	}
	rels := []sqlgraph.Rel{sqlgraph.M2O, sqlgraph.M2O, sqlgraph.O2O, sqlgraph.O2M, sqlgraph.M2M}
	for k := rng.IntN(3); k > 0; k-- {
		rel := rels[rng.IntN(len(rels))]
		e := &sqlgraph.EdgeSpec{
			Rel:     rel,
			Inverse: pick(2),
			Table:   "other",
			Columns: []string{fmt.Sprintf("fk_%d", k)},
			Target:  &sqlgraph.EdgeTarget{IDSpec: sqlgraph.NewFieldSpec("id", field.TypeInt), Nodes: []driver.Value{k * 10}},
		}
		if rel == sqlgraph.M2M {
			e.Columns = []string{"a_id", "b_id"}
		}
		spec.Edges = append(spec.Edges, e)
	}
	if pick(12) {
		spec.OnConflict = []entsql.ConflictOption{entsql.ResolveWithIgnore()}
	}
	return spec
}

// TestInsert pins the statement of the usual create on each dialect.
func TestInsert(t *testing.T) {
	at := time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC)
	spec := func() *sqlgraph.CreateSpec {
		s := sqlgraph.NewCreateSpec("order_lines", sqlgraph.NewFieldSpec("id", field.TypeInt))
		s.ID.Value = 7
		s.SetField("sku", field.TypeString, "A-1")
		s.SetField("note", field.TypeString, nil)
		s.SetField("attrs", field.TypeJSON, map[string]int{"n": 1})
		s.SetField("created_at", field.TypeTime, at)
		s.Edges = append(s.Edges, &sqlgraph.EdgeSpec{Rel: sqlgraph.M2O, Inverse: true, Table: "order_lines",
			Columns: []string{"order_lines"}, Target: &sqlgraph.EdgeTarget{IDSpec: sqlgraph.NewFieldSpec("id", field.TypeInt), Nodes: []driver.Value{3}}})
		return s
	}
	for d, want := range map[string]string{
		dialect.Postgres: `INSERT INTO "order_lines" ("sku", "note", "attrs", "created_at", "order_lines", "id") VALUES ($1, NULL, $2, $3, $4, $5)`,
		dialect.MySQL:    "INSERT INTO `order_lines` (`sku`, `note`, `attrs`, `created_at`, `order_lines`, `id`) VALUES (?, NULL, ?, ?, ?, ?)",
		dialect.SQLite:   "INSERT INTO `order_lines` (`sku`, `note`, `attrs`, `created_at`, `order_lines`, `id`) VALUES (?, NULL, ?, ?, ?, ?)",
	} {
		q, args, ok := insert(d, spec())
		if !ok || q != want {
			t.Errorf("%s: insert = %q, %v; want %q", d, q, ok, want)
		}
		wantArgs := []any{"A-1", []byte(`{"n":1}`), at, 3, 7}
		if fmt.Sprint(args) != fmt.Sprint(wantArgs) {
			t.Errorf("%s: args = %v; want %v", d, args, wantArgs)
		}
	}
	for what, change := range map[string]func(*sqlgraph.CreateSpec){
		"no id value":         func(s *sqlgraph.CreateSpec) { s.ID.Value = nil },
		"on conflict":         func(s *sqlgraph.CreateSpec) { s.OnConflict = []entsql.ConflictOption{entsql.ResolveWithIgnore()} },
		"an O2M edge":         func(s *sqlgraph.CreateSpec) { s.Edges[0].Rel = sqlgraph.O2M },
		"an owning O2O edge":  func(s *sqlgraph.CreateSpec) { s.Edges[0].Rel, s.Edges[0].Inverse = sqlgraph.O2O, false },
		"an expression value": func(s *sqlgraph.CreateSpec) { s.Fields[0].Value = entsql.Expr("NOW()") },
		"an unquoted name":    func(s *sqlgraph.CreateSpec) { s.Fields[0].Column = "ALLOWED" },
	} {
		s := spec()
		change(s)
		if _, _, ok := insert(dialect.Postgres, s); ok {
			t.Errorf("%s: Node wrote it; want sqlgraph.CreateNode", what)
		}
	}
	if _, _, ok := insert("gremlin", spec()); ok {
		t.Error("gremlin: Node wrote it; want sqlgraph.CreateNode")
	}
}

// nop is a driver that does nothing, for the benchmark.
type nop struct{ n int }

func (d *nop) Exec(_ context.Context, q string, _, _ any) error { d.n += len(q); return nil }
func (d *nop) Query(context.Context, string, any, any) error    { return nil }
func (d *nop) Tx(context.Context) (dialect.Tx, error)           { return dialect.NopTx(d), nil }
func (d *nop) Close() error                                     { return nil }
func (d *nop) Dialect() string                                  { return dialect.Postgres }

// BenchmarkCreateNode renders and sends an order's INSERT (eight columns,
// the id set) to a driver that does nothing: ent's sqlgraph.CreateNode
// (the baseline) against Node, spec construction included in both.
func BenchmarkCreateNode(b *testing.B) {
	now := time.Now()
	spec := func() *sqlgraph.CreateSpec {
		s := sqlgraph.NewCreateSpec("orders", sqlgraph.NewFieldSpec("id", field.TypeInt))
		s.ID.Value = 42
		s.SetField("version", field.TypeInt64, int64(1))
		s.SetField("customer", field.TypeString, "ada@example.com")
		s.SetField("status", field.TypeEnum, "placed")
		s.SetField("total_cents", field.TypeInt64, int64(1250))
		s.SetField("created_at", field.TypeTime, now)
		s.SetField("updated_at", field.TypeTime, now)
		return s
	}
	for _, bc := range []struct {
		name   string
		create func(context.Context, dialect.Driver, *sqlgraph.CreateSpec) error
	}{{"sqlgraph", sqlgraph.CreateNode}, {"sqlcreate", Node}} {
		b.Run(bc.name, func(b *testing.B) {
			d := &nop{}
			b.ReportAllocs()
			for b.Loop() {
				if err := bc.create(context.Background(), d, spec()); err != nil {
					b.Fatal(err)
				}
			}
			if d.n == 0 {
				b.Fatal("no statement reached the driver")
			}
		})
	}
}
