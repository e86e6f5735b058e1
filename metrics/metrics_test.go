package metrics_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/bento-go/bento"
	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/drain"
	"github.com/bento-go/bento/driver"
	"github.com/bento-go/bento/ent"
	"github.com/bento-go/bento/ent/migrate"
	"github.com/bento-go/bento/metrics"
	"github.com/bento-go/bento/outbox"
	"github.com/bento-go/bento/resilience"
	"github.com/bento-go/bento/unitofwork"
)

// Values are read with Registry.Gather: client_golang's testutil package
// needs a go.mod change (its diff dependency is not required there).

// labels is a label set, as name=value pairs: labels{"op", "exec"}.
type labels []string

func (l labels) String() string {
	var parts []string
	for i := 0; i+1 < len(l); i += 2 {
		parts = append(parts, fmt.Sprintf("%s=%q", l[i], l[i+1]))
	}
	return "{" + strings.Join(parts, ",") + "}"
}

func gather(t testing.TB, g prometheus.Gatherer) map[string]*dto.MetricFamily {
	t.Helper()
	fams, err := g.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	out := make(map[string]*dto.MetricFamily, len(fams))
	for _, f := range fams {
		out[f.GetName()] = f
	}
	return out
}

// find returns the series of name with exactly the label set want.
func find(t testing.TB, g prometheus.Gatherer, name string, want labels) (*dto.Metric, dto.MetricType, bool) {
	t.Helper()
	f, ok := gather(t, g)[name]
	if !ok {
		return nil, 0, false
	}
	for _, m := range f.GetMetric() {
		if len(m.GetLabel())*2 != len(want) {
			continue
		}
		match := true
		for i := 0; i+1 < len(want); i += 2 {
			found := false
			for _, lp := range m.GetLabel() {
				if lp.GetName() == want[i] && lp.GetValue() == want[i+1] {
					found = true
				}
			}
			match = match && found
		}
		if match {
			return m, f.GetType(), true
		}
	}
	return nil, f.GetType(), false
}

// value returns a counter's or gauge's value, or a histogram's sample
// count; it fails the test if the series does not exist.
func value(t testing.TB, g prometheus.Gatherer, name string, l labels) float64 {
	t.Helper()
	m, typ, ok := find(t, g, name, l)
	if !ok {
		t.Fatalf("no series %s%s", name, l)
	}
	switch typ {
	case dto.MetricType_COUNTER:
		return m.GetCounter().GetValue()
	case dto.MetricType_GAUGE:
		return m.GetGauge().GetValue()
	case dto.MetricType_HISTOGRAM:
		return float64(m.GetHistogram().GetSampleCount())
	}
	t.Fatalf("%s: unexpected type %s", name, typ)
	return 0
}

// count is value for a series that may not exist yet (0 then).
func count(t testing.TB, g prometheus.Gatherer, name string, l labels) float64 {
	t.Helper()
	if _, _, ok := find(t, g, name, l); !ok {
		return 0
	}
	return value(t, g, name, l)
}

// sum returns a histogram's sample sum.
func sum(t testing.TB, g prometheus.Gatherer, name string, l labels) float64 {
	t.Helper()
	m, typ, ok := find(t, g, name, l)
	if !ok || typ != dto.MetricType_HISTOGRAM {
		t.Fatalf("no histogram %s%s", name, l)
	}
	return m.GetHistogram().GetSampleSum()
}

func expect(t testing.TB, g prometheus.Gatherer, name string, l labels, want float64) {
	t.Helper()
	if got := value(t, g, name, l); got != want {
		t.Errorf("%s%s = %v, want %v", name, l, got, want)
	}
}

