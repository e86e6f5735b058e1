// Package consumer is the other half of the outbox: it consumes the events
// a relay published to NATS JetStream and applies each one's effect exactly
// once, in per-aggregate order, in the receiving service's database.
//
// For every message of a durable pull consumer (explicit acks, a bounded
// number of messages awaiting their ack) it runs, in one unit of work of the
// service's ent client:
//
//  1. the order check: the event's sequence must follow the last one this
//     consumer applied for its aggregate (table <outbox>_inbox_seq);
//  2. the inbox record of the event id (outbox.MarkProcessed, table
//     <outbox>_inbox);
//  3. the handler registered for the event type, with the client bound to
//     the transaction;
//
// then commits, and only then acks. A redelivered or duplicated message
// finds its id in the inbox (or its sequence already applied): it is acked
// and skipped. A crash before the commit leaves nothing applied and the
// message is redelivered; a crash after the commit and before the ack
// applies nothing twice.
//
// An event whose predecessor was not applied yet (it is in flight at
// another instance, or waiting for a retry) is deferred: negatively acked
// with a short delay. Failures are classified with package resilience:
// transient ones (and unclassified ones, and constraint violations, which
// in a projection are usually two events racing to create one row) are
// retried with exponential backoff; permanent ones (Permanent, an
// undecodable payload, a message that is no Bento event), and any past
// MaxDeliver deliveries, are dead-lettered in <outbox>_inbox_dead and
// terminated, and the aggregate's later events go on. Requeue publishes
// dead letters again.
//
//	reg := consumer.NewRegistry[*ent.Client]()
//	consumer.Handle(reg, "OrderPlaced", func(ctx context.Context, tx *ent.Client, ev shop.OrderPlaced, m consumer.Metadata) error {
//		return tx.SummaryOrder.Create().SetOrderID(ev.OrderID).SetCustomer(ev.Customer).SetTotalCents(ev.TotalCents).Exec(ctx)
//	})
//	c, err := consumer.New(ent.NewUnitOfWork(client), js, reg, consumer.Config{Name: "billing"})
//	err = c.Run(ctx) // until ctx ends; then it finishes what it holds
package consumer

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/driver"
	"github.com/bento-go/bento/outbox"
	"github.com/bento-go/bento/outbox/natspub"
	"github.com/bento-go/bento/resilience"
	"github.com/bento-go/bento/unitofwork"
)

// HeaderRequeued marks a message Requeue published again from the dead
// letters.
const HeaderRequeued = "Bento-Requeued"

// Config configures a Consumer. Zero fields take the defaults shown.
type Config struct {
	// Name is the durable JetStream consumer's name, shared by every
	// instance of the service, and the consumer's name in the inbox, the
	// applied sequences and the dead letters. Required: letters, digits,
	// - and _.
	Name string
	// Stream is the JetStream stream the relay publishes to
	// ("BENTO_OUTBOX").
	Stream string
	// FilterSubject selects the stream's messages ("bento.>"). With order
	// kept (the default), filter by aggregate type only
	// ("bento.Order.>"), never by event type: every event of an aggregate
	// must reach the consumer for the next to be applied.
	FilterSubject string
	// Names are the framework's table names (outbox.NamesFor("")).
	Names outbox.Names
	// MaxDeliver is the deliveries after which a failing event is
	// dead-lettered (10).
	MaxDeliver int
	// Backoff is the delay before redelivering an event whose handling
	// failed for the first time; it doubles per delivery up to BackoffMax
	// (1 s, 1 min).
	Backoff    time.Duration
	BackoffMax time.Duration
	// DeferDelay is the delay before redelivering an event whose
	// predecessor was not applied yet (100 ms).
	DeferDelay time.Duration
	// MaxAckPending bounds the messages delivered to all instances and not
	// acked yet (1000).
	MaxAckPending int
	// AckWait is how long the broker waits for an ack before redelivering
	// (30 s). A handler must finish well within it.
	AckWait time.Duration
	// Batch is how many messages an instance pulls ahead (100).
	Batch int
	// Workers is how many events an instance handles at once (4). Events
	// of one aggregate always go to the same worker, in order.
	Workers int
	// Unordered turns the per-aggregate order off: events are applied as
	// they come, still exactly once.
	Unordered bool
	// Observer, if set, is told each outcome (metrics).
	Observer Observer
	// Logger gets failures and broker trouble (default: none).
	Logger *slog.Logger
	// TracerProvider, if set, traces each event as a span
	// "bento.inbox.handle" continuing the trace of the unit of work that
	// raised it (its traceparent header). Without it the trace context is
	// still extracted into the handler's context.
	TracerProvider trace.TracerProvider
	// Propagator reads the trace context (W3C trace context).
	Propagator propagation.TextMapPropagator
}

