package bento

import (
	"context"
	"fmt"

	"entgo.io/ent/dialect"

	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/dialects"
	"github.com/bento-go/bento/driver"
	"github.com/bento-go/bento/outbox"
	"github.com/bento-go/bento/outbox/natspub"
	"github.com/bento-go/bento/outbox/rabbitpub"
)

// RelayConfig returns the relay settings of the OUTBOX_* configuration for
// this database: table names, batch size, polling, attempts, backoff,
// retention and (SQLite) the single-relay lock. Callers may adjust it
// before NewRelay.
func (db *DB) RelayConfig() outbox.RelayConfig {
	c := db.cfg.Outbox
	return outbox.RelayConfig{
		Names: db.names, BatchSize: c.BatchSize, PollInterval: c.PollInterval, MaxAttempts: c.MaxAttempts,
		Backoff: c.Backoff, MaxBackoff: c.BackoffMax, Retention: c.Retention, IdempotencyRetention: c.IdempotencyRetention,
		Logger: db.logger, Lock: db.relayLock,
	}
}

// NewRelay returns a relay over this database publishing with pub. Unless
// cfg.Wake is set, the relay is woken by every commit in this process that
// wrote outbox rows; Close ends that. (A channel that is never ready, such as
// make(chan struct{}), turns the in-process wake-up off.) On SQLite it fails
// if another relay runs on the same database.
//
// With OUTBOX_OWN_CONNECTION (the default) a relay on PostgreSQL or MySQL
// claims and marks rows through a pool of its own, one connection (role
// "relay", the same middleware as the main pool but for the outbox writer
// and replica routing), which Close closes: application traffic that fills
// the main pool never makes the relay wait for a connection, and the relay
// never takes one from the application. On PostgreSQL that connection
// starts with outbox.PostgresSessionSettings, so no batch spends a round
// trip setting them. On SQLite the relay shares the pool, whose write slot
// serialises every writer of the file.
func (db *DB) NewRelay(pub outbox.Publisher, cfg outbox.RelayConfig) (r *outbox.Relay, err error) {
	release := func(f func()) {
		prev := cfg.Release
		cfg.Release = func() {
			f()
			if prev != nil {
				prev()
			}
		}
	}
	defer func() {
		if err != nil && cfg.Release != nil {
			cfg.Release()
		}
	}()
	if cfg.Wake == nil {
		wake, stop := db.notifier.Subscribe()
		cfg.Wake = wake
		release(stop)
	}
	drv := db.drv
	if db.cfg.Outbox.OwnConnection && db.Dialect() != dialect.SQLite {
		if drv, err = db.relayDriver(); err != nil {
			return nil, err
		}
		release(func() { _ = drv.Close() })
		cfg.SessionSettings = db.Dialect() == dialect.Postgres
	}
	return outbox.NewRelay(drv, pub, cfg)
}

// relayDriver opens the relay's own pool of one connection to the primary.
func (db *DB) relayDriver() (*driver.Driver, error) {
	rc := db.cfg.DB
	rc.PoolSize, rc.MaxOverflow = 1, 0
	// On PostgreSQL the connection starts with the batch's settings, so
	// no batch spends a round trip setting them.
	d, err := dialects.Open(rc, dialects.Options{DialContext: db.dial, Logger: db.logger, Settings: outbox.PostgresSessionSettings()})
	if err != nil {
		return nil, fmt.Errorf("bento: the relay's connection: %w", err)
	}
	pool := driver.NewPool(driver.PoolConfig{Role: "relay", Dialect: d.Dialect, DB: d.DB, MaxOpen: d.MaxOpen, Timeout: rc.PoolTimeout, PipelineBegin: true})
	return driver.New(driver.Config{Dialect: d.Dialect, Primary: pool, Middleware: db.relayMW}), nil
}

// Publisher builds the publisher OUTBOX_PUBLISHER names: a log publisher
// (outbox.NewLogPublisher: at most 10 per-event info lines per 10 s, the
// rest summarised), a NATS JetStream one (connected, its stream created if
// missing), a RabbitMQ one (connected, its exchange declared if missing),
// or nil for "none". close releases it (and logs the log publisher's last
// summary).
func Publisher(ctx context.Context, c config.Outbox, db *DB) (pub outbox.Publisher, close func() error, err error) {
	switch c.Publisher {
	case "log":
		p := outbox.NewLogPublisher(db.logger, outbox.LogLimit{})
		return p, func() error { p.Flush(); return nil }, nil
	case "nats":
		p, err := natspub.Connect(ctx, natspub.Config{URL: c.NATSURL, SubjectPrefix: c.SubjectPrefix, Stream: c.Stream, Replicas: c.StreamReplicas, CreateStream: true})
		if err != nil {
			return nil, nil, err
		}
		return p, p.Close, nil
	case "rabbitmq":
		p, err := rabbitpub.Connect(ctx, rabbitpub.Config{URL: c.RabbitMQURL, Exchange: c.RabbitMQExchange})
		if err != nil {
			return nil, nil, err
		}
		return p, p.Close, nil
	case "none":
		return nil, func() error { return nil }, nil
	}
	return nil, nil, &config.Error{Setting: "OUTBOX_PUBLISHER", Source: "config", Value: c.Publisher, Problem: "unknown publisher", Accepts: "log, nats, rabbitmq or none"}
}

// RunNotify sends NOTIFY after each commit that wrote outbox rows, so that
// relays in other processes wake at once (PostgreSQL with OUTBOX_NOTIFY).
// It returns when ctx ends; elsewhere it returns at once.
func (db *DB) RunNotify(ctx context.Context) {
	if db.Dialect() != dialect.Postgres || !db.cfg.Outbox.Notify {
		return
	}
	wake, stop := db.notifier.Subscribe()
	defer stop()
	outbox.NewPGNotifier(db.drv, outbox.DefaultChannel, db.logger).Run(ctx, wake)
}

// Listen starts listening for other processes' NOTIFY (PostgreSQL with
// OUTBOX_NOTIFY) until ctx ends and returns the channel to pass to
// Relay.Run; it returns nil elsewhere.
func (db *DB) Listen(ctx context.Context) (<-chan struct{}, error) {
	if db.Dialect() != dialect.Postgres || !db.cfg.Outbox.Notify {
		return nil, nil
	}
	cc, err := dialects.PostgresConnConfig(db.cfg.DB, dialects.Options{})
	if err != nil {
		return nil, fmt.Errorf("bento: listen: %w", err)
	}
	l := outbox.NewPGListener(cc, outbox.DefaultChannel, db.logger)
	go l.Run(ctx)
	return l.C(), nil
}
