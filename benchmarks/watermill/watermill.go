package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmnats "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/components/forwarder"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/bento-go/bento/shop"
)

// forwarderTopic is the SQL topic the forwarder reads: table
// watermill_outbox, offsets in watermill_offsets_outbox.
const forwarderTopic = "outbox"

// openStd opens the run's database on database/sql with pgx (the driver
// Bento uses) and the pool limits Bento's defaults give (DB_POOL_SIZE 5 +
// DB_MAX_OVERFLOW 10).
func openStd(e *env) (*sql.DB, error) {
	db, err := sql.Open("pgx", e.dbURL+"?application_name=relaybench-watermill")
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(15)
	db.SetMaxIdleConns(5)
	db.SetConnMaxLifetime(time.Hour)
	return db, nil
}

func (e *env) wmLogger() watermill.LoggerAdapter {
	if e.o.verbose {
		return watermill.NewStdLogger(false, false)
	}
	return watermill.NopLogger{}
}

func (e *env) wmSchema() (wsql.DefaultPostgreSQLSchema, wsql.DefaultPostgreSQLOffsetsAdapter) {
	return wsql.DefaultPostgreSQLSchema{SubscribeBatchSize: e.o.batch}, wsql.DefaultPostgreSQLOffsetsAdapter{}
}

// destination is the NATS subject (watermill topic) the forwarder
// publishes each event to: the same subject Bento's relay uses.
func (e *env) destination() string { return e.subject + ".Order.OrderPlaced" }

// newForwarder builds the forwarder: watermill-sql's PostgreSQL subscriber
// on the outbox topic, publishing to JetStream with watermill-nats
// (Nats-Msg-Id set from the message UUID, as Bento sets it from the event
// id).
func newForwarder(e *env, db *sql.DB) (*forwarder.Forwarder, *wsql.Subscriber, error) {
	logger := e.wmLogger()
	schema, offsets := e.wmSchema()
	sub, err := wsql.NewSubscriber(wsql.BeginnerFromStdSQL(db), wsql.SubscriberConfig{
		SchemaAdapter: schema, OffsetsAdapter: offsets, PollInterval: e.o.poll, InitializeSchema: true,
	}, logger)
	if err != nil {
		return nil, nil, err
	}
	if err := sub.SubscribeInitialize(forwarderTopic); err != nil {
		return nil, nil, fmt.Errorf("watermill-sql schema: %w", err)
	}
	pub, err := wmnats.NewPublisher(wmnats.PublisherConfig{
		URL:       e.o.natsURL,
		Marshaler: &wmnats.NATSMarshaler{},
		JetStream: wmnats.JetStreamConfig{TrackMsgId: true},
	}, logger)
	if err != nil {
		return nil, nil, fmt.Errorf("watermill-nats publisher: %w", err)
	}
	fwd, err := forwarder.NewForwarder(sub, pub, logger, forwarder.Config{ForwarderTopic: forwarderTopic, CloseTimeout: 10 * time.Second})
	if err != nil {
		return nil, nil, err
	}
	return fwd, sub, nil
}

// publishInTx writes msgs to the forwarder's SQL topic through tx, the
// way an application uses Watermill's outbox.
func (e *env) publishInTx(tx *sql.Tx, msgs ...*message.Message) error {
	schema, _ := e.wmSchema()
	p, err := wsql.NewPublisher(wsql.TxFromStdSQL(tx), wsql.PublisherConfig{SchemaAdapter: schema}, watermill.NopLogger{})
	if err != nil {
		return err
	}
	return forwarder.NewPublisher(p, forwarder.PublisherConfig{ForwarderTopic: forwarderTopic}).Publish(e.destination(), msgs...)
}

func orderPlaced(id int, customer string) *message.Message {
	payload, _ := json.Marshal(shop.OrderPlaced{OrderID: id, Customer: customer, TotalCents: 2500, Lines: []shop.Line{benchLine}})
	return message.NewMessage(watermill.NewUUID(), payload)
}

