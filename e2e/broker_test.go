package e2e

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/bento-go/bento/internal/testdb"
	"github.com/bento-go/bento/internal/testnats"
	"github.com/bento-go/bento/outbox/natspub"
)

// streamMsg is one message of the outbox stream, by its headers.
type streamMsg struct {
	ID            string // Nats-Msg-Id: the event id
	AggregateType string
	AggregateID   string
	Sequence      int64
	Type          string
}

// readEventStream reads every message of stream on the NATS server at url,
// each once, in stream order (testnats.ReadStream).
func readEventStream(t testing.TB, url, stream string) []streamMsg {
	t.Helper()
	nc, err := nats.Connect(url, nats.Timeout(10*time.Second))
	if err != nil {
		t.Fatalf("e2e: connecting to NATS %s: %v", url, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	msgs := testnats.ReadStream(ctx, t, js, stream)
	out := make([]streamMsg, 0, len(msgs))
	for _, m := range msgs {
		seq, err := strconv.ParseInt(m.Header.Get(natspub.HeaderSequence), 10, 64)
		if err != nil {
			t.Fatalf("e2e: message on %s without a sequence: %v", m.Subject, err)
		}
		out = append(out, streamMsg{ID: m.Header.Get(jetstream.MsgIDHeader), AggregateType: m.Header.Get(natspub.HeaderAggregateType),
			AggregateID: m.Header.Get(natspub.HeaderAggregateID), Sequence: seq, Type: m.Header.Get(natspub.HeaderEventType)})
	}
	return out
}

// publishCounter counts every message published on subjects (core NATS
// delivers each publish to a subscriber, also those the stream then drops
// as duplicates of an event id it already holds).
type publishCounter struct {
	nc  *nats.Conn
	sub *nats.Subscription
	mu  chan struct{}
	ids map[string]int
}

func countPublishes(t testing.TB, url, subjects string) *publishCounter {
	t.Helper()
	nc, err := nats.Connect(url, nats.Timeout(10*time.Second))
	if err != nil {
		t.Fatalf("e2e: connecting to NATS %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	c := &publishCounter{nc: nc, mu: make(chan struct{}, 1), ids: map[string]int{}}
	c.sub, err = nc.Subscribe(subjects, func(m *nats.Msg) {
		c.mu <- struct{}{}
		c.ids[m.Header.Get(jetstream.MsgIDHeader)]++
		<-c.mu
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = c.sub.SetPendingLimits(-1, -1)
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return c
}

// counts returns the publishes seen, the distinct event ids, and the
// messages the subscription dropped (the figures are exact when 0).
func (c *publishCounter) counts(t testing.TB) (publishes, distinct, dropped int) {
	t.Helper()
	if err := c.nc.FlushTimeout(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	c.mu <- struct{}{}
	defer func() { <-c.mu }()
	for _, n := range c.ids {
		publishes += n
	}
	d, _ := c.sub.Dropped()
	return publishes, len(c.ids), d
}

// outboxRow is one event of the outbox table.
type outboxRow struct {
	ID, AggregateType, AggregateID, Type, Status string
	Sequence                                     int64
}

// outboxRows returns every row of the (test's own) outbox table.
func outboxRows(t testing.TB, db *sql.DB) map[string]outboxRow {
	t.Helper()
	rows, err := db.Query(`SELECT id::text, aggregatetype, aggregateid, type, status, sequence FROM bento_outbox`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]outboxRow{}
	for rows.Next() {
		var r outboxRow
		if err := rows.Scan(&r.ID, &r.AggregateType, &r.AggregateID, &r.Type, &r.Status, &r.Sequence); err != nil {
			t.Fatal(err)
		}
		out[r.ID] = r
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// requireStreamExactlyOnce checks that every outbox event is in the stream
// exactly once (by event id), nothing else is, and each aggregate's events
// are in sequence order. It returns the number of OrderPlaced events.
func requireStreamExactlyOnce(t testing.TB, rows map[string]outboxRow, msgs []streamMsg) int {
	t.Helper()
	seen := map[string]int{}
	for _, m := range msgs {
		seen[m.ID]++
	}
	var missing, dups, unknown, placed, unpublished int
	for id, r := range rows {
		if r.Type == "OrderPlaced" {
			placed++
		}
		if r.Status != "published" {
			unpublished++
		}
		switch n := seen[id]; {
		case n == 0:
			missing++
			if missing <= 3 {
				t.Errorf("STREAM: event %s (%s %s/%s #%d, %s) is not in the stream", id, r.Type, r.AggregateType, r.AggregateID, r.Sequence, r.Status)
			}
		case n > 1:
			dups++
			if dups <= 3 {
				t.Errorf("STREAM: event %s is in the stream %d times", id, n)
			}
		}
	}
	for id := range seen {
		if _, ok := rows[id]; !ok {
			unknown++
			if unknown <= 3 {
				t.Errorf("STREAM: message %s matches no outbox event", id)
			}
		}
	}
	if missing+dups+unknown > 0 || len(msgs) != len(rows) {
		t.Errorf("STREAM: %d outbox events, %d messages: %d missing, %d more than once, %d unknown", len(rows), len(msgs), missing, dups, unknown)
	}
	if unpublished > 0 {
		t.Errorf("OUTBOX: %d events are not marked published", unpublished)
	}
	last := map[string]int64{}
	bad := 0
	for i, m := range msgs {
		k := m.AggregateType + "/" + m.AggregateID
		if prev, ok := last[k]; ok && m.Sequence <= prev {
			bad++
			if bad <= 3 {
				t.Errorf("STREAM: message %d: %s sequence %d after %d", i, k, m.Sequence, prev)
			}
		}
		last[k] = m.Sequence
	}
	return placed
}

// outboxStats runs `bento outbox stats --json` with env and returns its
// figures.
func outboxStats(t testing.TB, env []string) (pending, dead, published int64) {
	t.Helper()
	p := Start(t, env, "", "outbox", "stats", "--json")
	if code := p.Wait(time.Minute); code != 0 {
		t.Fatalf("bento outbox stats exited %d:\n%s", code, p.Output())
	}
	out := strings.TrimSpace(p.Output())
	var st struct {
		Pending   int64 `json:"pending"`
		Dead      int64 `json:"dead"`
		Published int64 `json:"published"`
	}
	line := out[strings.LastIndexByte(out, '\n')+1:]
	if err := json.Unmarshal([]byte(line), &st); err != nil {
		t.Fatalf("bento outbox stats --json printed %q: %v", out, err)
	}
	return st.Pending, st.Dead, st.Published
}

// natsNames returns a stream name and a subject prefix unique to a test.
func natsNames(base string) (stream, subject string) {
	n := time.Now().UnixNano() % 1_000_000_000
	return fmt.Sprintf("E2E_%s_%d", strings.ToUpper(base), n), fmt.Sprintf("e2e.%s%d", base, n)
}

// TestNATSDownUnderLoad: the broker stops under load. Orders keep being
// acknowledged (the outbox is the buffer), the relay retries, and once the
// broker is back every event reaches the stream exactly once, in order per
// aggregate, and nothing stays pending.
func TestNATSDownUnderLoad(t *testing.T) {
	const fault = "nats-down"
	srv := testnats.Start(t)
	url := testdb.URL(t, testdb.Postgres)
	db := testdb.OpenRaw(t, url)
	stream, subject := natsNames("down")
	app := uniqueName(t, "e2e-natsdown")
	env := []string{"DB_URL=" + url, "OUTBOX_RETENTION=1h", "DB_APPLICATION_NAME=" + app, "OUTBOX_PUBLISHER=nats",
		"OUTBOX_NATS_URL=" + srv.URL(), "OUTBOX_STREAM=" + stream, "OUTBOX_SUBJECT_PREFIX=" + subject}
	svc := Serve(t, env)

	ctx, cancel := context.WithCancel(context.Background())
	type out struct {
		res *LoadResult
		rec *attemptRecorder
	}
	done := make(chan out)
	go func() {
		res, rec := runRecorded(ctx, Load{URL: svc.URL(), Workers: 8, Retries: 3, Prefix: "natsdown"})
		done <- out{res, rec}
	}()
	time.Sleep(dur(3*time.Second, 10*time.Second))
	downAt := time.Now()
	srv.Stop()
	stopped := time.Now()
	time.Sleep(dur(5*time.Second, 30*time.Second))
	upAt := time.Now()
	srv.Restart()
	time.Sleep(dur(3*time.Second, 10*time.Second))
	cancel()
	o := <-done
	res := o.res
	loadEnd := time.Now()
	summary(t, fault, res)

	Invariants(t, db, "postgres", "natsdown", res)
	requireClassified(t, res)
	requireCallerSawNothing(t, res)
	requireNoIdleInTx(t, testdb.Admin(t, testdb.Postgres), app)
	var whileDown int
	for _, at := range ackTimes(o.rec.Attempts()) {
		if at.After(stopped) && at.Before(upAt) {
			whileDown++
		}
	}
	if whileDown == 0 {
		t.Errorf("no order was acknowledged while the broker was down: commits must not depend on the broker")
	}
	var pendingAtEnd int64
	caughtUp := false
	for deadline := time.Now().Add(90 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		m := scrapeMetrics(t, svc.URL())
		pendingAtEnd = m.sum("bento_outbox_pending")
		if pendingAtEnd == 0 && m.sum("bento_outbox_stats_up") == 1 {
			caughtUp = true
			break
		}
	}
	drained := time.Since(loadEnd)
	if !caughtUp {
		t.Fatalf("the outbox still has %d pending events 90 s after the load ended", pendingAtEnd)
	}
	m := scrapeMetrics(t, svc.URL())
	pending, dead, published := outboxStats(t, env)
	if pending != 0 || dead != 0 {
		t.Errorf("bento outbox stats: %d pending, %d dead letters; want none", pending, dead)
	}
	rows := outboxRows(t, db)
	msgs := readEventStream(t, srv.URL(), stream)
	placed := requireStreamExactlyOnce(t, rows, msgs)
	if acked := res.Count()[Acked]; placed < acked {
		t.Errorf("%d OrderPlaced events for %d acknowledged orders", placed, acked)
	}
	logFigure(t, fault, append([]any{"broker_down", upAt.Sub(downAt), "acked_while_down", whileDown,
		"outbox_events", len(rows), "stream_messages", len(msgs), "published", published, "dead_letters", dead,
		"failed_publishes", m.sum("bento_outbox_failed_total"), "caught_up_after_load", drained}, loadKV(res)...)...)
	logErrors(t, fault, res)
}

// TestRelayKill9: orders are placed by bento serve without a relay in
// process; three `bento relay` processes publish the outbox side by side
// and are killed with SIGKILL at random moments and started again, for
// about 15 s. A last `bento relay --once` publishes what is left. The
// stream holds every event exactly once; nothing is pending.
func TestRelayKill9(t *testing.T) {
	const fault = "relay-kill9"
	srv := testnats.Start(t)
	url := testdb.URL(t, testdb.Postgres)
	db := testdb.OpenRaw(t, url)
	admin := testdb.Admin(t, testdb.Postgres)
	stream, subject := natsNames("kill")
	app := uniqueName(t, "e2e-kill9")
	svc := Serve(t, []string{"DB_URL=" + url, "OUTBOX_RETENTION=1h", "DB_APPLICATION_NAME=" + app, "OUTBOX_PUBLISHER=none"})
	relayEnv := []string{"DB_URL=" + url, "OUTBOX_RETENTION=1h", "DB_APPLICATION_NAME=" + app + "-relay", "OUTBOX_PUBLISHER=nats",
		"OUTBOX_NATS_URL=" + srv.URL(), "OUTBOX_STREAM=" + stream, "OUTBOX_SUBJECT_PREFIX=" + subject}
	raw := countPublishes(t, srv.URL(), subject+".>")
	relays := make([]*Process, 3)
	for i := range relays {
		relays[i] = Start(t, relayEnv, "", "relay")
	}

	run := dur(15*time.Second, 2*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), run)
	defer cancel()
	done := make(chan *LoadResult)
	go func() { done <- Load{URL: svc.URL(), Workers: 8, Retries: 3, Prefix: "kill9"}.Run(ctx) }()
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 9))
	kills := 0
	// Kill and restart relays until two seconds before the load ends; then
	// kill them all, so that the last seconds' events wait for --once.
	killUntil := time.Now().Add(run - 2*time.Second)
	for {
		next := time.Now().Add(time.Duration(200+rng.IntN(1300)) * time.Millisecond)
		if next.After(killUntil) {
			time.Sleep(time.Until(killUntil))
			break
		}
		time.Sleep(time.Until(next))
		i := rng.IntN(len(relays))
		if relays[i].Exited() {
			t.Errorf("relay %d had exited by itself: %s", i, tail(relays[i].Output(), 2000))
		}
		relays[i].Kill9()
		relays[i].Wait(30 * time.Second)
		kills++
		relays[i] = Start(t, relayEnv, "", "relay")
	}
	for _, r := range relays {
		r.Kill9()
		r.Wait(30 * time.Second)
	}
	kills += len(relays)
	res := <-done
	summary(t, fault, res)
	Invariants(t, db, "postgres", "kill9", res)
	requireClassified(t, res)
	requireCallerSawNothing(t, res)
	requireNoIdleInTx(t, admin, app)

	// The killed relays' sessions end (their claims roll back) once the
	// server sees their sockets close.
	if n, _ := settleToZero(30*time.Second, func() int { return pgConns(t, admin, app+"-relay") }); n != 0 {
		t.Fatalf("%d sessions of the killed relays are still open", n)
	}
	pendingBefore, _, _ := outboxStats(t, relayEnv)
	once := Start(t, relayEnv, "", "relay", "--once")
	if code := once.Wait(2 * time.Minute); code != 0 {
		t.Fatalf("bento relay --once exited %d:\n%s", code, once.Output())
	}
	onceOut := firstLineWith(once.Output(), "published ")
	pending, dead, published := outboxStats(t, relayEnv)
	if pending != 0 || dead != 0 {
		t.Errorf("after bento relay --once: %d pending, %d dead letters; want none", pending, dead)
	}
	requireNoIdleInTx(t, admin, app+"-relay")
	rows := outboxRows(t, db)
	msgs := readEventStream(t, srv.URL(), stream)
	placed := requireStreamExactlyOnce(t, rows, msgs)
	if acked := res.Count()[Acked]; placed < acked {
		t.Errorf("%d OrderPlaced events for %d acknowledged orders", placed, acked)
	}
	publishes, distinct, dropped := raw.counts(t)
	logFigure(t, fault, append([]any{"relays", len(relays), "sigkills", kills, "pending_before_once", pendingBefore,
		"publishes", publishes, "republished_deduplicated", publishes - distinct, "counter_dropped", dropped,
		"once", onceOut, "outbox_events", len(rows), "stream_messages", len(msgs), "published", published,
		"dead_letters", dead}, loadKV(res)...)...)
	logErrors(t, fault, res)
}