// Observer is told what happens to each message; metrics implements it.
// Its methods must be safe for concurrent use and return quickly.
type Observer interface {
	// Processed: the event was applied, committed and acked; took is its
	// unit of work.
	Processed(eventType string, took time.Duration)
	// Duplicate: the event was already applied; acked and skipped.
	Duplicate()
	// Deferred: the event's predecessor was not applied yet.
	Deferred()
	// Failed: handling failed with an error of category; dead says it was
	// dead-lettered rather than retried.
	Failed(category resilience.Category, dead bool)
	// Lag is the number of the consumer's messages not yet delivered.
	Lag(pending uint64)
}

// Consumer consumes events into a unit of work of client type C. Run may
// be called once.
type Consumer[C any] struct {
	uow    unitofwork.Port[C]
	js     jetstream.JetStream
	reg    *Registry[C]
	cfg    Config
	tables Tables
	log    *slog.Logger
	tracer trace.Tracer
	prop   propagation.TextMapPropagator
	seed   maphash.Seed
	q      atomic.Pointer[queries]
}

// New returns a consumer. uow is the receiving service's unit of work (the
// generated ent.NewUnitOfWork); its client must be built on a Bento driver.
func New[C any](uow unitofwork.Port[C], js jetstream.JetStream, reg *Registry[C], cfg Config) (*Consumer[C], error) {
	if err := validName(cfg.Name); err != nil {
		return nil, err
	}
	if reg == nil {
		return nil, errors.New("consumer: no registry; accepted: consumer.NewRegistry with the handlers")
	}
	if cfg.Stream == "" {
		cfg.Stream = "BENTO_OUTBOX"
	}
	if cfg.FilterSubject == "" {
		cfg.FilterSubject = "bento.>"
	}
	if cfg.Names.Outbox == "" {
		cfg.Names = outbox.NamesFor("")
	}
	if cfg.MaxDeliver <= 0 {
		cfg.MaxDeliver = 10
	}
	if cfg.Backoff <= 0 {
		cfg.Backoff = time.Second
	}
	if cfg.BackoffMax <= 0 {
		cfg.BackoffMax = time.Minute
	}
	if cfg.DeferDelay <= 0 {
		cfg.DeferDelay = 100 * time.Millisecond
	}
	if cfg.MaxAckPending <= 0 {
		cfg.MaxAckPending = 1000
	}
	if cfg.AckWait <= 0 {
		cfg.AckWait = 30 * time.Second
	}
	if cfg.Batch <= 0 {
		cfg.Batch = 100
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 4
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Propagator == nil {
		cfg.Propagator = propagation.TraceContext{}
	}
	c := &Consumer[C]{uow: uow, js: js, reg: reg, cfg: cfg, tables: TablesFor(cfg.Names), log: cfg.Logger,
		prop: cfg.Propagator, seed: maphash.MakeSeed()}
	if cfg.TracerProvider != nil {
		c.tracer = cfg.TracerProvider.Tracer("github.com/bento-go/bento")
	}
	return c, nil
}

// validName checks a durable consumer name.
func validName(name string) error {
	if name == "" {
		return errors.New("consumer: Name is empty; accepted: the durable consumer's name (letters, digits, - and _)")
	}
	if len(name) > 128 || strings.ContainsFunc(name, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_')
	}) {
		return fmt.Errorf("consumer: Name %q is not a consumer name; accepted: at most 128 letters, digits, - and _", name)
	}
	return nil
}

