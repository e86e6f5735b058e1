package replica_test

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bento-go/bento"
	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/driver"
	"github.com/bento-go/bento/ent"
	"github.com/bento-go/bento/ent/migrate"
	"github.com/bento-go/bento/ent/order"
	"github.com/bento-go/bento/internal/testdb"
	"github.com/bento-go/bento/replica"
	"github.com/bento-go/bento/resilience"
	"github.com/bento-go/bento/shop"
)

// The replica tests use the streaming replica that scripts/replica.sh runs
// on 127.0.0.1:5433 (BENTO_REPLICA_PORT) of the local PostgreSQL, and
// its data directory (BENTO_REPLICA_DIR) to stop and start it.

func replicaPort() string {
	if p := os.Getenv("BENTO_REPLICA_PORT"); p != "" {
		return p
	}
	return "5433"
}

func replicaDir() string {
	if d := os.Getenv("BENTO_REPLICA_DIR"); d != "" {
		return d
	}
	return "/var/lib/postgresql/bento-replica"
}

// setup returns a config whose DB_URL is a fresh PostgreSQL database and
// whose DB_REPLICA_URLS is the same database on the replica, once the
// replica has it.
func setup(t *testing.T) (config.Config, *sql.DB) {
	t.Helper()
	cfg := testdb.Config(t, testdb.Postgres)
	u := cfg.DB.URL.Server()
	u.Host = "127.0.0.1:" + replicaPort()
	raw := u.String()
	rep, err := sql.Open("pgx", raw)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rep.Close() })
	deadline := time.Now().Add(15 * time.Second)
	for {
		var rec bool
		err := rep.QueryRow("SELECT pg_is_in_recovery()").Scan(&rec)
		if err == nil && rec {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the streaming replica on port %s does not serve the test database (%v, in recovery %t); run scripts/replica.sh", replicaPort(), err, rec)
		}
		time.Sleep(100 * time.Millisecond)
	}
	ru, err := config.ParseURL(raw)
	if err != nil {
		t.Fatal(err)
	}
	cfg.DB.ReplicaURLs = []config.URL{ru}
	cfg.DB.ReplicaCheckInterval = 100 * time.Millisecond
	cfg.DB.ReplicaMaxLag = 500 * time.Millisecond
	cfg.DB.ReplicaPoolSize, cfg.DB.ReplicaMaxOverflow = -1, -1
	return cfg, rep
}

func open(t *testing.T, cfg config.Config) (*bento.DB, *ent.Client) {
	t.Helper()
	db, err := bento.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := db.Migrate(context.Background(), migrate.Tables...); err != nil {
		t.Fatal(err)
	}
	waitHealthy(t, db)
	return db, ent.NewClient(ent.Driver(db.Driver()))
}

