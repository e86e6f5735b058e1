package outbox_test

import (
	"context"
	"database/sql"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bento-go/bento"
	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/ent"
	"github.com/bento-go/bento/internal/testdb"
	"github.com/bento-go/bento/outbox"
)

// routed records, from DB_ECHO's statement lines, the statements a
// replica ran.
type routed struct {
	mu      sync.Mutex
	replica []string
}

func (r *routed) Enabled(context.Context, slog.Level) bool { return true }
func (r *routed) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *routed) WithGroup(string) slog.Handler            { return r }
func (r *routed) Handle(_ context.Context, rec slog.Record) error {
	var pool, query string
	rec.Attrs(func(a slog.Attr) bool {
		switch a.Key {
		case "pool":
			pool = a.Value.String()
		case "query":
			query = a.Value.String()
		}
		return true
	})
	if strings.HasPrefix(pool, "replica") {
		r.mu.Lock()
		r.replica = append(r.replica, query)
		r.mu.Unlock()
	}
	return nil
}

func (r *routed) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	q := r.replica
	r.replica = nil
	return q
}

// TestOutboxStatementsOnPrimary: invariant — with DB_REPLICA_URLS set,
// every statement of the outbox (the relay's claim and marks, NOTIFY,
// stats, requeue, retention) runs on the primary. A replica cannot run
// NOTIFY (25006) and may be behind, so a routed wake-up or claim would
// fail or see the past. A plain read outside a transaction, by contrast,
// goes to the replica: the check sees routing when there is some.
func TestOutboxStatementsOnPrimary(t *testing.T) {
	cfg := testdb.Config(t, testdb.Postgres)
	u := cfg.DB.URL.Server()
	port := os.Getenv("BENTO_REPLICA_PORT")
	if port == "" {
		port = "5433"
	}
	u.Host = "127.0.0.1:" + port
	rep, err := sql.Open("pgx", u.String())
	if err != nil {
		t.Fatal(err)
	}
	defer rep.Close()
	var recErr error
	if !waitUntil(15*time.Second, func() bool {
		var rec bool
		recErr = rep.QueryRow("SELECT pg_is_in_recovery()").Scan(&rec)
		return recErr == nil && rec
	}) {
		t.Fatalf("the streaming replica on port %s does not serve the test database (%v); run scripts/replica.sh", port, recErr)
	}
	ru, err := config.ParseURL(u.String())
	if err != nil {
		t.Fatal(err)
	}
	cfg.DB.ReplicaURLs = []config.URL{ru}
	cfg.DB.ReplicaCheckInterval = 100 * time.Millisecond
	cfg.DB.ReplicaPoolSize, cfg.DB.ReplicaMaxOverflow = -1, -1
	cfg.DB.Echo = true
	h := &routed{}
	db, err := bento.Open(cfg, bento.WithLogger(slog.New(h)))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	if err := db.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	if !waitUntil(15*time.Second, func() bool {
		db.Replicas().CheckNow(ctx)
		st := db.Replicas().States()
		return len(st) == 1 && st[0].Healthy
	}) {
		t.Fatalf("the replica never became healthy: %+v", db.Replicas().States())
	}
	h.take()

	// Control: a read outside a transaction is routed to the replica.
	rows, err := db.Driver().QueryContext(ctx, "SELECT 1")
	if err != nil {
		t.Fatal(err)
	}
	rows.Close()
	if len(h.take()) == 0 {
		t.Fatal("a plain read was not routed to the replica: the check below could not see routing")
	}

	// The outbox's own work: events, NOTIFY, LISTEN, the relay, stats,
	// requeue, retention.
	listenCtx, stop := context.WithCancel(ctx)
	defer stop()
	listen, err := db.Listen(listenCtx)
	if err != nil {
		t.Fatal(err)
	}
	go db.RunNotify(listenCtx)
	time.Sleep(200 * time.Millisecond) // the listener connects
	uow := ent.NewUnitOfWork(ent.NewClient(ent.Driver(db.Driver())))
	if err := uow.Do(ctx, func(ctx context.Context, _ *ent.Client) error {
		return outbox.Record(ctx, "Account", "A1", stepped{1}, stepped{2})
	}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-listen:
	case <-time.After(10 * time.Second):
		t.Fatal("no NOTIFY arrived: the wake-up did not reach the primary")
	}
	ch := outbox.NewChannelPublisher(10)
	relay := newRelay(t, db, ch, func(c *outbox.RelayConfig) { c.Retention = time.Nanosecond })
	if res, err := relay.RunOnce(ctx); err != nil || res.Published != 2 {
		t.Fatalf("RunOnce = %+v, %v; want 2 published", res, err)
	}
	if _, err := relay.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := outbox.ReadStats(ctx, db.Driver(), db.Names()); err != nil {
		t.Fatal(err)
	}
	if _, err := outbox.Requeue(ctx, db.Driver(), db.Names()); err != nil {
		t.Fatal(err)
	}
	stop()
	if q := h.take(); len(q) > 0 {
		t.Fatalf("%d outbox statements ran on the replica, first: %s", len(q), q[0])
	}
}
