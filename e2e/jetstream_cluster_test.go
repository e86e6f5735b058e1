package e2e

import (
	"context"
	"database/sql"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/bento-go/bento/internal/testdb"
	"github.com/bento-go/bento/internal/testnats"
)

// streamLeader returns the server name of stream's leader ("" while it
// has none).
func streamLeader(t testing.TB, js jetstream.JetStream, stream string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return ""
	}
	info, err := s.Info(ctx)
	if err != nil || info.Cluster == nil {
		return ""
	}
	return info.Cluster.Leader
}

// streamCurrent reports whether node leads stream or is one of its
// replicas and current.
func streamCurrent(t testing.TB, js jetstream.JetStream, stream, node string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return false
	}
	info, err := s.Info(ctx)
	if err != nil || info.Cluster == nil {
		return false
	}
	if info.Cluster.Leader == node {
		return true
	}
	for _, r := range info.Cluster.Replicas {
		if r.Name == node && r.Current && !r.Offline {
			return true
		}
	}
	return false
}

// TestJetStreamClusterLeaderKilled: bento serve publishes to a stream of
// three replicas (OUTBOX_STREAM_REPLICAS=3) on a three-node JetStream
// cluster given as OUTBOX_NATS_URL=<three URLs>; under a steady load of
// orders the stream leader's server is killed with SIGKILL and, some
// seconds later, started again. Invariants: every outbox event is in the
// stream exactly once (by Nats-Msg-Id) and in sequence order per
// aggregate; nothing is dead-lettered or left pending; and the outage
// spends no publish attempt (the relay takes a lost leader for an
// unavailable broker): every event's attempts stay 0.
func TestJetStreamClusterLeaderKilled(t *testing.T) {
	const fault = "jetstream-leader-killed"
	cl := testnats.StartCluster(t, 3)
	url := testdb.URL(t, testdb.Postgres)
	db := testdb.OpenRaw(t, url)
	stream, subject := natsNames("cluster")
	app := uniqueName(t, "e2e-jscluster")
	env := []string{"DB_URL=" + url, "OUTBOX_RETENTION=1h", "DB_APPLICATION_NAME=" + app, "OUTBOX_PUBLISHER=nats",
		"OUTBOX_NATS_URL=" + cl.URLs(), "OUTBOX_STREAM=" + stream, "OUTBOX_SUBJECT_PREFIX=" + subject,
		"OUTBOX_STREAM_REPLICAS=3"}
	svc := Serve(t, env)

	nc, err := nats.Connect(cl.URLs(), nats.MaxReconnects(-1))
	if err != nil {
		t.Fatalf("connecting to the cluster: %v", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx0, cancel0 := context.WithTimeout(context.Background(), 10*time.Second)
	s, err := js.Stream(ctx0, stream)
	if err != nil {
		cancel0()
		t.Fatalf("bento serve did not create the stream %s: %v", stream, err)
	}
	info, err := s.Info(ctx0)
	cancel0()
	if err != nil {
		t.Fatal(err)
	}
	if info.Config.Replicas != 3 || info.Cluster == nil || len(info.Cluster.Replicas) != 2 {
		t.Fatalf("stream %s: %d replicas configured, cluster %+v; want 3 (a leader and 2 followers)", stream, info.Config.Replicas, info.Cluster)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan *LoadResult)
	go func() { done <- Load{URL: svc.URL(), Workers: 8, Retries: 3, Prefix: "jscluster"}.Run(ctx) }()
	time.Sleep(dur(3*time.Second, 10*time.Second))

	leader := streamLeader(t, js, stream)
	node := cl.Node(leader)
	if node == nil {
		cancel()
		<-done
		t.Fatalf("stream %s has leader %q, which is none of the cluster's nodes", stream, leader)
	}
	publishedBefore := publishedCount(t, db)
	killedAt := time.Now()
	node.Kill()
	// A new leader among the two survivors, and the relay publishing to
	// it (a row marked published after the kill).
	var newLeader string
	var elected, resumed time.Duration
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline) && (newLeader == "" || resumed == 0); time.Sleep(50 * time.Millisecond) {
		if l := streamLeader(t, js, stream); newLeader == "" && l != "" && l != leader {
			newLeader, elected = l, time.Since(killedAt)
		}
		if resumed == 0 && newLeader != "" && publishedCount(t, db) > publishedBefore {
			resumed = time.Since(killedAt)
		}
	}
	if newLeader == "" {
		t.Errorf("no new stream leader 20 s after %s was killed", leader)
	}
	time.Sleep(dur(4*time.Second, 20*time.Second))
	publishedWhileDown := publishedCount(t, db) - publishedBefore
	node.Start()
	restartedAt := time.Now()
	time.Sleep(dur(3*time.Second, 10*time.Second))
	cancel()
	res := <-done
	loadEnd := time.Now()
	summary(t, fault, res)

	Invariants(t, db, "postgres", "jscluster", res)
	requireClassified(t, res)
	requireCallerSawNothing(t, res)
	if publishedWhileDown == 0 {
		t.Errorf("no event was published while %s was down: the relay did not move to the new leader %s", leader, newLeader)
	}
	var pendingAtEnd int64
	caughtUp := false
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		m := scrapeMetrics(t, svc.URL())
		pendingAtEnd = m.sum("bento_outbox_pending")
		if pendingAtEnd == 0 && m.sum("bento_outbox_stats_up") == 1 {
			caughtUp = true
			break
		}
	}
	drained := time.Since(loadEnd)
	if !caughtUp {
		t.Fatalf("the outbox still has %d pending events 60 s after the load ended", pendingAtEnd)
	}
	m := scrapeMetrics(t, svc.URL())
	var dead, attempted, maxAttempts int
	if err := db.QueryRow(`SELECT count(*) FILTER (WHERE status = 'dead'), count(*) FILTER (WHERE attempts > 0), COALESCE(max(attempts), 0)
		FROM bento_outbox`).Scan(&dead, &attempted, &maxAttempts); err != nil {
		t.Fatal(err)
	}
	if dead != 0 {
		t.Errorf("ATTEMPTS: %d events dead-lettered", dead)
	}
	if attempted != 0 {
		t.Errorf("ATTEMPTS: %d events spent publish attempts (up to %d) on the lost leader; the outage must spend none", attempted, maxAttempts)
	}
	rows := outboxRows(t, db)
	msgs := readEventStream(t, cl.URLs(), stream)
	placed := requireStreamExactlyOnce(t, rows, msgs)
	if acked := res.Count()[Acked]; placed < acked {
		t.Errorf("%d OrderPlaced events for %d acknowledged orders", placed, acked)
	}
	// The restarted server is a current replica again.
	var rejoined time.Duration
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if streamCurrent(t, js, stream, leader) {
			rejoined = time.Since(restartedAt)
			break
		}
	}
	if rejoined == 0 {
		t.Errorf("%s, restarted, is not a current replica of %s 30 s later", leader, stream)
	}
	final := streamLeader(t, js, stream)
	logFigure(t, fault, append([]any{"nodes", len(cl.Nodes), "replicas", 3, "killed_leader", leader, "new_leader", newLeader,
		"leader_elected_after", elected, "publishing_resumed_after", resumed, "restarted_node_current_after", rejoined, "down", restartedAt.Sub(killedAt), "published_while_down", publishedWhileDown,
		"final_leader", final, "outbox_events", len(rows), "stream_messages", len(msgs), "dead_letters", dead,
		"events_with_attempts", attempted, "failed_publishes", m.sum("bento_outbox_failed_total"),
		"caught_up_after_load", drained}, loadKV(res)...)...)
	logErrors(t, fault, res)
}

// publishedCount counts the outbox events marked published (the test's
// database holds only the run's).
func publishedCount(t testing.TB, db *sql.DB) int {
	t.Helper()
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM bento_outbox WHERE status = 'published'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}