func waitHealthy(t *testing.T, db *bento.DB) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		db.Replicas().CheckNow(context.Background())
		st := db.Replicas().States()[0]
		if st.Healthy {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("replica never became healthy: %+v", st)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// inRecovery runs pg_is_in_recovery() through the driver, as a read
// outside a transaction, and reports where it ran.
func inRecovery(ctx context.Context, d *driver.Driver) (bool, error) {
	rows, err := d.QueryContext(ctx, "SELECT pg_is_in_recovery()")
	if err != nil {
		return false, err
	}
	defer rows.Close()
	var rec bool
	if rows.Next() {
		err = rows.Scan(&rec)
	}
	if err == nil {
		err = rows.Err()
	}
	return rec, err
}

func TestRouting(t *testing.T) {
	cfg, _ := setup(t)
	db, client := open(t, cfg)
	ctx := context.Background()

	// Reads outside a transaction land on the replica.
	for i := 0; i < 20; i++ {
		rec, err := inRecovery(ctx, db.Driver())
		if err != nil || !rec {
			t.Fatalf("read %d: in recovery = %t, %v; want the replica", i, rec, err)
		}
	}
	// Forced reads, transactions and writes go to the primary.
	if rec, err := inRecovery(replica.UsePrimary(ctx), db.Driver()); err != nil || rec {
		t.Fatalf("UsePrimary read: in recovery = %t, %v", rec, err)
	}
	tx, err := db.Driver().BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := tx.(*driver.Tx).QueryContext(ctx, "SELECT pg_is_in_recovery()")
	if err != nil {
		t.Fatal(err)
	}
	var rec bool
	rows.Next()
	rows.Scan(&rec)
	rows.Close()
	tx.Rollback()
	if rec {
		t.Fatal("a transaction ran on the replica")
	}
	// INSERT … RETURNING (ent sends it through Query) goes to the primary:
	// it would fail on a read-only replica.
	o, err := client.Order.Create().SetCustomer("w@example.com").SetTotalCents(1).Save(ctx)
	if err != nil {
		t.Fatalf("write routed wrongly: %v", err)
	}
	// SELECT … FOR UPDATE outside a transaction goes to the primary too.
	if _, err := db.Driver().QueryContext(ctx, "SELECT id FROM orders WHERE id = $1 FOR UPDATE", o.ID); err != nil {
		t.Fatalf("FOR UPDATE routed to the replica: %v", err)
	}
}

// TestReplicaStopsMidLoad: invariant — while the replica is stopped under a
// read load, reads fall back to the primary. A read whose result the
// server was already sending when it terminated the connection cannot be
// run again by the router (the first row has been handed over); it fails
// with a retryable connection error. So: at most one failure per reader
// (the read in flight at the stop), each a retryable connection error,
// and after the stop no read reaches the replica.
func TestReplicaStopsMidLoad(t *testing.T) {
	cfg, _ := setup(t)
	db, client := open(t, cfg)
	ctx := context.Background()
	seed := client.Order.Create().SetCustomer("seed@example.com").SetTotalCents(1).SaveX(ctx)
	waitReplayed(t, client, seed.ID)

	var reads, failures, onReplica atomic.Int64
	var errMu sync.Mutex
	var errs []error
	stop := make(chan struct{})
	var wg sync.WaitGroup
	const readers = 4
	for w := 0; w < readers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				fail := func(err error) {
					failures.Add(1)
					errMu.Lock()
					errs = append(errs, err)
					errMu.Unlock()
				}
				if _, err := client.Order.Get(ctx, seed.ID); err != nil {
					fail(err)
				}
				if rec, err := inRecovery(ctx, db.Driver()); err == nil && rec {
					onReplica.Add(1)
				} else if err != nil {
					fail(err)
				}
				reads.Add(2)
			}
		}()
	}
	time.Sleep(500 * time.Millisecond)
	pgctl(t, "stop", "-m", "fast")
	t.Cleanup(func() { startReplica(t) })
	time.Sleep(1500 * time.Millisecond)
	before := onReplica.Load()
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()
	if n := failures.Load(); n > readers {
		t.Fatalf("%d of %d reads failed while the replica stopped (at most %d, one in flight per reader, may); first: %s", n, reads.Load(), readers, errs[0])
	}
	for _, err := range errs {
		if c := resilience.Classify(err); c != resilience.Connection || !resilience.IsRetryable(err) {
			t.Fatalf("a read failed with %v (class %s), not a retryable connection error", err, c)
		}
	}
	if onReplica.Load() != before {
		t.Fatalf("reads still reached a stopped replica")
	}
	if db.Replicas().States()[0].Healthy {
		t.Fatal("the stopped replica is still in rotation")
	}
	t.Logf("%d reads, %d on the replica before it stopped, %d failed in flight", reads.Load(), before, failures.Load())
	startReplica(t)
	waitHealthy(t, db)
}

