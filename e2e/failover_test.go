package e2e

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/bento-go/bento/internal/testnats"
)

// StartStandby creates a streaming standby of primary on a free port
// (pg_basebackup -R as the postgres user) and starts it; it is removed at
// the end of the test.
func StartStandby(t testing.TB, primary *PG) *PG {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "bento-e2e-standby-")
	if err != nil {
		t.Fatal(err)
	}
	sb := &PG{t: t, Port: freePort(t), dir: dir}
	run(t, "chown", "postgres:postgres", dir)
	runAs(t, "postgres", filepath.Join(pgBin(), "pg_basebackup"), "-h", "127.0.0.1", "-p", fmt.Sprint(primary.Port), "-U", "postgres",
		"-D", sb.data(), "-R", "-X", "stream", "--no-sync", "-c", "fast")
	f, err := os.OpenFile(filepath.Join(sb.data(), "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	// The copied configuration is the primary's: the later lines win.
	fmt.Fprintf(f, "\nport = %d\nunix_socket_directories = '%s'\nhot_standby = on\n", sb.Port, dir)
	f.Close()
	sb.Start()
	t.Cleanup(func() {
		sb.ctl("stop", "-m", "immediate")
		os.RemoveAll(dir)
	})
	return sb
}

// waitStreaming waits until primary has a standby streaming to it in
// state sync ("sync") or any state ("").
func waitStreaming(t testing.TB, primary *sql.DB, syncState string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var n int
		err := primary.QueryRow(`SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' AND ($1 = '' OR sync_state = $1)`, syncState).Scan(&n)
		if err == nil && n > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("e2e: no standby streaming (sync_state %q) after 30 s: %v", syncState, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// failoverCounts compares the acknowledged orders of a load with the rows
// of the new primary: lost are acknowledged orders missing there,
// duplicated are customers with more than one order; lostAcks are the
// acknowledgement times of the lost ones.
func failoverCounts(t testing.TB, db *sql.DB, prefix string, res *LoadResult, rec *attemptRecorder) (acked, lost, duplicated int, lostAcks []time.Time) {
	t.Helper()
	rows, err := db.Query(`SELECT customer, count(*) FROM orders WHERE customer LIKE $1 GROUP BY customer`, prefix+"-%")
	if err != nil {
		t.Fatalf("e2e: counting orders on the new primary: %v", err)
	}
	orders := map[string]int{}
	for rows.Next() {
		var c string
		var n int
		if err := rows.Scan(&c, &n); err != nil {
			t.Fatal(err)
		}
		orders[c] = n
		if n > 1 {
			duplicated++
		}
	}
	rows.Close()
	ackAt := map[string]time.Time{}
	for _, a := range rec.Attempts() {
		if a.Status/100 == 2 {
			ackAt[a.Customer] = a.End
		}
	}
	res.mu.Lock()
	defer res.mu.Unlock()
	for _, r := range res.Results {
		if r.Class != Acked {
			continue
		}
		acked++
		if orders[r.Customer] == 0 {
			lost++
			lostAcks = append(lostAcks, ackAt[r.Customer])
		}
	}
	sort.Slice(lostAcks, func(i, j int) bool { return lostAcks[i].Before(lostAcks[j]) })
	return acked, lost, duplicated, lostAcks
}

// streamAgainstOutbox checks the stream against the new primary's outbox
// with requireStreamExactlyOnce, leaving out the messages that match no
// outbox row, which it counts: events of transactions that were visible on
// the old primary (its relay published them) but not replicated when it
// died.
func streamAgainstOutbox(t testing.TB, rows map[string]outboxRow, msgs []streamMsg) (orphans int) {
	t.Helper()
	known := make([]streamMsg, 0, len(msgs))
	for _, m := range msgs {
		if _, ok := rows[m.ID]; !ok {
			orphans++
			continue
		}
		known = append(known, m)
	}
	requireStreamExactlyOnce(t, rows, known)
	return orphans
}

// testFailover runs bento serve against a primary and its streaming
// standby through a multi-host DB_URL with
// target_session_attrs=read-write, places orders with idempotency keys,
// kills the primary (pg_ctl stop -m immediate), promotes the standby
// (pg_ctl promote) and goes on placing orders. With synchronous
// replication (synchronous_standby_names='*', synchronous_commit=on):
// no acknowledged order lost, none duplicated, every outbox event of the
// new primary in the stream once and in order. Asynchronous: the same
// counts are reported, lost orders included (the database itself may lose
// a commit it acknowledged before replicating it), duplicates still fail.
//
// Figures: promote_took is pg_ctl promote's duration; outage runs from the
// kill to the first order acknowledged by an attempt that started after
// the old primary had exited; max_ack_gap is the longest time without any acknowledgement around
// the failover; loss_window is how long before the kill the earliest lost
// order was acknowledged.
func testFailover(t *testing.T, synchronous bool) {
	fault := "pg-failover-async"
	if synchronous {
		fault = "pg-failover-sync"
	}
	primary := StartPG(t)
	primary.CreateDB("failover")
	standby := StartStandby(t, primary)
	admin := primary.DB("postgres")
	if synchronous {
		for _, q := range []string{`ALTER SYSTEM SET synchronous_standby_names = '*'`, `ALTER SYSTEM SET synchronous_commit = 'on'`, `SELECT pg_reload_conf()`} {
			if _, err := admin.Exec(q); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
		}
		waitStreaming(t, admin, "sync")
	} else {
		waitStreaming(t, admin, "async")
	}
	nats := testnats.Start(t)
	stream, subject := natsNames("failover")
	url := fmt.Sprintf("postgres://postgres@127.0.0.1:%d,127.0.0.1:%d/failover?sslmode=disable&target_session_attrs=read-write", primary.Port, standby.Port)
	app := "e2e-" + fault
	svc := Serve(t, []string{"DB_URL=" + url, "OUTBOX_RETENTION=1h", "DB_APPLICATION_NAME=" + app, "DB_CONNECT_TIMEOUT=2s",
		"OUTBOX_PUBLISHER=nats", "OUTBOX_NATS_URL=" + nats.URL(), "OUTBOX_STREAM=" + stream, "OUTBOX_SUBJECT_PREFIX=" + subject})

	ctx, cancel := context.WithCancel(context.Background())
	type out struct {
		res *LoadResult
		rec *attemptRecorder
	}
	done := make(chan out)
	go func() {
		res, rec := runRecorded(ctx, Load{URL: svc.URL(), Workers: 8, Retries: 3, Prefix: "failover"})
		done <- out{res, rec}
	}()
	time.Sleep(dur(3*time.Second, 10*time.Second))
	killedAt := time.Now()
	primary.Stop("immediate")
	gone := time.Now() // pg_ctl returned: the server has exited
	killTook := gone.Sub(killedAt)
	if err := standby.ctl("promote", "-w", "-t", "60"); err != nil {
		cancel()
		<-done
		t.Fatal(err)
	}
	promotedAt := time.Now()
	time.Sleep(dur(5*time.Second, 20*time.Second))
	cancel()
	o := <-done
	res := o.res
	summary(t, fault, res)
	m := scrapeMetrics(t, svc.URL())
	newPrimary := standby.DB("failover")

	acked, lost, duplicated, lostAcks := failoverCounts(t, newPrimary, "failover", res, o.rec)
	if duplicated != 0 {
		t.Errorf("INVARIANT: %d customers have more than one order on the new primary", duplicated)
	}
	if synchronous {
		if lost != 0 {
			t.Errorf("INVARIANT: %d acknowledged orders are missing on the new primary (synchronous replication)", lost)
		}
		Invariants(t, newPrimary, "postgres", "failover", res)
	}
	requireClassified(t, res)
	// The promotion takes well under DB_RETRY_MAX_ELAPSED: the service's
	// retries hide it (docs/reliability.md).
	requireCallerSawNothing(t, res)
	acks := ackTimes(o.rec.Attempts())
	var before int
	for _, a := range acks {
		if a.Before(killedAt) {
			before++
		}
	}
	if before == 0 {
		t.Fatal("no order was acknowledged before the failover")
	}
	var firstAfter time.Time
	for _, a := range o.rec.Attempts() {
		if a.Status/100 == 2 && a.Start.After(gone) && (firstAfter.IsZero() || a.End.Before(firstAfter)) {
			firstAfter = a.End
		}
	}
	if firstAfter.IsZero() {
		t.Fatalf("no order was acknowledged after the failover\n%s", tail(svc.Output(), 3000))
	}
	var window time.Duration
	if len(lostAcks) > 0 {
		window = killedAt.Sub(lostAcks[0])
	}

	// The relay, on its own connection, found the new primary too.
	pending, catchup := settleToZero(60*time.Second, func() int { return outboxPending(t, newPrimary, "failover") })
	if pending != 0 {
		t.Errorf("the relay left %d OrderPlaced events unpublished on the new primary", pending)
	}
	// The NOTIFY listener, on a connection of its own, is LISTENing on the
	// new primary.
	listening, listenAfter := settleToZero(15*time.Second, func() int {
		var n int
		if err := standby.DB("postgres").QueryRow(`SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND query ILIKE 'LISTEN%'`, app).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return 1 - min(n, 1)
	})
	if listening != 0 {
		t.Errorf("no session of %s LISTENs on the new primary 15 s after the load: the NOTIFY listener did not reconnect", app)
	}
	rows := outboxRows(t, newPrimary)
	msgs := readEventStream(t, nats.URL(), stream)
	orphans := streamAgainstOutbox(t, rows, msgs)

	logFigure(t, fault, append([]any{"synchronous", synchronous, "kill_took", killTook, "promote_took", promotedAt.Sub(killedAt) - killTook,
		"outage", firstAfter.Sub(killedAt), "max_ack_gap", maxGap(acks, killedAt.Add(-time.Second), promotedAt.Add(2*time.Second)),
		"acked", acked, "acked_before_kill", before, "lost_acked", lost, "duplicated", duplicated, "loss_window", window,
		"outbox_events", len(rows), "stream_messages", len(msgs), "stream_orphans", orphans,
		"relay_caught_up_after_load", catchup, "listener_found_after_load", listenAfter}, append(retryKV(m), loadKV(res)...)...)...)
	logErrors(t, fault, res)
}

// TestPostgresFailoverSync: failover to a synchronous standby; nothing
// acknowledged is lost.
func TestPostgresFailoverSync(t *testing.T) { testFailover(t, true) }

// TestPostgresFailoverAsync: failover to an asynchronous standby; the
// counts are reported, lost acknowledged orders included, and no order may
// be duplicated.
func TestPostgresFailoverAsync(t *testing.T) { testFailover(t, false) }
