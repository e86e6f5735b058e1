package rabbitpub_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/bento-go/bento"
	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/ent"
	"github.com/bento-go/bento/internal/testdb"
	"github.com/bento-go/bento/outbox"
)

type stepped struct {
	N int `json:"n"`
}

func (stepped) EventType() string { return "Stepped" }

// relayEnv is a database with Bento's tables, configured to relay to a
// unique exchange on the test broker with a durable queue bound to all of
// it.
type relayEnv struct {
	t     *testing.T
	cfg   config.Config
	db    *bento.DB
	uow   *ent.UnitOfWork
	queue string
}

func openRelayEnv(t *testing.T, cfg config.Config) *relayEnv {
	t.Helper()
	cfg.Outbox.Publisher = "rabbitmq"
	cfg.Outbox.RabbitMQURL = brokerURL()
	cfg.Outbox.RabbitMQExchange = unique(t, "bento.test.relay")
	db, err := bento.Open(cfg)
	if err != nil {
		t.Fatalf("bento.Open: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	if err := db.Migrate(context.Background()); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	e := &relayEnv{t: t, cfg: cfg, db: db, uow: ent.NewUnitOfWork(ent.NewClient(ent.Driver(db.Driver())))}
	e.queue = bind(t, cfg.Outbox.RabbitMQExchange, nil, "#")
	return e
}

// record commits, in one unit of work, the next event of each aggregate
// (type Order): event n of an aggregate carries {"n": n}.
func (e *relayEnv) record(ctx context.Context, n int, ids ...string) {
	e.t.Helper()
	err := e.uow.Do(ctx, func(ctx context.Context, _ *ent.Client) error {
		for _, id := range ids {
			if err := outbox.Record(ctx, "Order", id, stepped{N: n}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		e.t.Fatalf("recording events: %v", err)
	}
}

// publisher is the publisher OUTBOX_PUBLISHER=rabbitmq builds.
func (e *relayEnv) publisher() outbox.Publisher {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pub, closePub, err := bento.Publisher(ctx, e.cfg.Outbox, e.db)
	if err != nil {
		e.t.Fatalf("bento.Publisher(rabbitmq): %v", err)
	}
	e.t.Cleanup(func() { closePub() })
	return pub
}

func (e *relayEnv) relay(pub outbox.Publisher, adjust func(*outbox.RelayConfig)) *outbox.Relay {
	e.t.Helper()
	rc := e.db.RelayConfig()
	rc.Wake = make(chan struct{}) // polling only: the tests drive it
	if adjust != nil {
		adjust(&rc)
	}
	r, err := e.db.NewRelay(pub, rc)
	if err != nil {
		e.t.Fatalf("NewRelay: %v", err)
	}
	e.t.Cleanup(func() { r.Close() })
	return r
}

func (e *relayEnv) stats() outbox.Stats {
	e.t.Helper()
	st, err := outbox.ReadStats(context.Background(), e.db.Driver(), e.db.Names())
	if err != nil {
		e.t.Fatalf("ReadStats: %v", err)
	}
	return st
}

// delivered is one message read from the queue.
type delivered struct {
	id       string
	agg      string
	sequence int64
}

func decode(t *testing.T, ds []amqp.Delivery) []delivered {
	t.Helper()
	out := make([]delivered, len(ds))
	for i, d := range ds {
		agg, _ := d.Headers["Bento-Aggregate-Id"].(string)
		seq, err := strconv.ParseInt(fmt.Sprint(d.Headers["Bento-Sequence"]), 10, 64)
		if err != nil || d.MessageId == "" || agg == "" {
			t.Fatalf("message %d in the queue: message_id %q, headers %v", i, d.MessageId, d.Headers)
		}
		if d.DeliveryMode != amqp.Persistent {
			t.Fatalf("message %s is not persistent (delivery mode %d)", d.MessageId, d.DeliveryMode)
		}
		out[i] = delivered{id: d.MessageId, agg: agg, sequence: seq}
	}
	return out
}

// TestRelayOnceToQueue: the relay that OUTBOX_PUBLISHER=rabbitmq builds
// moves a backlog of 40 aggregates × 10 events into a bound queue with
// RunOnce (what `bento relay --once` runs), on every dialect. Invariant:
// the queue holds each event exactly once (by message_id), each
// aggregate's in sequence order; nothing is left pending or dead.
func TestRelayOnceToQueue(t *testing.T) {
	testdb.Each(t, func(t *testing.T, cfg config.Config) {
		cfg.Outbox.BatchSize = 16
		e := openRelayEnv(t, cfg)
		ctx := context.Background()
		const aggregates, steps = 40, 10
		ids := make([]string, aggregates)
		for i := range ids {
			ids[i] = strconv.Itoa(i)
		}
		for n := 1; n <= steps; n++ {
			e.record(ctx, n, ids...)
		}
		r := e.relay(e.publisher(), nil)
		res, err := r.RunOnce(ctx)
		if err != nil {
			t.Fatalf("RunOnce: %v", err)
		}
		if res.Published != aggregates*steps || res.Failed != 0 || res.Dead != 0 {
			t.Fatalf("RunOnce = %+v, want %d published", res, aggregates*steps)
		}
		if st := e.stats(); st.Pending != 0 || st.Dead != 0 {
			t.Fatalf("after RunOnce: %+v", st)
		}
		got := decode(t, drain(t, e.queue))
		seen := map[string]int{}
		order := map[string][]int64{}
		for _, d := range got {
			seen[d.id]++
			order[d.agg] = append(order[d.agg], d.sequence)
		}
		if len(got) != aggregates*steps || len(seen) != aggregates*steps {
			t.Fatalf("%d messages in the queue, %d distinct message ids; want %d once each", len(got), len(seen), aggregates*steps)
		}
		for _, id := range ids {
			if s := fmt.Sprint(order[id]); s != "[1 2 3 4 5 6 7 8 9 10]" {
				t.Errorf("aggregate %s: sequences in queue order %s, want 1..10", id, s)
			}
		}
	})
}

// recorder passes batches to a publisher and keeps each event's failed
// results.
type recorder struct {
	pub outbox.Publisher

	mu          sync.Mutex
	unavailable map[string]int // event id → ErrUnavailable results
	other       []error        // any other failure
}

func (r *recorder) Publish(ctx context.Context, msgs []outbox.Message) []error {
	res := r.pub.Publish(ctx, msgs)
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, err := range res {
		switch {
		case err == nil:
		case errors.Is(err, outbox.ErrUnavailable):
			r.unavailable[msgs[i].ID.String()]++
		default:
			r.other = append(r.other, err)
		}
	}
	return res
}

// TestRelayBrokerRestart: RabbitMQ is stopped (rabbitmqctl stop_app) and
// started again while writers keep committing events and the relay runs
// (PostgreSQL). Invariants: every event committed is in the queue
// (nothing lost); every failure was ErrUnavailable and no row spent an
// attempt; an event is in the queue more than once only if a publish of it
// failed with ErrUnavailable (its confirm was lost with the connection:
// the documented window), and each aggregate's events are in sequence
// order once repeats are collapsed.
func TestRelayBrokerRestart(t *testing.T) {
	b := controlBroker(t)
	cfg := testdb.Config(t, testdb.Postgres)
	cfg.Outbox.Retention = time.Hour // rows stay, with their attempts
	e := openRelayEnv(t, cfg)
	rec := &recorder{pub: e.publisher(), unavailable: map[string]int{}}
	r := e.relay(rec, func(c *outbox.RelayConfig) {
		c.BatchSize, c.PollInterval, c.Backoff, c.MaxBackoff = 20, 20*time.Millisecond, 50*time.Millisecond, 200*time.Millisecond
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	relayDone := make(chan error, 1)
	go func() { relayDone <- r.Run(ctx, nil) }()

	// Writers: every 10 ms the next event of 5 of 50 aggregates.
	const aggregates = 50
	stopWriting := make(chan struct{})
	writerDone := make(chan struct{})
	written := map[string]int{}
	go func() {
		defer close(writerDone)
		for round := 0; ; round++ {
			select {
			case <-stopWriting:
				return
			case <-time.After(10 * time.Millisecond):
			}
			ids := make([]string, 5)
			for i := range ids {
				ids[i] = strconv.Itoa((round*5 + i) % aggregates)
			}
			err := e.uow.Do(context.Background(), func(ctx context.Context, _ *ent.Client) error {
				for _, id := range ids {
					if err := outbox.Record(ctx, "Order", id, stepped{N: written[id] + 1}); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				t.Errorf("recording events: %v", err)
				return
			}
			for _, id := range ids {
				written[id]++
			}
		}
	}()

	began := time.Now()
	time.Sleep(time.Second)
	b.Stop()
	time.Sleep(2 * time.Second)
	b.Start()
	time.Sleep(time.Second)
	close(stopWriting)
	<-writerDone

	t.Logf("broker back, writers stopped after %s", time.Since(began).Round(time.Millisecond))
	deadline := time.Now().Add(60 * time.Second)
	for st := e.stats(); st.Pending > 0; st = e.stats() {
		if time.Now().After(deadline) {
			t.Fatalf("60 s after the restart: %+v", st)
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	if err := <-relayDone; err != nil {
		t.Fatalf("Run: %v", err)
	}

	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.unavailable) == 0 {
		t.Fatal("no publish failed with ErrUnavailable: the outage did not reach the relay, the test proves nothing")
	}
	for _, err := range rec.other {
		t.Errorf("a failure other than ErrUnavailable: %v", err)
	}
	st := e.stats()
	if st.Dead != 0 {
		t.Errorf("%d dead letters", st.Dead)
	}
	var spent, rows int
	if err := e.db.Driver().DB().QueryRow("SELECT COUNT(*), COUNT(*) FILTER (WHERE attempts > 0) FROM bento_outbox").Scan(&rows, &spent); err != nil {
		t.Fatal(err)
	}
	if spent != 0 {
		t.Errorf("%d rows spent attempts on the outage", spent)
	}
	var eventIDs []string
	dbRows, err := e.db.Driver().DB().Query("SELECT id FROM bento_outbox")
	if err != nil {
		t.Fatal(err)
	}
	for dbRows.Next() {
		var id string
		if err := dbRows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		eventIDs = append(eventIDs, id)
	}
	if err := dbRows.Err(); err != nil {
		t.Fatal(err)
	}
	dbRows.Close()

	t.Logf("caught up after %s", time.Since(began).Round(time.Millisecond))
	got := decode(t, drain(t, e.queue))
	t.Logf("queue read after %s", time.Since(began).Round(time.Millisecond))
	count := map[string]int{}
	order := map[string][]int64{}
	for _, d := range got {
		count[d.id]++
		if o := order[d.agg]; len(o) == 0 || o[len(o)-1] != d.sequence {
			order[d.agg] = append(o, d.sequence) // repeats collapsed
		}
	}
	var lost, dups int
	for _, id := range eventIDs {
		switch n := count[id]; {
		case n == 0:
			lost++
		case n > 1:
			dups += n - 1
			if rec.unavailable[id] == 0 {
				t.Errorf("event %s is in the queue %d times, but none of its publishes failed", id, n)
			}
		}
	}
	if lost != 0 || len(count) != len(eventIDs) {
		t.Errorf("%d of %d events missing from the queue; %d distinct message ids in it", lost, len(eventIDs), len(count))
	}
	total := 0
	for id, n := range written {
		total += n
		want := make([]int64, n)
		for i := range want {
			want[i] = int64(i + 1)
		}
		if fmt.Sprint(order[id]) != fmt.Sprint(want) {
			t.Errorf("aggregate %s: sequences in queue order %v, want 1..%d", id, order[id], n)
		}
	}
	if total != rows {
		t.Errorf("%d events written, %d rows in the outbox", total, rows)
	}
	t.Logf("%d events, %d messages in the queue (%d repeated in the window), %d events had unavailable publishes",
		rows, len(got), dups, len(rec.unavailable))
}

// crashAfterPublish publishes for real, then ends the relay's context
// once: the batch's messages are confirmed by RabbitMQ but the relay
// cannot commit their mark, as if it had died in between.
type crashAfterPublish struct {
	pub   outbox.Publisher
	crash context.CancelFunc
	once  sync.Once
	first []string // the event ids of the interrupted batch
}

func (c *crashAfterPublish) Publish(ctx context.Context, msgs []outbox.Message) []error {
	res := c.pub.Publish(ctx, msgs)
	c.once.Do(func() {
		for i, m := range msgs {
			if res[i] == nil {
				c.first = append(c.first, m.ID.String())
			}
		}
		c.crash()
	})
	return res
}

// TestRelayCrashWindow: a relay interrupted between RabbitMQ's confirms
// and the commit of its mark leaves the batch pending; the next relay
// publishes it again. Invariants: every event is in the queue; an event is
// there twice only if it was confirmed in the interrupted batch (the
// documented window), never more than twice.
func TestRelayCrashWindow(t *testing.T) {
	testdb.Each(t, func(t *testing.T, cfg config.Config) {
		cfg.Outbox.BatchSize = 10
		e := openRelayEnv(t, cfg)
		ids := make([]string, 30)
		for i := range ids {
			ids[i] = strconv.Itoa(i)
		}
		e.record(context.Background(), 1, ids...)
		pub := e.publisher()

		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		crashing := &crashAfterPublish{pub: pub, crash: cancel}
		r := e.relay(crashing, nil)
		res, err := r.RunOnce(ctx)
		if err == nil && res.Published == len(ids) {
			t.Logf("the interrupted relay still marked its batch: %+v", res)
		}
		if len(crashing.first) != 10 {
			t.Fatalf("the interrupted batch had %d confirmed messages, want 10", len(crashing.first))
		}
		r.Close()

		again, err := e.relay(pub, nil).RunOnce(context.Background())
		if err != nil {
			t.Fatalf("RunOnce after the interruption: %v", err)
		}
		if st := e.stats(); st.Pending != 0 || st.Dead != 0 {
			t.Fatalf("after the second relay: %+v", st)
		}
		count := map[string]int{}
		for _, d := range decode(t, drain(t, e.queue)) {
			count[d.id]++
		}
		window := map[string]bool{}
		for _, id := range crashing.first {
			window[id] = true
		}
		repeated := 0
		for id, n := range count {
			if n > 1 {
				repeated++
				if !window[id] || n > 2 {
					t.Errorf("event %s is in the queue %d times; in the interrupted batch: %t", id, n, window[id])
				}
			}
		}
		if len(count) != len(ids) {
			t.Errorf("%d distinct events in the queue, want %d", len(count), len(ids))
		}
		t.Logf("interrupted batch: %d confirmed; second relay published %d; %d events repeated", len(crashing.first), again.Published, repeated)
	})
}