// TestPausedReplicaTakenOut: a replica whose replay is paused while the
// primary writes falls behind; past the lag limit it leaves the rotation.
// Read-your-writes: meanwhile 1,000 commit-then-read rounds in a session
// always see their own commit.
func TestPausedReplicaTakenOut(t *testing.T) {
	cfg, rep := setup(t)
	db, client := open(t, cfg)
	ctx := context.Background()
	if _, err := rep.Exec("SELECT pg_wal_replay_pause()"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rep.Exec("SELECT pg_wal_replay_resume()") })

	// Keep the primary writing so the replica falls behind.
	stopWrites := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stopWrites:
				return
			case <-time.After(20 * time.Millisecond):
				client.Order.Create().SetCustomer("tick@example.com").SetTotalCents(1).Save(ctx)
			}
		}
	}()
	defer func() { close(stopWrites); wg.Wait() }()

	deadline := time.Now().Add(15 * time.Second)
	for db.Replicas().States()[0].Healthy {
		if time.Now().After(deadline) {
			t.Fatalf("paused replica still in rotation: %+v", db.Replicas().States()[0])
		}
		time.Sleep(50 * time.Millisecond)
	}
	st := db.Replicas().States()[0]
	if !strings.Contains(st.Reason, "lag") {
		t.Fatalf("replica out for %q, want the lag limit", st.Reason)
	}
	t.Logf("taken out: %s", st.Reason)

	// Read-your-writes while the replica is paused: the replica is out of
	// rotation now, so force it back in to test RYW against a stale
	// replica: a router whose lag limit is huge.
	cfg2 := cfg
	cfg2.DB.ReplicaMaxLag = time.Hour
	db2, err := bento.Open(cfg2)
	if err != nil {
		t.Fatal(err)
	}
	defer db2.Close()
	waitHealthy(t, db2)
	client2 := ent.NewClient(ent.Driver(db2.Driver()))
	svc := shop.NewService(ent.NewUnitOfWork(client2), client2)
	stale := 0
	for i := 0; i < 1000; i++ {
		sctx := replica.WithSession(ctx)
		o, err := svc.Place(sctx, shop.PlaceOrder{Customer: fmt.Sprintf("ryw%d@example.com", i), Lines: []shop.Line{{SKU: "S", Quantity: 1, UnitPriceCents: 1}}}, "")
		if err != nil {
			t.Fatal(err)
		}
		got, err := svc.Get(sctx, o.ID)
		if err != nil || got.ID != o.ID {
			t.Fatalf("round %d: read-your-writes missed order %d: %v", i, o.ID, err)
		}
		// Without a session the read goes to the paused replica: stale.
		if _, err := client2.Order.Query().Where(order.ID(o.ID)).Only(ctx); err != nil {
			stale++
		}
	}
	if stale == 0 {
		t.Fatal("reads without a session never went to the paused replica: the test did not exercise read-your-writes")
	}
	t.Logf("1000 of 1000 session reads saw their commit; %d reads outside a session were stale", stale)
}

func waitReplayed(t *testing.T, client *ent.Client, id int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := client.Order.Get(context.Background(), id); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("order %d never reached the replica", id)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func pgctl(t *testing.T, args ...string) {
	t.Helper()
	bin := pgCtl()
	full := append([]string{"-u", "postgres", "--", bin, "-D", replicaDir()}, args...)
	out, err := exec.Command("runuser", full...).CombinedOutput()
	if err != nil {
		t.Fatalf("pg_ctl %v: %v\n%s", args, err, out)
	}
}

func startReplica(t *testing.T) {
	t.Helper()
	out, _ := exec.Command("runuser", "-u", "postgres", "--", pgCtl(), "-D", replicaDir(), "status").CombinedOutput()
	if strings.Contains(string(out), "server is running") {
		return
	}
	pgctl(t, "-l", replicaDir()+"/replica.log", "-w", "-t", "60", "start")
}

// pgCtl is PostgreSQL's pg_ctl (PGBIN, or the newest installed version).
func pgCtl() string {
	if b := os.Getenv("PGBIN"); b != "" {
		return filepath.Join(b, "pg_ctl")
	}
	if m, _ := filepath.Glob("/usr/lib/postgresql/*/bin/pg_ctl"); len(m) > 0 {
		return m[len(m)-1]
	}
	return "pg_ctl"
}