// Name returns the consumer's name.
func (c *Consumer[C]) Name() string { return c.cfg.Name }

// JetStreamConfig returns the durable consumer's configuration: pull,
// explicit acks, every message of the stream from the first, redelivery
// left to the consumer (MaxDeliver unbounded on the broker: the consumer
// counts and dead-letters).
func (c *Consumer[C]) JetStreamConfig() jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       c.cfg.Name,
		Description:   "Bento consumer " + c.cfg.Name,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       c.cfg.AckWait,
		MaxAckPending: c.cfg.MaxAckPending,
		MaxDeliver:    -1,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		FilterSubject: c.cfg.FilterSubject,
	}
}

// Run consumes until ctx ends, then stops pulling, finishes the events its
// workers hold (their units of work run on a context ctx's cancellation
// does not reach), acks them, gives back the ones pulled but not started
// (negative acks, redelivered at once to another instance) and returns
// nil. While the broker is unreachable it waits and tries again; that
// spends no event's deliveries.
func (c *Consumer[C]) Run(ctx context.Context) error {
	it, err := c.pull(ctx)
	if err != nil || it == nil {
		return err
	}
	var mu sync.Mutex // guards it, which a deleted consumer replaces
	stopped := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			mu.Lock()
			it.Drain() // deliver what is buffered, then end Next
			mu.Unlock()
		case <-stopped:
		}
	}()
	defer close(stopped)

	work := context.WithoutCancel(ctx)
	queues := make([]chan jetstream.Msg, c.cfg.Workers)
	var wg sync.WaitGroup
	for i := range queues {
		queues[i] = make(chan jetstream.Msg, c.cfg.Batch)
		wg.Add(1)
		go func(q <-chan jetstream.Msg) {
			defer wg.Done()
			for m := range q {
				if ctx.Err() != nil {
					// Pulled but not started before the stop: give it
					// back for another instance at once.
					_ = m.Nak()
					continue
				}
				c.handle(work, m)
			}
		}(queues[i])
	}
	defer func() {
		for _, q := range queues {
			close(q)
		}
		wg.Wait()
	}()
	for {
		mu.Lock()
		cur := it
		mu.Unlock()
		m, err := cur.Next()
		switch {
		case err == nil:
			queues[c.worker(m)] <- m
		case errors.Is(err, jetstream.ErrMsgIteratorClosed):
			return nil
		case ctx.Err() != nil:
		case errors.Is(err, jetstream.ErrConsumerDeleted), errors.Is(err, jetstream.ErrConsumerNotFound):
			// The broker lost the durable consumer (a stream or server
			// recreated): create it again and go on pulling.
			c.log.Warn("bento: consumer: the durable consumer is gone; creating it again", "consumer", c.cfg.Name, "error", err.Error())
			cur.Stop()
			next, err := c.pull(ctx)
			if err != nil {
				return err
			}
			if next == nil {
				return nil // ctx ended
			}
			mu.Lock()
			it = next
			if ctx.Err() != nil {
				it.Drain()
			}
			mu.Unlock()
		default:
			c.log.Warn("bento: consumer: pulling failed; retrying", "consumer", c.cfg.Name, "error", err.Error())
			sleep(ctx, 100*time.Millisecond)
		}
	}
}