// allNames is every metric Metrics exports once each hook has been used
// and WatchPool and WatchOutbox were called.
var allNames = []string{
	"bento_ambiguous_commits_total",
	"bento_drain_duration_seconds",
	"bento_drain_rejected",
	"bento_drain_state",
	"bento_outbox_commit_to_published_seconds",
	"bento_outbox_dead_lettered_total",
	"bento_outbox_dead_letters",
	"bento_outbox_failed_total",
	"bento_outbox_oldest_pending_age_seconds",
	"bento_outbox_pending",
	"bento_outbox_publish_duration_seconds",
	"bento_outbox_published_total",
	"bento_outbox_relay_batch_duration_seconds",
	"bento_outbox_stats_up",
	"bento_pool_busy",
	"bento_pool_closed_total",
	"bento_pool_connections",
	"bento_pool_max_open",
	"bento_pool_timeouts_total",
	"bento_pool_wait_seconds_total",
	"bento_pool_waits_total",
	"bento_replica_fallbacks_total",
	"bento_replica_healthy",
	"bento_replica_lag_seconds",
	"bento_replica_routed_total",
	"bento_retries_total",
	"bento_statement_duration_seconds",
	"bento_transaction_duration_seconds",
	"bento_unit_of_work_attempts",
	"bento_unit_of_work_duration_seconds",
	"bento_units_of_work_total",
}