// watermillBurndown publishes N messages into the forwarder's topic in
// transactions of -load-chunk, then runs the forwarder until the stream
// holds all N.
func watermillBurndown(ctx context.Context, e *env, res *result) error {
	db, err := openStd(e)
	if err != nil {
		return err
	}
	defer db.Close()
	fwd, _, err := newForwarder(e, db)
	if err != nil {
		return err
	}
	loadStart := time.Now()
	for first := 0; first < e.o.n; first += e.o.chunk {
		n := min(e.o.chunk, e.o.n-first)
		msgs := make([]*message.Message, n)
		for i := range msgs {
			id := first + i + 1
			msgs[i] = orderPlaced(id, fmt.Sprintf("burndown-%d@example.com", id))
		}
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		if err := e.publishInTx(tx, msgs...); err != nil {
			_ = tx.Rollback()
			return fmt.Errorf("loading the outbox: %w", err)
		}
		if err := tx.Commit(); err != nil {
			return err
		}
	}
	if _, err := db.ExecContext(ctx, "ANALYZE watermill_outbox"); err != nil {
		return err
	}
	res.LoadSeconds = round3(time.Since(loadStart).Seconds())
	e.logf("loaded %d messages in %.1fs", e.o.n, res.LoadSeconds)

	start := time.Now()
	runErr := make(chan error, 1)
	go func() { runErr <- fwd.Run(context.WithoutCancel(ctx)) }()
	end, got, werr := e.waitStream(ctx, uint64(e.o.n), e.o.drainTimeout, func(n uint64) { e.logf("%d in the stream", n) })
	res.Events, res.StreamMsgs = e.o.n, got
	cerr := fwd.Close()
	if rerr := <-runErr; rerr != nil && werr == nil {
		werr = rerr
	}
	if werr != nil {
		return werr
	}
	if cerr != nil {
		return cerr
	}
	took := end.Sub(start)
	res.Seconds = round3(took.Seconds())
	res.EventsPerSec = math1(float64(e.o.n) / took.Seconds())
	// Watermill keeps forwarded messages (the log schema moves an offset);
	// what is left to forward is what lies past the acked offset.
	var acked sql.NullInt64
	_ = db.QueryRowContext(ctx, `SELECT offset_acked FROM watermill_offsets_outbox WHERE consumer_group = ''`).Scan(&acked)
	if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM watermill_outbox WHERE "offset" > $1`, acked.Int64).Scan(&res.LeftInTable); err != nil {
		return err
	}
	return nil
}

// watermillLatency commits, at a fixed rate, transactions that insert an
// order and its line and publish its event to the forwarder's topic, with
// the forwarder running.
func watermillLatency(ctx context.Context, e *env, res *result) error {
	// The orders tables come from Bento's migration, so both systems write
	// the same business rows.
	bdb, err := openBento(ctx, e)
	if err != nil {
		return err
	}
	bdb.Close()
	db, err := openStd(e)
	if err != nil {
		return err
	}
	defer db.Close()
	fwd, _, err := newForwarder(e, db)
	if err != nil {
		return err
	}
	runErr := make(chan error, 1)
	go func() { runErr <- fwd.Run(context.WithoutCancel(ctx)) }()
	select {
	case <-fwd.Running():
	case err := <-runErr:
		return fmt.Errorf("forwarder: %w", err)
	case <-time.After(30 * time.Second):
		return errors.New("the forwarder did not start within 30s")
	}

	arr, err := e.consume(ctx, payloadKey)
	if err != nil {
		return err
	}
	c := e.newCommits()
	const (
		insOrder = `INSERT INTO orders (version, customer, status, total_cents, created_at, updated_at) VALUES (1, $1, 'pending', $2, $3, $3) RETURNING id`
		insLine  = `INSERT INTO order_lines (sku, quantity, unit_price_cents, order_lines) VALUES ($1, $2, $3, $4)`
	)
	took := openLoop(ctx, e.o.rate, e.o.duration, e.o.maxInFlight, c, func(ctx context.Context, i int) {
		started := time.Now()
		customer := fmt.Sprintf("latency-%d@example.com", i)
		err := func() (err error) {
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				return err
			}
			defer func() {
				if err != nil {
					_ = tx.Rollback()
				}
			}()
			var id int
			if err := tx.QueryRowContext(ctx, insOrder, customer, int64(2500), time.Now()).Scan(&id); err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, insLine, benchLine.SKU, benchLine.Quantity, benchLine.UnitPriceCents, id); err != nil {
				return err
			}
			if err := e.publishInTx(tx, orderPlaced(id, customer)); err != nil {
				return err
			}
			if err := tx.Commit(); err != nil {
				return err
			}
			c.record(int64(id), started, time.Now())
			return nil
		}()
		if err != nil {
			c.fail(err)
		}
	})
	err = e.finishLatency(c, arr, took, res)
	cerr := fwd.Close()
	<-runErr
	if err != nil {
		return err
	}
	res.StreamMsgs, _ = e.streamMsgs(ctx)
	return cerr
}