// pull creates (or updates) the durable consumer and starts pulling from
// it, waiting while the broker is unavailable. It returns nil, nil if ctx
// ended first.
func (c *Consumer[C]) pull(ctx context.Context) (jetstream.MessagesContext, error) {
	wait := 100 * time.Millisecond
	for {
		cons, err := c.js.CreateOrUpdateConsumer(ctx, c.cfg.Stream, c.JetStreamConfig())
		if err == nil {
			it, err := cons.Messages(jetstream.PullMaxMessages(c.cfg.Batch))
			if err != nil {
				return nil, fmt.Errorf("consumer %s: pulling from stream %s: %w", c.cfg.Name, c.cfg.Stream, err)
			}
			return it, nil
		}
		if ctx.Err() != nil {
			return nil, nil
		}
		if !brokerTrouble(err) {
			return nil, fmt.Errorf("consumer %s: creating the durable consumer on stream %s: %w", c.cfg.Name, c.cfg.Stream, err)
		}
		c.log.Warn("bento: consumer: broker unavailable; retrying", "consumer", c.cfg.Name, "error", err.Error(), "wait", wait)
		if !sleep(ctx, wait) {
			return nil, nil
		}
		wait = min(wait*2, 5*time.Second)
	}
}

// worker picks the worker of m's aggregate, so one aggregate's events are
// handled in the order they arrive.
func (c *Consumer[C]) worker(m jetstream.Msg) int {
	h := m.Headers()
	var mh maphash.Hash
	mh.SetSeed(c.seed)
	mh.WriteString(h.Get(natspub.HeaderAggregateType))
	mh.WriteByte(0)
	mh.WriteString(h.Get(natspub.HeaderAggregateID))
	return int(mh.Sum64() % uint64(c.cfg.Workers))
}

// Outcome sentinels of one unit of work.
var (
	errDuplicate = errors.New("consumer: duplicate")
	errDeferred  = errors.New("consumer: deferred")
)

// handle applies one message and acks, defers, retries or dead-letters it.
func (c *Consumer[C]) handle(ctx context.Context, m jetstream.Msg) {
	meta, perr := c.metadata(m)
	if c.cfg.Observer != nil {
		if md, err := m.Metadata(); err == nil {
			c.cfg.Observer.Lag(md.NumPending)
		}
	}
	ctx = c.prop.Extract(ctx, propagation.MapCarrier(meta.Headers))
	var span trace.Span
	if c.tracer != nil {
		ctx, span = c.tracer.Start(ctx, "bento.inbox.handle", trace.WithSpanKind(trace.SpanKindConsumer),
			trace.WithAttributes(attribute.String("bento.consumer", c.cfg.Name), attribute.String("bento.event_id", meta.EventID.String()),
				attribute.String("bento.event_type", meta.Type), attribute.Int("bento.delivery", meta.Delivery)))
		defer span.End()
	}
	start := time.Now()
	err := perr
	if err == nil {
		err = c.apply(ctx, m, meta)
	}
	took := time.Since(start)
	switch {
	case err == nil:
		c.ack(m, meta)
		if c.cfg.Observer != nil {
			c.cfg.Observer.Processed(meta.Type, took)
		}
	case errors.Is(err, errDuplicate):
		c.ack(m, meta)
		if c.cfg.Observer != nil {
			c.cfg.Observer.Duplicate()
		}
	case errors.Is(err, errDeferred):
		_ = m.NakWithDelay(c.cfg.DeferDelay)
		if c.cfg.Observer != nil {
			c.cfg.Observer.Deferred()
		}
	default:
		cat := resilience.Classify(err)
		if span != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		c.fail(ctx, m, meta, cat, err)
	}
}

// ack acks m. A lost ack is harmless: the redelivery is a duplicate.
func (c *Consumer[C]) ack(m jetstream.Msg, meta Metadata) {
	if err := m.Ack(); err != nil {
		c.log.Warn("bento: consumer: ack failed; the redelivery will be skipped as a duplicate", "consumer", c.cfg.Name,
			"event_id", meta.EventID.String(), "error", err.Error())
	}
}

// apply runs the order check, the inbox record and the handler in one
// unit of work.
func (c *Consumer[C]) apply(ctx context.Context, m jetstream.Msg, meta Metadata) error {
	h := c.reg.handlers[meta.Type]
	return c.uow.Do(ctx, func(ctx context.Context, client C) error {
		tx := driver.TxFromContext(ctx)
		if tx == nil {
			return errors.New("consumer: the unit of work has no Bento transaction: build the ent client on bento.DB.Driver()")
		}
		if !c.cfg.Unordered && !meta.Requeued {
			if err := c.inOrder(ctx, tx, meta); err != nil {
				return err
			}
		}
		dup, err := outbox.MarkProcessed(ctx, c.cfg.Names, c.cfg.Name, meta.EventID)
		if err != nil {
			return err
		}
		if dup {
			return errDuplicate
		}
		if h == nil {
			return nil // a type this consumer does not handle: recorded, so its successors go on
		}
		return h(ctx, client, m.Data(), meta)
	})
}

