package main

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/bento-go/bento"
	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/ent"
	"github.com/bento-go/bento/ent/migrate"
	"github.com/bento-go/bento/ids"
	"github.com/bento-go/bento/outbox"
	"github.com/bento-go/bento/outbox/natspub"
	"github.com/bento-go/bento/shop"
	"github.com/bento-go/bento/unitofwork"
)

func goVersion() string { return runtime.Version() }

// benchLine is the one line of every order.
var benchLine = shop.Line{SKU: "SKU-1", Quantity: 2, UnitPriceCents: 1250}

// openBento opens the run's database with Bento (defaults, as `bento
// serve` would with only DB_URL set) and migrates it.
func openBento(ctx context.Context, e *env) (*bento.DB, error) {
	cfg := config.Default()
	u, err := config.ParseURL(e.dbURL)
	if err != nil {
		return nil, err
	}
	cfg.DB.URL = u
	cfg.DB.ApplicationName = "relaybench-bento"
	cfg.Outbox.BatchSize = e.o.batch
	cfg.Outbox.PollInterval = e.o.poll
	if e.o.poolSize > 0 {
		cfg.DB.PoolSize = e.o.poolSize
	}
	if e.o.maxOverflow >= 0 {
		cfg.DB.MaxOverflow = e.o.maxOverflow
	}
	if e.o.overflowIdle >= 0 {
		cfg.DB.PoolOverflowIdle = e.o.overflowIdle
	}
	db, err := bento.Open(cfg)
	if err != nil {
		return nil, err
	}
	if err := db.Migrate(ctx, migrate.Tables...); err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

// connectPublisher is Bento's JetStream publisher on the run's stream.
func connectPublisher(ctx context.Context, e *env) (*natspub.Publisher, error) {
	return natspub.Connect(ctx, natspub.Config{URL: e.o.natsURL, SubjectPrefix: e.subject, Stream: e.stream, Name: "relaybench-bento-relay"})
}

// bentoBurndown bulk-inserts N pending outbox rows (one event per
// aggregate, an OrderPlaced payload), then runs the relay's RunOnce until
// nothing is claimable and waits for the stream to hold all N.
func bentoBurndown(ctx context.Context, e *env, res *result) error {
	db, err := openBento(ctx, e)
	if err != nil {
		return err
	}
	defer db.Close()
	raw := db.Driver().DB()
	loadStart := time.Now()
	now := time.Now().UTC()
	for first := 0; first < e.o.n; first += e.o.chunk {
		n := min(e.o.chunk, e.o.n-first)
		var b strings.Builder
		args := make([]any, 0, n*5)
		b.WriteString(`INSERT INTO bento_outbox (id, aggregatetype, aggregateid, type, payload, sequence, headers, occurred_at, status, attempts, next_attempt_at) VALUES `)
		for i := range n {
			id := first + i + 1
			payload, _ := json.Marshal(shop.OrderPlaced{OrderID: id, Customer: fmt.Sprintf("burndown-%d@example.com", id),
				TotalCents: 2500, Lines: []shop.Line{benchLine}})
			eid, _ := uuid.NewV7()
			if i > 0 {
				b.WriteString(", ")
			}
			k := len(args)
			fmt.Fprintf(&b, "($%d::uuid, 'Order', $%d, 'OrderPlaced', $%d::jsonb, 1, NULL, $%d, 'pending', 0, $%d)", k+1, k+2, k+3, k+4, k+5)
			args = append(args, eid.String(), strconv.Itoa(id), string(payload), now, now.UnixMicro())
		}
		if _, err := raw.ExecContext(ctx, b.String(), args...); err != nil {
			return fmt.Errorf("loading the outbox: %w", err)
		}
	}
	if _, err := raw.ExecContext(ctx, "ANALYZE bento_outbox"); err != nil {
		return err
	}
	res.LoadSeconds = round3(time.Since(loadStart).Seconds())
	e.logf("loaded %d outbox rows in %.1fs", e.o.n, res.LoadSeconds)

	pub, err := connectPublisher(ctx, e)
	if err != nil {
		return err
	}
	defer pub.Close()
	rc := db.RelayConfig()
	rc.BatchSize = e.o.batch
	relay, err := db.NewRelay(pub, rc)
	if err != nil {
		return err
	}
	defer relay.Close()

	start := time.Now()
	done := make(chan error, 1)
	go func() {
		r, err := relay.RunOnce(ctx)
		if err == nil && r.Published != e.o.n {
			err = fmt.Errorf("RunOnce published %d of %d (failed %d, dead %d)", r.Published, e.o.n, r.Failed, r.Dead)
		}
		done <- err
	}()
	end, got, err := e.waitStream(ctx, uint64(e.o.n), e.o.drainTimeout, func(n uint64) { e.logf("%d in the stream", n) })
	res.Events, res.StreamMsgs = e.o.n, got
	if err != nil {
		return err
	}
	if err := <-done; err != nil {
		return err
	}
	took := end.Sub(start)
	res.Seconds = round3(took.Seconds())
	res.EventsPerSec = math1(float64(e.o.n) / took.Seconds())
	if err := raw.QueryRowContext(ctx, "SELECT COUNT(*) FROM bento_outbox").Scan(&res.LeftInTable); err != nil {
		return err
	}
	if res.LeftInTable != 0 {
		return fmt.Errorf("%d rows left in bento_outbox after the burn-down", res.LeftInTable)
	}
	return nil
}

// bentoLatency places orders through the unit of work at a fixed rate
// with the relay running in process, woken by the unit of work's commits
// (inproc), by LISTEN/NOTIFY (notify), or only every -poll (poll).
func bentoLatency(ctx context.Context, e *env, res *result) error {
	db, err := openBento(ctx, e)
	if err != nil {
		return err
	}
	defer db.Close()
	client := ent.NewClient(ent.Driver(db.Driver()))
	// Wired as bento serve wires it: the unit of work knows the outbox's
	// tables, and ids come from blocks, so an order is one round trip.
	uow := ent.NewUnitOfWork(client, unitofwork.Tables(db.Names()))
	svc := shop.NewService(uow, client, shop.WithIDs(ids.New(db.Driver(), db.Dialect(), ids.DefaultBlock)))

	pub, err := connectPublisher(ctx, e)
	if err != nil {
		return err
	}
	defer pub.Close()
	rc := db.RelayConfig()
	rc.BatchSize = e.o.batch
	rc.PollInterval = e.o.poll
	if e.o.wake != "inproc" {
		rc.Wake = make(chan struct{}) // never ready: no in-process wake-up
	}
	times := &batchTimes{}
	rc.Observer = times
	relay, err := db.NewRelay(pub, rc)
	if err != nil {
		return err
	}
	defer relay.Close()
	relayCtx, stopRelay := context.WithCancel(context.WithoutCancel(ctx))
	defer stopRelay()
	var listen <-chan struct{}
	if e.o.wake == "notify" {
		if listen, err = db.Listen(relayCtx); err != nil {
			return err
		}
		go db.RunNotify(relayCtx)
	}
	relayDone := make(chan struct{})
	go func() {
		defer close(relayDone)
		if err := relay.Run(relayCtx, listen); err != nil {
			e.logf("relay: %v", err)
		}
	}()

	arr, err := e.consume(ctx, payloadKey)
	if err != nil {
		return err
	}
	c := e.newCommits()
	res.Aggregates = e.o.aggregates
	took := openLoop(ctx, e.o.rate, e.o.duration, e.o.maxInFlight, c, func(ctx context.Context, i int) {
		started := time.Now()
		if e.o.aggregates > 0 {
			// One event on a hot account: the writers of an aggregate take
			// its sequence row in turn, and the relay gets runs of it.
			err := uow.Do(ctx, func(ctx context.Context, _ *ent.Client) error {
				return outbox.Record(ctx, "Account", strconv.Itoa(i%e.o.aggregates), deposited{OrderID: int64(i + 1), Cents: 1250})
			})
			if err != nil {
				c.fail(err)
				return
			}
			c.record(int64(i+1), started, time.Now())
			return
		}
		o, err := svc.Place(ctx, shop.PlaceOrder{Customer: fmt.Sprintf("latency-%d@example.com", i), Lines: []shop.Line{benchLine}}, "")
		if err != nil {
			c.fail(err)
			return
		}
		c.record(int64(o.ID), started, time.Now())
	})
	err = e.finishLatency(c, arr, took, res)
	stopRelay()
	<-relayDone
	times.fill(res, c.warmEnd)
	if err != nil {
		return err
	}
	st, serr := outbox.ReadStats(ctx, db.Driver(), db.Names())
	if serr == nil {
		res.LeftInTable = st.Pending + st.Dead
	}
	res.StreamMsgs, _ = e.streamMsgs(ctx)
	return nil
}

// deposited is the event of the skewed latency shape (-aggregates); its
// order_id is the key the consumer matches arrivals by.
type deposited struct {
	OrderID int64 `json:"order_id"`
	Cents   int64 `json:"cents"`
}

func (deposited) EventType() string { return "Deposited" }

func math1(f float64) float64 { return float64(int64(f*10+0.5)) / 10 }

// batchTimes is the latency run's relay observer: for each batch, when it
// began, how long the Publisher took (handing the messages to the broker
// until every acknowledgement) and how long the rest of the batch took
// (BEGIN and the claim, the mark and COMMIT).
type batchTimes struct {
	mu      sync.Mutex
	publish time.Duration // the batch in progress's
	batches []batchTime
}

type batchTime struct {
	began             time.Time
	publish, database time.Duration
}

// Publish is told each batch's publish, before Batch of the same batch
// (outbox.PublishObserver); a relay runs its batches one at a time.
func (t *batchTimes) Publish(_ int, took time.Duration) {
	t.mu.Lock()
	t.publish = took
	t.mu.Unlock()
}

func (t *batchTimes) Batch(_, _, _, _ int, took time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.batches = append(t.batches, batchTime{began: time.Now().Add(-took), publish: t.publish, database: max(0, took-t.publish)})
	t.publish = 0
}

func (t *batchTimes) Published(outbox.Message, time.Time) {}

// fill sets res's relay batch figures from the batches begun at or after
// from (the end of the warm-up).
func (t *batchTimes) fill(res *result, from time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var publish, database []time.Duration
	for _, b := range t.batches {
		if !b.began.Before(from) {
			publish, database = append(publish, b.publish), append(database, b.database)
		}
	}
	res.Batches = len(publish)
	p, d := pct(publish), pct(database)
	res.PublishP99, res.PublishMax = ms(p.p99), ms(p.max)
	res.RelayDBP99, res.RelayDBMax = ms(d.p99), ms(d.max)
}
