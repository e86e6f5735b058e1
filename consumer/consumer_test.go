package consumer_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/bento-go/bento"
	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/consumer"
	"github.com/bento-go/bento/ent"
	"github.com/bento-go/bento/ent/migrate"
	"github.com/bento-go/bento/internal/testdb"
	"github.com/bento-go/bento/internal/testnats"
	"github.com/bento-go/bento/outbox"
	"github.com/bento-go/bento/outbox/natspub"
	"github.com/bento-go/bento/resilience"
	"github.com/bento-go/bento/shop"
)

const (
	stream    = "BENTO_OUTBOX"
	dupWindow = 100 * time.Millisecond
)

// env is one test's receiving (and sending) service: a fresh database of
// one dialect, the shop over it, and a private NATS server.
type env struct {
	t      testing.TB
	db     *bento.DB
	client *ent.Client
	uow    *ent.UnitOfWork
	svc    *shop.Service
	nats   *testnats.Server
	pub    *natspub.Publisher
	nc     *nats.Conn
	js     jetstream.JetStream
}

func newEnv(t testing.TB, cfg config.Config) *env {
	t.Helper()
	ctx := context.Background()
	db, err := bento.Open(cfg, bento.WithTables(consumer.Schema(outbox.NamesFor(cfg.Outbox.Table))...))
	if err != nil {
		t.Fatalf("bento.Open: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	if err := db.Migrate(ctx, migrate.Tables...); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	client := ent.NewClient(ent.Driver(db.Driver()))
	uow := ent.NewUnitOfWork(client)
	srv := testnats.Start(t)
	// A short duplicate window, so that a test can publish a message again
	// with its Nats-Msg-Id (as a relay that crashed before marking does)
	// and have the stream keep both.
	pub, err := natspub.Connect(ctx, natspub.Config{URL: srv.URL(), Stream: stream, CreateStream: true, Duplicates: dupWindow})
	if err != nil {
		t.Fatalf("natspub.Connect: %v", err)
	}
	t.Cleanup(func() { pub.Close() })
	nc, err := nats.Connect(srv.URL(), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatalf("nats.Connect: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, db: db, client: client, uow: uow, svc: shop.NewService(uow, client), nats: srv, pub: pub, nc: nc, js: js}
}

// shopTraffic places n orders for a few customers and pays or cancels
// some, then relays every event to the stream. It returns the number of
// events.
func (e *env) shopTraffic(n int) int {
	e.t.Helper()
	ctx := context.Background()
	events := 0
	for i := range n {
		o, err := e.svc.Place(ctx, shop.PlaceOrder{
			Customer: fmt.Sprintf("c%d@example.com", i%7),
			Lines:    []shop.Line{{SKU: "sku-" + strconv.Itoa(i), Quantity: 1 + i%3, UnitPriceCents: int64(100 + i)}},
		}, "")
		if err != nil {
			e.t.Fatalf("Place: %v", err)
		}
		events++
		switch i % 3 {
		case 0:
			_, err = e.svc.Pay(ctx, o.ID)
			events++
		case 1:
			_, err = e.svc.Cancel(ctx, o.ID)
			events++
		}
		if err != nil {
			e.t.Fatalf("transition: %v", err)
		}
	}
	e.relay()
	return events
}

// relay publishes what the outbox holds.
func (e *env) relay() {
	e.t.Helper()
	r, err := e.db.NewRelay(e.pub, e.db.RelayConfig())
	if err != nil {
		e.t.Fatal(err)
	}
	defer r.Close()
	for {
		res, err := r.RunOnce(context.Background())
		if err != nil {
			e.t.Fatalf("relay: %v", err)
		}
		if res.Failed > 0 || res.Dead > 0 {
			e.t.Fatalf("relay: %d failed, %d dead", res.Failed, res.Dead)
		}
		if res.Published == 0 {
			return
		}
	}
}

// duplicate publishes every k-th message of the stream copies more times,
// headers and Nats-Msg-Id included, each after the stream's duplicate
// window so that the stream keeps it (as a relay that crashed between
// publish and mark and came back late would). It returns how many copies
// it published.
func (e *env) duplicate(k, copies int) int {
	e.t.Helper()
	ctx := context.Background()
	s, err := e.js.Stream(ctx, stream)
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	n := 0
	var batch []*nats.Msg
	for seq := uint64(1); seq <= info.State.LastSeq; seq += uint64(k) {
		raw, err := s.GetMsg(ctx, seq)
		if err != nil {
			e.t.Fatal(err)
		}
		for range copies {
			m := nats.NewMsg(raw.Subject)
			m.Data = raw.Data
			for h, v := range raw.Header {
				m.Header[h] = v
			}
			batch = append(batch, m)
		}
	}
	// Each round publishes one copy of every chosen message, after the
	// window of the round before.
	for round := range copies {
		time.Sleep(dupWindow + 50*time.Millisecond)
		for i := round; i < len(batch); i += copies {
			ack, err := e.js.PublishMsg(ctx, batch[i])
			if err != nil {
				e.t.Fatal(err)
			}
			if ack.Duplicate {
				e.t.Fatalf("the stream dropped copy %d of %s as a duplicate", round, batch[i].Header.Get(jetstream.MsgIDHeader))
			}
			n++
		}
	}
	return n
}

// expected computes the customer summaries from the orders table.
func (e *env) expected() map[string]shop.Summary {
	e.t.Helper()
	orders, err := e.client.Order.Query().All(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	out := map[string]shop.Summary{}
	for _, o := range orders {
		s := out[o.Customer]
		s.Customer = o.Customer
		s.OrdersPlaced++
		switch string(o.Status) {
		case shop.StatusPaid:
			s.OrdersPaid++
			s.TotalSpentCents += o.TotalCents
		case shop.StatusCancelled:
			s.OrdersCancelled++
		}
		out[o.Customer] = s
	}
	return out
}

// projected reads the customer summaries the consumer projected.
func (e *env) projected() map[string]shop.Summary {
	e.t.Helper()
	rows, err := e.client.CustomerSummary.Query().All(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	out := map[string]shop.Summary{}
	for _, r := range rows {
		out[r.Customer] = shop.Summary{Customer: r.Customer, OrdersPlaced: r.OrdersPlaced, OrdersPaid: r.OrdersPaid,
			OrdersCancelled: r.OrdersCancelled, TotalSpentCents: r.TotalSpentCents}
	}
	return out
}

// count runs a COUNT query written with ? placeholders.
func (e *env) count(query string, args ...any) int {
	e.t.Helper()
	if e.db.Dialect() == testdb.Postgres {
		for i := 1; strings.Contains(query, "?"); i++ {
			query = strings.Replace(query, "?", "$"+strconv.Itoa(i), 1)
		}
	}
	var n int
	if err := e.db.Driver().DB().QueryRow(query, args...).Scan(&n); err != nil {
		e.t.Fatalf("%s: %v", query, err)
	}
	return n
}

func (e *env) inboxCount(name string) int {
	return e.count("SELECT COUNT(*) FROM bento_outbox_inbox WHERE consumer = ?", name)
}

func (e *env) deadCount(name string) int {
	return e.count("SELECT COUNT(*) FROM bento_outbox_inbox_dead WHERE consumer = ?", name)
}

// settled waits until the durable consumer has nothing pending and nothing
// awaiting an ack.
func (e *env) settled(name string, within time.Duration) {
	e.t.Helper()
	deadline := time.Now().Add(within)
	var info *jetstream.ConsumerInfo
	for time.Now().Before(deadline) {
		c, err := e.js.Consumer(context.Background(), stream, name)
		if err == nil {
			info, err = c.Info(context.Background())
		}
		if err == nil && info.NumPending == 0 && info.NumAckPending == 0 && info.NumRedelivered == 0 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	if info != nil {
		e.t.Fatalf("consumer %s not settled within %s: pending %d, awaiting ack %d, redelivering %d", name, within, info.NumPending, info.NumAckPending, info.NumRedelivered)
	}
	e.t.Fatalf("consumer %s not settled within %s", name, within)
}

// waitFor polls cond until it holds or within passes.
func waitFor(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// counts is an Observer that counts outcomes.
type counts struct {
	processed, duplicates, deferred, retried, dead atomic.Int64
	mu                                             sync.Mutex
	byCategory                                     map[string]int
}

func (c *counts) Processed(string, time.Duration) { c.processed.Add(1) }
func (c *counts) Duplicate()                      { c.duplicates.Add(1) }
func (c *counts) Deferred()                       { c.deferred.Add(1) }
func (c *counts) Lag(uint64)                      {}
func (c *counts) Failed(cat resilience.Category, dead bool) {
	if dead {
		c.dead.Add(1)
	} else {
		c.retried.Add(1)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.byCategory == nil {
		c.byCategory = map[string]int{}
	}
	c.byCategory[cat.String()]++
}

// witness records, per aggregate, the highest sequence a handler was given;
// a handler given a sequence beyond the next one is an order violation.
type witness struct {
	mu         sync.Mutex
	last       map[string]int64
	violations []string
}

func (w *witness) see(m consumer.Metadata) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.last == nil {
		w.last = map[string]int64{}
	}
	k := m.AggregateType + "/" + m.AggregateID
	if m.Sequence > w.last[k]+1 {
		w.violations = append(w.violations, fmt.Sprintf("%s: sequence %d handled after %d", k, m.Sequence, w.last[k]))
	}
	w.last[k] = max(w.last[k], m.Sequence)
}

func witnessed[T any](w *witness, fn consumer.HandlerFunc[T, *ent.Client]) consumer.HandlerFunc[T, *ent.Client] {
	return func(ctx context.Context, tx *ent.Client, ev T, m consumer.Metadata) error {
		w.see(m)
		return fn(ctx, tx, ev, m)
	}
}

// summaryRegistry is shop.SummaryHandlers with every handler watched by w.
func summaryRegistry(w *witness) *consumer.Registry[*ent.Client] {
	reg := consumer.NewRegistry[*ent.Client]()
	consumer.Handle(reg, "OrderPlaced", witnessed(w, shop.ApplyOrderPlaced))
	consumer.Handle(reg, "OrderPaid", witnessed(w, shop.ApplyOrderPaid))
	consumer.Handle(reg, "OrderCancelled", witnessed(w, shop.ApplyOrderCancelled))
	return reg
}

// run starts a consumer instance; stop cancels it and waits for Run.
func (e *env) run(reg *consumer.Registry[*ent.Client], cfg consumer.Config) (stop func()) {
	e.t.Helper()
	c, err := consumer.New[*ent.Client](e.uow, e.js, reg, cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					e.t.Errorf("Run: %v", err)
				}
			case <-time.After(30 * time.Second):
				e.t.Errorf("Run did not return within 30s of its context ending")
			}
		})
	}
	e.t.Cleanup(stop)
	return stop
}

func fastConfig(name string, obs consumer.Observer) consumer.Config {
	return consumer.Config{Name: name, Stream: stream, Backoff: 10 * time.Millisecond, BackoffMax: 100 * time.Millisecond,
		DeferDelay: 10 * time.Millisecond, AckWait: 2 * time.Second, Observer: obs, MaxDeliver: 20,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))}
}

// checkProjection compares the projection with the orders table, and the
// inbox with the number of events.
func (e *env) checkProjection(name string, events int, w *witness) {
	e.t.Helper()
	want, got := e.expected(), e.projected()
	if len(got) != len(want) {
		e.t.Errorf("projected %d customers, want %d", len(got), len(want))
	}
	for c, s := range want {
		if got[c] != s {
			e.t.Errorf("summary of %s: got %+v, want %+v (from the orders table)", c, got[c], s)
		}
	}
	if n := e.inboxCount(name); n != events {
		e.t.Errorf("inbox of %s holds %d events, want each of the %d once", name, n, events)
	}
	if n := e.deadCount(name); n != 0 {
		e.t.Errorf("%d dead letters, want none", n)
	}
	if w != nil {
		w.mu.Lock()
		defer w.mu.Unlock()
		if len(w.violations) > 0 {
			e.t.Errorf("%d per-aggregate order violations seen by the handlers, e.g. %s", len(w.violations), w.violations[0])
		}
	}
}

// TestThreeInstancesDuplicatesExactlyOnceInOrder: invariant — three
// instances of one durable consumer, fed every event plus two extra copies
// of every third message (new Nats-Msg-Ids, so the stream keeps them),
// apply each event's effect once and in per-aggregate order: the
// projection equals the one computed from the orders table, the inbox
// holds every event once, the handlers never see a sequence before its
// predecessor, and at least as many duplicates were skipped as injected.
func TestThreeInstancesDuplicatesExactlyOnceInOrder(t *testing.T) {
	testdb.Each(t, func(t *testing.T, cfg config.Config) {
		e := newEnv(t, cfg)
		events := e.shopTraffic(60)
		injected := e.duplicate(3, 2)
		obs := &counts{}
		w := &witness{}
		for range 3 {
			e.run(summaryRegistry(w), fastConfig("summary", obs))
		}
		waitFor(t, 60*time.Second, "every event in the inbox", func() bool { return e.inboxCount("summary") >= events })
		e.settled("summary", 30*time.Second)
		e.checkProjection("summary", events, w)
		if got := obs.duplicates.Load(); got < int64(injected) {
			t.Errorf("skipped %d duplicates, want at least the %d injected", got, injected)
		}
		if got := obs.processed.Load(); got != int64(events) {
			t.Errorf("processed %d events, want %d", got, events)
		}
		t.Logf("%d events, %d copies injected: %d processed, %d duplicates skipped, %d deferred, %d retried",
			events, injected, obs.processed.Load(), obs.duplicates.Load(), obs.deferred.Load(), obs.retried.Load())
	})
}

// TestBrokerRestart: invariant — a consumer whose broker restarts in the
// middle of the stream (acks of that moment lost) still applies every
// event once: the projection equals the orders table's, the inbox holds
// each event once, nothing is dead-lettered.
func TestBrokerRestart(t *testing.T) {
	testdb.Each(t, func(t *testing.T, cfg config.Config) {
		e := newEnv(t, cfg)
		events := e.shopTraffic(90)
		obs := &counts{}
		w := &witness{}
		slow := summaryRegistry(w)
		// A handler slow enough that the restart lands mid-stream.
		consumer.Handle(slow, "OrderPaid", witnessed(w, func(ctx context.Context, tx *ent.Client, ev shop.OrderPaid, m consumer.Metadata) error {
			time.Sleep(5 * time.Millisecond)
			return shop.ApplyOrderPaid(ctx, tx, ev, m)
		}))
		e.run(slow, fastConfig("summary", obs))
		waitFor(t, 30*time.Second, "a third of the events processed", func() bool { return obs.processed.Load() >= int64(events/3) })
		before := obs.processed.Load() // when the broker goes down
		e.nats.Restart()
		waitFor(t, 60*time.Second, "every event in the inbox", func() bool { return e.inboxCount("summary") >= events })
		e.settled("summary", 30*time.Second)
		e.checkProjection("summary", events, w)
		if before >= int64(events) {
			t.Errorf("the broker restarted after all %d events were processed: the test did not test a restart", events)
		}
		t.Logf("restart after %d of %d events; %d duplicates skipped", before, events, obs.duplicates.Load())
	})
}