// inOrder advances the aggregate's applied sequence to meta.Sequence if it
// is the next one, holding the row's lock to COMMIT; it returns
// errDuplicate for a sequence already applied and errDeferred for one
// whose predecessor is not.
func (c *Consumer[C]) inOrder(ctx context.Context, tx *driver.Tx, meta Metadata) error {
	q := c.queries(tx)
	var res sql.Result
	var err error
	if meta.Sequence == 1 {
		res, err = tx.ExecContext(ctx, q.first, c.cfg.Name, meta.AggregateType, meta.AggregateID)
	} else {
		res, err = tx.ExecContext(ctx, q.advance, meta.Sequence, c.cfg.Name, meta.AggregateType, meta.AggregateID, meta.Sequence-1)
	}
	if err != nil {
		return fmt.Errorf("consumer: advancing %s %s to sequence %d: %w", meta.AggregateType, meta.AggregateID, meta.Sequence, err)
	}
	if n, err := res.RowsAffected(); err == nil && n == 1 {
		return nil
	}
	rows, err := tx.QueryContext(ctx, q.last, c.cfg.Name, meta.AggregateType, meta.AggregateID)
	if err != nil {
		return fmt.Errorf("consumer: applied sequence of %s %s: %w", meta.AggregateType, meta.AggregateID, err)
	}
	var last int64
	found := rows.Next()
	if found {
		err = rows.Scan(&last)
	}
	if err = errors.Join(err, rows.Err(), rows.Close()); err != nil {
		return fmt.Errorf("consumer: applied sequence of %s %s: %w", meta.AggregateType, meta.AggregateID, err)
	}
	if found && meta.Sequence <= last {
		return errDuplicate
	}
	return errDeferred
}

// queries returns the statements of tx's dialect, built once.
func (c *Consumer[C]) queries(tx *driver.Tx) *queries {
	d := tx.Pool().Dialect()
	if q := c.q.Load(); q != nil && q.dialect == d {
		return q
	}
	q := newQueries(d, c.tables)
	c.q.Store(&q)
	return &q
}

// fail retries m later or dead-letters it.
func (c *Consumer[C]) fail(ctx context.Context, m jetstream.Msg, meta Metadata, cat resilience.Category, err error) {
	if errors.Is(err, driver.ErrDraining) || errors.Is(err, context.Canceled) {
		// The database is shutting down under the handler: not the event's
		// fault. Give it back at once for another instance.
		c.log.Warn("bento: consumer: shutting down; event given back", "consumer", c.cfg.Name, "event_id", meta.EventID.String())
		_ = m.Nak()
		return
	}
	// A constraint violation is retried: in a projection it is usually a
	// race between two events that create the same row, which the
	// redelivery resolves; a lasting one is dead-lettered at MaxDeliver.
	if cat != resilience.Permanent && meta.Delivery < c.cfg.MaxDeliver {
		delay := c.backoff(meta.Delivery)
		c.log.Warn("bento: consumer: handling failed; retrying", "consumer", c.cfg.Name, "event_id", meta.EventID.String(),
			"type", meta.Type, "delivery", meta.Delivery, "category", cat.String(), "delay", delay, "error", err.Error())
		_ = m.NakWithDelay(delay)
		if c.cfg.Observer != nil {
			c.cfg.Observer.Failed(cat, false)
		}
		return
	}
	inserted, derr := c.deadLetter(ctx, m, meta, cat, err)
	if derr != nil {
		// Not recorded: keep the event, try again later.
		delay := c.backoff(meta.Delivery)
		c.log.Error("bento: consumer: dead-lettering failed; retrying", "consumer", c.cfg.Name, "event_id", meta.EventID.String(),
			"error", derr.Error(), "delay", delay)
		_ = m.NakWithDelay(delay)
		if c.cfg.Observer != nil {
			c.cfg.Observer.Failed(cat, false)
		}
		return
	}
	c.log.Error("bento: consumer: event dead-lettered", "consumer", c.cfg.Name, "event_id", meta.EventID.String(),
		"type", meta.Type, "delivery", meta.Delivery, "category", cat.String(), "error", err.Error())
	if terr := m.Term(); terr != nil {
		// The dead letter is recorded; a redelivery finds the sequence
		// applied (or, unordered, is dead-lettered again, ignored).
		c.log.Warn("bento: consumer: term failed", "consumer", c.cfg.Name, "event_id", meta.EventID.String(), "error", terr.Error())
	}
	// A redelivery of an event already dead-lettered (its Term was lost)
	// adds no dead letter, and is not counted as one again.
	if c.cfg.Observer != nil && inserted {
		c.cfg.Observer.Failed(cat, true)
	}
}