// openSQLite opens a migrated bento.DB on a SQLite file of the test, with
// the given options.
func openSQLite(t testing.TB, opts ...bento.Option) *bento.DB {
	t.Helper()
	cfg := config.Default()
	u, err := config.ParseURL("sqlite://" + filepath.Join(t.TempDir(), "m.db"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.DB.URL = u
	db, err := bento.Open(cfg, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := db.Migrate(context.Background(), migrate.Tables...); err != nil {
		t.Fatal(err)
	}
	return db
}

func familyNames(t testing.TB, g prometheus.Gatherer) []string {
	t.Helper()
	var names []string
	for n := range gather(t, g) {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// TestNewRegistersOnGivenRegistryOnly: New, WatchPool and WatchOutbox
// register on the registry they are given, every metric of the package is
// there, and nothing reaches prometheus.DefaultRegisterer.
func TestNewRegistersOnGivenRegistryOnly(t *testing.T) {
	before := familyNames(t, prometheus.DefaultGatherer)

	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	db := openSQLite(t, bento.WithMiddleware(m.Middleware()))
	m.WatchPool(db.Pool())
	m.WatchOutbox(db.Driver(), db.Names(), time.Second)

	// Touch every vector so that each family has a series to export.
	ctx := context.Background()
	tx, err := db.Driver().BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	m.Retry("query", errors.New("x"), 1, 0)
	m.Ambiguous(resilience.Committed)
	m.UnitDone("committed", 1, time.Millisecond, nil)
	m.Batch(1, 1, 0, 0, time.Millisecond)
	m.Publish(1, time.Millisecond)
	m.Published(outbox.Message{OccurredAt: time.Now()}, time.Now())
	m.Routed("primary", "write")
	m.Fallback("replica_error")
	m.ReplicaState("replica-1", true, 0)
	m.State("draining")
	m.Drained(drain.Stats{})

	got := familyNames(t, reg)
	if !slices.Equal(got, allNames) {
		t.Errorf("families on the given registry:\n got %v\nwant %v", got, allNames)
	}
	after := familyNames(t, prometheus.DefaultGatherer)
	if !slices.Equal(before, after) {
		t.Errorf("the default registry changed:\nbefore %v\n after %v", before, after)
	}
	for _, n := range after {
		if strings.HasPrefix(n, metrics.Namespace+"_") {
			t.Errorf("%s is on the default registry", n)
		}
	}

	// A second Metrics on another registry is independent: no global
	// state, no duplicate-registration panic.
	reg2 := prometheus.NewRegistry()
	m2 := metrics.New(reg2)
	m2.UnitDone("failed", 1, time.Millisecond, nil)
	expect(t, reg, "bento_units_of_work_total", labels{"outcome", "failed"}, 0)
	expect(t, reg2, "bento_units_of_work_total", labels{"outcome", "failed"}, 1)
}

// TestPreCreatedSeries: the series an alert or a rate() needs from the
// start exist at zero before anything happened.
func TestPreCreatedSeries(t *testing.T) {
	reg := prometheus.NewRegistry()
	metrics.New(reg)
	for _, c := range resilience.Categories() {
		expect(t, reg, "bento_retries_total", labels{"op", "unit_of_work", "category", c.String()}, 0)
	}
	for _, o := range []string{"committed", "aborted", "unknown"} {
		expect(t, reg, "bento_ambiguous_commits_total", labels{"resolution", o}, 0)
	}
	for _, o := range []string{"committed", "replayed", "failed", "panicked"} {
		expect(t, reg, "bento_units_of_work_total", labels{"outcome", o}, 0)
	}
	expect(t, reg, "bento_statement_duration_seconds", labels{"op", "exec", "outcome", "ok"}, 0)
	expect(t, reg, "bento_statement_duration_seconds", labels{"op", "query", "outcome", "ok"}, 0)
	for _, n := range []string{"bento_outbox_published_total", "bento_outbox_failed_total", "bento_outbox_dead_lettered_total",
		"bento_drain_state", "bento_drain_duration_seconds", "bento_drain_rejected"} {
		expect(t, reg, n, nil, 0)
	}
}

// TestMiddlewareStatements drives the Statement handler with a fake next
// handler: ok and failed statements by kind, the error's category as the
// outcome, the duration observed, the error passed through untouched.
func TestMiddlewareStatements(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	var fail error
	next := func(ctx context.Context, st driver.Statement) error {
		time.Sleep(2 * time.Millisecond)
		return fail
	}
	h := m.Middleware().Statement(next)
	ctx := context.Background()
	run := func(kind driver.Kind, err error) {
		t.Helper()
		fail = err
		if got := h(ctx, driver.Statement{Kind: kind, Query: "SELECT secret FROM t WHERE id = 42", Args: []any{42}}); got != err {
			t.Fatalf("the handler returned %v, want the next handler's error %v unchanged", got, err)
		}
	}
	run(driver.Exec, nil)
	run(driver.Exec, nil)
	run(driver.Query, nil)
	run(driver.Exec, &resilience.Error{Category: resilience.Transient, Code: "40001", Op: "exec", Err: errors.New("serialization failure")})
	run(driver.Query, &resilience.Error{Category: resilience.Integrity, Code: "23505", Op: "query", Err: errors.New("duplicate key")})
	run(driver.Query, &resilience.Error{Category: resilience.Integrity, Code: "23503", Op: "query", Err: errors.New("fk")})
	run(driver.Query, errors.New("an error nothing identifies"))
	run(driver.Exec, driver.ErrDraining)

	expect(t, reg, "bento_statement_duration_seconds", labels{"op", "exec", "outcome", "ok"}, 2)
	expect(t, reg, "bento_statement_duration_seconds", labels{"op", "query", "outcome", "ok"}, 1)
	expect(t, reg, "bento_statement_duration_seconds", labels{"op", "exec", "outcome", "transient"}, 1)
	expect(t, reg, "bento_statement_duration_seconds", labels{"op", "query", "outcome", "integrity"}, 2)
	expect(t, reg, "bento_statement_duration_seconds", labels{"op", "query", "outcome", "unknown"}, 1)
	expect(t, reg, "bento_statement_duration_seconds", labels{"op", "exec", "outcome", resilience.Classify(driver.ErrDraining).String()}, 1)
	if s := sum(t, reg, "bento_statement_duration_seconds", labels{"op", "exec", "outcome", "ok"}); s < 0.004 || s > 5 {
		t.Errorf("two statements of >= 2 ms each: sum %v s", s)
	}
	// Only the statement's kind and the error's category become labels.
	assertBoundedLabels(t, reg, "SELECT", "secret", "42", "serialization", "duplicate")
}

// assertBoundedLabels fails if a label value of any series contains one of
// the forbidden strings (SQL text, ids, error messages).
func assertBoundedLabels(t testing.TB, g prometheus.Gatherer, forbidden ...string) {
	t.Helper()
	for _, f := range gather(t, g) {
		for _, m := range f.GetMetric() {
			for _, lp := range m.GetLabel() {
				for _, s := range forbidden {
					if strings.Contains(lp.GetValue(), s) {
						t.Errorf("%s has label %s=%q containing %q", f.GetName(), lp.GetName(), lp.GetValue(), s)
					}
				}
			}
		}
	}
}

// TestMiddlewareTransactions runs real transactions on SQLite through the
// whole stack (metrics outermost, as in bento serve): commit, rollback, a
// COMMIT that fails (a deferred foreign key), a BEGIN that fails, and a
// statement error.
func TestMiddlewareTransactions(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	db := openSQLite(t, bento.WithMiddleware(m.Middleware()))
	ctx := context.Background()
	client := ent.NewClient(ent.Driver(db.Driver()))

	tr := func(outcome string) float64 {
		return count(t, reg, "bento_transaction_duration_seconds", labels{"outcome", outcome})
	}
	st := func(op, outcome string) float64 {
		return count(t, reg, "bento_statement_duration_seconds", labels{"op", op, "outcome", outcome})
	}
	commits, rollbacks := tr("commit"), tr("rollback")
	queries, execs := st("query", "ok"), st("exec", "ok")

	// Commit.
	tx, err := client.Tx(ctx)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Millisecond)
	if _, err := tx.Order.Create().SetCustomer("a@example.com").SetTotalCents(100).Save(ctx); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	// A rollback after the commit is refused and not counted again.
	if err := tx.Rollback(); err == nil {
		t.Error("Rollback after Commit succeeded")
	}
	if got := tr("commit") - commits; got != 1 {
		t.Errorf("commit +%v, want +1", got)
	}
	if s := sum(t, reg, "bento_transaction_duration_seconds", labels{"outcome", "commit"}); s < 0.003 {
		t.Errorf("a transaction held open >= 3 ms: commit duration sum %v s", s)
	}
	if tr("rollback") != rollbacks {
		t.Errorf("rollback moved after a commit: %v -> %v", rollbacks, tr("rollback"))
	}
	if st("query", "ok")+st("exec", "ok") <= queries+execs {
		t.Errorf("statement counts did not grow: query %v -> %v, exec %v -> %v", queries, st("query", "ok"), execs, st("exec", "ok"))
	}

	// Rollback.
	tx, err = client.Tx(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Order.Create().SetCustomer("b@example.com").SetTotalCents(1).Save(ctx); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	if got := tr("rollback") - rollbacks; got != 1 {
		t.Errorf("rollback +%v, want +1", got)
	}

	// A COMMIT that fails: a deferred foreign key is checked at COMMIT.
	drv := db.Driver()
	for _, q := range []string{
		"CREATE TABLE parent (id INTEGER PRIMARY KEY)",
		"CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)",
	} {
		if _, err := drv.ExecContext(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	dtx, err := drv.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dtx.(*driver.Tx).ExecContext(ctx, "INSERT INTO child (id, parent_id) VALUES (1, 999)"); err != nil {
		t.Fatalf("the insert should pass until COMMIT: %v", err)
	}
	cerr := dtx.Commit()
	if cerr == nil {
		t.Fatal("COMMIT with a dangling deferred foreign key succeeded")
	}
	cat := resilience.Classify(cerr).String()
	if cat != "integrity" {
		t.Errorf("the failed COMMIT is classified %s, want integrity: %v", cat, cerr)
	}
	if got := tr(cat); got != 1 {
		t.Errorf("transaction_duration_seconds{outcome=%q} = %v after a failed COMMIT, want 1", cat, got)
	}
	if got := tr("commit") - commits; got != 1 {
		t.Errorf("a failed COMMIT counted as a commit: commit +%v, want +1", got)
	}
	// SQLite rolls the transaction back itself; the driver's Rollback is
	// refused and adds nothing.
	_ = dtx.Rollback()

	// A statement error: its category is the outcome.
	if _, err := drv.ExecContext(ctx, "INSERT INTO no_such_table VALUES (1)"); err == nil {
		t.Fatal("insert into a missing table succeeded")
	} else if c := resilience.Classify(err).String(); st("exec", c) != 1 {
		t.Errorf("statement_duration_seconds{op=exec,outcome=%s} = %v, want 1 (%v)", c, st("exec", c), err)
	}

	// A BEGIN that fails: outcome begin_<category>.
	db.Close()
	_, err = drv.BeginTx(ctx, nil)
	if err == nil {
		t.Fatal("BEGIN on a closed database succeeded")
	}
	bc := "begin_" + resilience.Classify(err).String()
	if got := tr(bc); got != 1 {
		t.Errorf("transaction_duration_seconds{outcome=%q} = %v after a failed BEGIN, want 1 (%v)", bc, got, err)
	}
	assertOutcomes(t, reg)
}

// assertOutcomes checks that every outcome label of the transaction and
// statement histograms is one of the documented values.
func assertOutcomes(t testing.TB, g prometheus.Gatherer) {
	t.Helper()
	cats := map[string]bool{}
	for _, c := range resilience.Categories() {
		cats[c.String()] = true
	}
	fams := gather(t, g)
	for _, m := range fams["bento_transaction_duration_seconds"].GetMetric() {
		for _, lp := range m.GetLabel() {
			v := lp.GetValue()
			if !(v == "commit" || v == "rollback" || cats[v] || cats[strings.TrimPrefix(v, "begin_")] && strings.HasPrefix(v, "begin_")) {
				t.Errorf("transaction outcome %q is not commit, rollback, <category> or begin_<category>", v)
			}
		}
	}
	for _, m := range fams["bento_statement_duration_seconds"].GetMetric() {
		for _, lp := range m.GetLabel() {
			v := lp.GetValue()
			switch lp.GetName() {
			case "op":
				if v != "exec" && v != "query" {
					t.Errorf("statement op %q", v)
				}
			case "outcome":
				if v != "ok" && !cats[v] {
					t.Errorf("statement outcome %q", v)
				}
			}
		}
	}
}

// TestHooks calls every hook and checks the series it moves.
func TestHooks(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	transient := &resilience.Error{Category: resilience.Transient, Code: "40001", Err: errors.New("could not serialize")}
	conn := &resilience.Error{Category: resilience.Connection, Err: errors.New("connection reset")}

	t.Run("Retry", func(t *testing.T) {
		m.Retry("exec", transient, 1, time.Millisecond)
		m.Retry("exec", transient, 2, time.Millisecond)
		m.Retry("query", conn, 1, 0)
		m.Retry("begin", conn, 1, 0)
		expect(t, reg, "bento_retries_total", labels{"op", "exec", "category", "transient"}, 2)
		expect(t, reg, "bento_retries_total", labels{"op", "query", "category", "connection"}, 1)
		expect(t, reg, "bento_retries_total", labels{"op", "begin", "category", "connection"}, 1)
		expect(t, reg, "bento_retries_total", labels{"op", "unit_of_work", "category", "transient"}, 0)
	})
	t.Run("UnitRetry", func(t *testing.T) {
		m.UnitRetry(transient, 1, time.Millisecond)
		m.UnitRetry(fmt.Errorf("wrapped: %w", conn), 2, time.Millisecond)
		expect(t, reg, "bento_retries_total", labels{"op", "unit_of_work", "category", "transient"}, 1)
		expect(t, reg, "bento_retries_total", labels{"op", "unit_of_work", "category", "connection"}, 1)
		expect(t, reg, "bento_retries_total", labels{"op", "exec", "category", "transient"}, 2)
	})
	t.Run("Ambiguous", func(t *testing.T) {
		m.Ambiguous(resilience.Committed)
		m.Ambiguous(resilience.Committed)
		m.Ambiguous(resilience.Aborted)
		m.Ambiguous(resilience.OutcomeUnknown)
		expect(t, reg, "bento_ambiguous_commits_total", labels{"resolution", "committed"}, 2)
		expect(t, reg, "bento_ambiguous_commits_total", labels{"resolution", "aborted"}, 1)
		expect(t, reg, "bento_ambiguous_commits_total", labels{"resolution", "unknown"}, 1)
	})
	t.Run("UnitDone", func(t *testing.T) {
		m.UnitDone("committed", 1, 100*time.Millisecond, nil)
		m.UnitDone("committed", 3, 300*time.Millisecond, nil)
		m.UnitDone("failed", 2, 50*time.Millisecond, errors.New("x"))
		m.UnitDone("panicked", 1, time.Millisecond, errors.New("panic: y"))
		expect(t, reg, "bento_units_of_work_total", labels{"outcome", "committed"}, 2)
		expect(t, reg, "bento_units_of_work_total", labels{"outcome", "failed"}, 1)
		expect(t, reg, "bento_units_of_work_total", labels{"outcome", "panicked"}, 1)
		expect(t, reg, "bento_units_of_work_total", labels{"outcome", "replayed"}, 0)
		expect(t, reg, "bento_unit_of_work_duration_seconds", labels{"outcome", "committed"}, 2)
		if s := sum(t, reg, "bento_unit_of_work_duration_seconds", labels{"outcome", "committed"}); !near(s, 0.4) {
			t.Errorf("unit duration sum %v, want 0.4", s)
		}
		expect(t, reg, "bento_unit_of_work_attempts", nil, 4)
		if s := sum(t, reg, "bento_unit_of_work_attempts", nil); s != 7 {
			t.Errorf("attempts sum %v, want 7", s)
		}
	})
	t.Run("Batch", func(t *testing.T) {
		m.Batch(5, 3, 1, 1, 20*time.Millisecond)
		m.Batch(0, 0, 0, 0, 10*time.Millisecond) // a failed claim
		expect(t, reg, "bento_outbox_published_total", nil, 3)
		expect(t, reg, "bento_outbox_failed_total", nil, 1)
		expect(t, reg, "bento_outbox_dead_lettered_total", nil, 1)
		expect(t, reg, "bento_outbox_relay_batch_duration_seconds", nil, 2)
		if s := sum(t, reg, "bento_outbox_relay_batch_duration_seconds", nil); !near(s, 0.03) {
			t.Errorf("batch duration sum %v, want 0.03", s)
		}
	})
	t.Run("Publish", func(t *testing.T) {
		m.Publish(5, 4*time.Millisecond)
		m.Publish(1, 60*time.Millisecond)
		expect(t, reg, "bento_outbox_publish_duration_seconds", nil, 2)
		if s := sum(t, reg, "bento_outbox_publish_duration_seconds", nil); !near(s, 0.064) {
			t.Errorf("publish duration sum %v, want 0.064", s)
		}
	})
	t.Run("Published", func(t *testing.T) {
		at := time.Now()
		m.Published(outbox.Message{OccurredAt: at.Add(-2 * time.Second)}, at)
		m.Published(outbox.Message{OccurredAt: at.Add(-500 * time.Millisecond)}, at)
		m.Published(outbox.Message{}, at) // no recording time: not observed
		expect(t, reg, "bento_outbox_commit_to_published_seconds", nil, 2)
		if s := sum(t, reg, "bento_outbox_commit_to_published_seconds", nil); !near(s, 2.5) {
			t.Errorf("commit-to-published sum %v, want 2.5", s)
		}
		// Published does not count: Batch does.
		expect(t, reg, "bento_outbox_published_total", nil, 3)
	})
	t.Run("Routed", func(t *testing.T) {
		m.Routed("replica", "read")
		m.Routed("replica", "read")
		m.Routed("primary", "write")
		m.Routed("primary", "read_your_writes")
		expect(t, reg, "bento_replica_routed_total", labels{"target", "replica", "reason", "read"}, 2)
		expect(t, reg, "bento_replica_routed_total", labels{"target", "primary", "reason", "write"}, 1)
		expect(t, reg, "bento_replica_routed_total", labels{"target", "primary", "reason", "read_your_writes"}, 1)
	})
	t.Run("Fallback", func(t *testing.T) {
		m.Fallback("replica_error")
		expect(t, reg, "bento_replica_fallbacks_total", labels{"reason", "replica_error"}, 1)
	})
	t.Run("ReplicaState", func(t *testing.T) {
		m.ReplicaState("replica-1", true, 1500*time.Millisecond)
		m.ReplicaState("replica-2", false, 0)
		expect(t, reg, "bento_replica_healthy", labels{"replica", "replica-1"}, 1)
		expect(t, reg, "bento_replica_lag_seconds", labels{"replica", "replica-1"}, 1.5)
		expect(t, reg, "bento_replica_healthy", labels{"replica", "replica-2"}, 0)
		m.ReplicaState("replica-1", false, 7*time.Second)
		expect(t, reg, "bento_replica_healthy", labels{"replica", "replica-1"}, 0)
		expect(t, reg, "bento_replica_lag_seconds", labels{"replica", "replica-1"}, 7)
	})
	t.Run("State", func(t *testing.T) {
		expect(t, reg, "bento_drain_state", nil, 0)
		m.State("draining")
		expect(t, reg, "bento_drain_state", nil, 1)
		m.State("something else")
		expect(t, reg, "bento_drain_state", nil, 1)
		m.State("closed")
		expect(t, reg, "bento_drain_state", nil, 2)
	})
	t.Run("Drained", func(t *testing.T) {
		m.Drained(drain.Stats{Took: 3 * time.Second, Rejected: 4})
		expect(t, reg, "bento_drain_duration_seconds", nil, 3)
		expect(t, reg, "bento_drain_rejected", nil, 4)
	})
	assertBoundedLabels(t, reg, "serialize", "reset", "40001")
}

func near(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 }

// The hooks fit the interfaces of the layers they observe.
var (
	_ unitofwork.Observer  = (*metrics.Metrics)(nil)
	_ outbox.RelayObserver = (*metrics.Metrics)(nil)
	_ drain.Observer       = (*metrics.Metrics)(nil)
	_ interface {
		Routed(target, reason string)
		Fallback(reason string)
		ReplicaState(replica string, healthy bool, lag time.Duration)
	} = (*metrics.Metrics)(nil)
	_ func(string, error, int, time.Duration)           = (*metrics.Metrics)(nil).Retry
	_ func(resilience.Outcome)                          = (*metrics.Metrics)(nil).Ambiguous
	_ func(error, int, time.Duration)                   = (*metrics.Metrics)(nil).UnitRetry
	_ func(*driver.Pool)                                = (*metrics.Metrics)(nil).WatchPool
	_ func(*driver.Driver, outbox.Names, time.Duration) = (*metrics.Metrics)(nil).WatchOutbox
)

// TestWatchPool exports a pool's statistics under its role, and more than
// one pool (the primary and its replicas) on one Metrics.
func TestWatchPool(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	db := openSQLite(t)
	m.WatchPool(db.Pool())
	want := float64(db.Config().DB.MaxOpen())
	if db.Pool().Stats().MaxOpen > 0 {
		want = float64(db.Pool().Stats().MaxOpen)
	}
	expect(t, reg, "bento_pool_max_open", labels{"role", "primary"}, want)
	for _, s := range []string{"open", "in_use", "idle"} {
		value(t, reg, "bento_pool_connections", labels{"role", "primary", "state", s})
	}
	for _, n := range []string{"bento_pool_busy", "bento_pool_waits_total", "bento_pool_wait_seconds_total", "bento_pool_timeouts_total"} {
		value(t, reg, n, labels{"role", "primary"})
	}

	// Open reflects database/sql: hold two connections.
	ctx := context.Background()
	raw := db.Pool().DB()
	c1, err := raw.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	c2, err := raw.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if got := value(t, reg, "bento_pool_connections", labels{"role", "primary", "state", "in_use"}); got != 2 {
		t.Errorf("in_use = %v while two connections are held, want 2", got)
	}

	// A second pool (a replica) on the same Metrics.
	other, err := sql.Open("sqlite3", "file:"+filepath.Join(t.TempDir(), "r.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	other.SetMaxOpenConns(3)
	replicaPool := driver.NewPool(driver.PoolConfig{Role: "replica-1", Dialect: "sqlite3", DB: other, MaxOpen: 3})
	func() {
		defer func() {
			if p := recover(); p != nil {
				t.Fatalf("WatchPool of a second pool (role replica-1) panicked: %v", p)
			}
		}()
		m.WatchPool(replicaPool)
	}()
	expect(t, reg, "bento_pool_max_open", labels{"role", "replica-1"}, 3)
	expect(t, reg, "bento_pool_max_open", labels{"role", "primary"}, want)
	// Watching a pool again changes nothing (and the scrape stays valid).
	m.WatchPool(db.Pool())
	if n := len(gather(t, reg)["bento_pool_max_open"].GetMetric()); n != 2 {
		t.Errorf("bento_pool_max_open has %d series after watching the primary twice, want 2", n)
	}
}

// TestWatchOutbox reads the backlog at scrape time: pending events and the
// age of the oldest, then zero after the relay ran (with the relay hooks
// moving), and stats_up 0 when the database cannot be read.
func TestWatchOutbox(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	db := openSQLite(t, bento.WithMiddleware(m.Middleware()))
	m.WatchOutbox(db.Driver(), db.Names(), time.Second)
	ctx := context.Background()
	client := ent.NewClient(ent.Driver(db.Driver()))
	uow := ent.NewUnitOfWork(client, unitofwork.WithObserver(m), unitofwork.Tables(db.Names()))

	expect(t, reg, "bento_outbox_stats_up", nil, 1)
	expect(t, reg, "bento_outbox_pending", nil, 0)
	expect(t, reg, "bento_outbox_oldest_pending_age_seconds", nil, 0)
	expect(t, reg, "bento_outbox_dead_letters", nil, 0)

	for i := range 3 {
		err := uow.Do(ctx, func(ctx context.Context, tx *ent.Client) error {
			o, err := tx.Order.Create().SetCustomer("c@example.com").SetTotalCents(int64(i)).Save(ctx)
			if err != nil {
				return err
			}
			return outbox.Raise(ctx, o, placed{ID: o.ID})
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	expect(t, reg, "bento_units_of_work_total", labels{"outcome", "committed"}, 3)
	expect(t, reg, "bento_unit_of_work_attempts", nil, 3)
	time.Sleep(20 * time.Millisecond)
	expect(t, reg, "bento_outbox_pending", nil, 3)
	if age := value(t, reg, "bento_outbox_oldest_pending_age_seconds", nil); age < 0.02 || age > 60 {
		t.Errorf("oldest pending age %v s, want between 0.02 and 60", age)
	}

	rc := db.RelayConfig()
	rc.Observer = m
	relay, err := db.NewRelay(outbox.LogPublisher{Logger: db.Logger()}, rc)
	if err != nil {
		t.Fatal(err)
	}
	defer relay.Close()
	res, err := relay.RunOnce(ctx)
	if err != nil || res.Published != 3 {
		t.Fatalf("relay: %+v, %v", res, err)
	}
	expect(t, reg, "bento_outbox_pending", nil, 0)
	expect(t, reg, "bento_outbox_oldest_pending_age_seconds", nil, 0)
	expect(t, reg, "bento_outbox_published_total", nil, 3)
	expect(t, reg, "bento_outbox_commit_to_published_seconds", nil, 3)
	if s := sum(t, reg, "bento_outbox_commit_to_published_seconds", nil); s < 0.06 || s > 180 {
		t.Errorf("commit-to-published sum %v s for 3 events >= 20 ms old, want between 0.06 and 180", s)
	}
	batches := value(t, reg, "bento_outbox_relay_batch_duration_seconds", nil)
	if batches < 1 {
		t.Errorf("relay batches observed: %v, want >= 1", batches)
	}
	// One publish per batch that claimed rows, never longer than its batch.
	expect(t, reg, "bento_outbox_publish_duration_seconds", nil, batches)
	if p, b := sum(t, reg, "bento_outbox_publish_duration_seconds", nil), sum(t, reg, "bento_outbox_relay_batch_duration_seconds", nil); p <= 0 || p > b {
		t.Errorf("publish time %v s, want above 0 and at most the batches' %v s", p, b)
	}

	db.Close()
	expect(t, reg, "bento_outbox_stats_up", nil, 0)
	if _, _, ok := find(t, reg, "bento_outbox_pending", nil); ok {
		t.Error("bento_outbox_pending exported although the backlog could not be read")
	}
}

type placed struct {
	ID int `json:"id"`
}

func (placed) EventType() string { return "Placed" }