// backoff is the redelivery delay after delivery number n failed.
func (c *Consumer[C]) backoff(n int) time.Duration {
	d := c.cfg.Backoff
	for i := 1; i < n && d < c.cfg.BackoffMax; i++ {
		d *= 2
	}
	d = min(d, c.cfg.BackoffMax)
	// ±20% so that events that failed together are not retried together.
	return d - d/5 + time.Duration(rand.Int64N(int64(d/5)*2+1))
}

// deadLetter records m in the dead letters and, keeping order, moves the
// aggregate's applied sequence past it, in one transaction of its own.
// It reports whether the dead letter is new (not already recorded).
func (c *Consumer[C]) deadLetter(ctx context.Context, m jetstream.Msg, meta Metadata, cat resilience.Category, cause error) (bool, error) {
	msg := cause.Error()
	if len(msg) > 2000 {
		msg = strings.ToValidUTF8(msg[:2000], "") + "…" // a cut rune would fail the insert
	}
	var inserted bool
	err := c.uow.Do(ctx, func(ctx context.Context, _ C) error {
		tx := driver.TxFromContext(ctx)
		if tx == nil {
			return errors.New("consumer: the unit of work has no Bento transaction")
		}
		q := c.queries(tx)
		var headers any
		if h := headersJSON(meta.Headers); h != "" {
			headers = h
		}
		res, err := tx.ExecContext(ctx, q.dead, c.cfg.Name, meta.EventID.String(), m.Subject(), meta.Type, meta.AggregateType,
			meta.AggregateID, meta.Sequence, headers, m.Data(), msg, cat.String(), int64(meta.Delivery), time.Now().UTC())
		if err != nil {
			return fmt.Errorf("consumer: dead-lettering %s: %w", meta.EventID, err)
		}
		n, _ := res.RowsAffected()
		inserted = n > 0
		if c.cfg.Unordered || meta.Requeued || meta.Sequence < 1 {
			return nil
		}
		if _, err := tx.ExecContext(ctx, q.advance, meta.Sequence, c.cfg.Name, meta.AggregateType, meta.AggregateID, meta.Sequence-1); err != nil {
			return fmt.Errorf("consumer: moving %s %s past dead-lettered sequence %d: %w", meta.AggregateType, meta.AggregateID, meta.Sequence, err)
		}
		if meta.Sequence == 1 {
			if _, err := tx.ExecContext(ctx, q.first, c.cfg.Name, meta.AggregateType, meta.AggregateID); err != nil {
				return fmt.Errorf("consumer: moving %s %s past dead-lettered sequence 1: %w", meta.AggregateType, meta.AggregateID, err)
			}
		}
		return nil
	})
	return inserted, err
}

// metadata reads the event's metadata from m's headers. A message that is
// not a Bento event (no valid id, aggregate or sequence) gets an error
// that dead-letters it, under an id derived from its stream position.
func (c *Consumer[C]) metadata(m jetstream.Msg) (Metadata, error) {
	h := m.Headers()
	meta := Metadata{
		AggregateType: h.Get(natspub.HeaderAggregateType),
		AggregateID:   h.Get(natspub.HeaderAggregateID),
		Type:          h.Get(natspub.HeaderEventType),
		Subject:       m.Subject(),
		Headers:       make(map[string]string, len(h)),
		Requeued:      h.Get(HeaderRequeued) != "",
	}
	for k, v := range h {
		if len(v) > 0 {
			meta.Headers[k] = v[0]
		}
	}
	if md, err := m.Metadata(); err == nil {
		meta.StreamSequence = md.Sequence.Stream
		meta.Delivery = int(md.NumDelivered)
	}
	var problems []string
	// The event id is the Nats-Msg-Id the relay set; a requeued message
	// has a new one and carries the event id in Bento-Requeued.
	idHeader := jetstream.MsgIDHeader
	if meta.Requeued {
		idHeader = HeaderRequeued
	}
	id, err := uuid.Parse(h.Get(idHeader))
	if err != nil {
		problems = append(problems, fmt.Sprintf("header %s=%q is not an event id", idHeader, h.Get(idHeader)))
		id = uuid.NewSHA1(uuid.NameSpaceURL, []byte("nats:"+c.cfg.Stream+"/"+strconv.FormatUint(meta.StreamSequence, 10)))
	}
	meta.EventID = id
	seq, err := strconv.ParseInt(h.Get(natspub.HeaderSequence), 10, 64)
	if err != nil || seq < 1 {
		problems = append(problems, fmt.Sprintf("header %s=%q is not a sequence", natspub.HeaderSequence, h.Get(natspub.HeaderSequence)))
	}
	meta.Sequence = seq
	if meta.AggregateType == "" || meta.AggregateID == "" || meta.Type == "" {
		problems = append(problems, fmt.Sprintf("headers %s, %s and %s must be set", natspub.HeaderAggregateType, natspub.HeaderAggregateID, natspub.HeaderEventType))
	}
	if t, err := time.Parse(time.RFC3339Nano, h.Get(natspub.HeaderOccurredAt)); err == nil {
		meta.OccurredAt = t
	}
	if len(problems) > 0 {
		return meta, Permanent(fmt.Errorf("consumer: message %s on %s is not a Bento event: %s", meta.EventID, m.Subject(), strings.Join(problems, "; ")))
	}
	return meta, nil
}

// headersJSON encodes headers for the dead letters' JSON column ("" for
// none).
func headersJSON(h map[string]string) string {
	if len(h) == 0 {
		return ""
	}
	b, err := json.Marshal(h)
	if err != nil {
		return ""
	}
	return string(b)
}

// brokerTrouble reports errors that say the broker, not the request, is
// the problem.
func brokerTrouble(err error) bool {
	return errors.Is(err, nats.ErrDisconnected) || errors.Is(err, nats.ErrConnectionClosed) ||
		errors.Is(err, nats.ErrConnectionReconnecting) || errors.Is(err, nats.ErrNoResponders) ||
		errors.Is(err, nats.ErrTimeout) || errors.Is(err, jetstream.ErrJetStreamNotEnabled) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, jetstream.ErrStreamNotFound)
}

// sleep waits d or until ctx ends; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// FromSettings returns the Config of the INBOX_* settings and the stream
// and subject prefix of the OUTBOX_* ones (config.Load).
func FromSettings(c config.Config) Config {
	in := c.Inbox
	return Config{
		Name: in.Consumer, Stream: c.Outbox.Stream, FilterSubject: c.Outbox.SubjectPrefix + ".>",
		Names: outbox.NamesFor(c.Outbox.Table), MaxDeliver: in.MaxDeliver, Backoff: in.Backoff, BackoffMax: in.BackoffMax,
		DeferDelay: in.DeferDelay, MaxAckPending: in.MaxAckPending, AckWait: in.AckWait, Batch: in.Batch,
		Workers: in.Workers, Unordered: !in.Ordered,
	}
}
