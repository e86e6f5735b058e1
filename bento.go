// Package bento opens a database for an ent-based service and manages its
// life: Open (configuration → dialect → driver), Migrate (or versioned
// migrations: MigrateDiff, MigrateApply, MigrateStatus), Health, Info,
// DropAll and Close.
//
// A service passes Driver() to its generated ent client and migrates its
// schema together with Bento's own tables in one call:
//
//	cfg, err := config.Load(config.Source{})
//	db, err := bento.Open(cfg, bento.WithLogger(logger))
//	defer db.Close()
//	err = db.Migrate(ctx, migrate.Tables...) // the generated ent/migrate package
//	client := ent.NewClient(ent.Driver(db.Driver()))
//
// Nothing here holds global state: every DB is independent.
package bento

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"

	"entgo.io/ent/dialect"
	"entgo.io/ent/dialect/sql/schema"

	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/dialects"
	"github.com/bento-go/bento/driver"
	"github.com/bento-go/bento/outbox"
	"github.com/bento-go/bento/replica"
	"github.com/bento-go/bento/resilience"
)

// DB is an open database: its pool, its ent driver and its lifecycle. It is
// safe for concurrent use.
type DB struct {
	cfg    config.Config
	db     *dialects.Database
	pool   *driver.Pool
	drv    *driver.Driver
	logger *slog.Logger
	tables []*schema.Table

	names     outbox.Names
	notifier  *outbox.Notifier
	relayLock func() (func(), error) // SQLite: one relay per database

	relayMW []driver.Middleware // a relay's own pool's chain (NewRelay)
	dial    func(ctx context.Context, network, addr string) (net.Conn, error)

	router       *replica.Router
	stopReplicas context.CancelFunc

	migrateMu sync.Mutex // serialises Migrate within the process (SQLite has no advisory locks)
	devURL    config.URL // MigrateDiff's dev database (WithDevURL)
	closeOnce sync.Once
	closeErr  error
}

type options struct {
	logger     *slog.Logger
	middleware []driver.Middleware
	resilience resilience.Options
	replicaObs replica.Observer
	dial       func(ctx context.Context, network, addr string) (net.Conn, error)
	tables     []*schema.Table
	devURL     config.URL // MigrateDiff's dev database (WithDevURL)
}

// Option configures Open.
type Option func(*options)

// WithLogger sets the logger for the database and its layers. The default
// discards logs.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// WithMiddleware adds driver middleware outside Bento's own layers,
// outermost first.
func WithMiddleware(m ...driver.Middleware) Option {
	return func(o *options) { o.middleware = append(o.middleware, m...) }
}

// WithResilience adjusts the error classification and retry layer. A zero
// Policy takes the DB_RETRY_* settings; a nil Logger takes the DB's.
func WithResilience(r resilience.Options) Option { return func(o *options) { o.resilience = r } }

// RetryPolicy returns the retry policy of the DB_RETRY_* settings.
func RetryPolicy(c config.Retry) resilience.Policy {
	p := resilience.DefaultPolicy()
	p.MaxAttempts, p.BaseDelay, p.MaxDelay, p.MaxElapsed = c.Attempts, c.BaseDelay, c.MaxDelay, c.MaxElapsed
	return p
}

// WithReplicaObserver sets the observer of replica routing and health
// (metrics).
func WithReplicaObserver(obs replica.Observer) Option {
	return func(o *options) { o.replicaObs = obs }
}

// WithDialer replaces how connections to a server are dialed (PostgreSQL,
// MySQL). Fault tests use it to cut connections at chosen moments.
func WithDialer(dial func(ctx context.Context, network, addr string) (net.Conn, error)) Option {
	return func(o *options) { o.dial = dial }
}

// WithTables adds tables that Migrate creates and DropAll drops along with
// the user's and the outbox's.
func WithTables(t ...*schema.Table) Option {
	return func(o *options) { o.tables = append(o.tables, t...) }
}

// Open opens the database cfg.DB.URL names. It does not connect: the first
// statement does, and Health checks that it can.
func Open(cfg config.Config, opts ...Option) (*DB, error) {
	o := options{}
	for _, opt := range opts {
		opt(&o)
	}
	if o.logger == nil {
		o.logger = slog.New(slog.DiscardHandler)
	}
	if cfg.DB.URL.IsZero() {
		return nil, errors.New("bento: DB_URL is not set; accepted: a database URL (config.Load sets the default sqlite://bento.db)")
	}
	d, err := dialects.Open(cfg.DB, dialects.Options{DialContext: o.dial, Logger: o.logger})
	if err != nil {
		return nil, err
	}
	pool := driver.NewPool(driver.PoolConfig{
		Role: "primary", Dialect: d.Dialect, DB: d.DB, MaxOpen: d.MaxOpen, Timeout: cfg.DB.PoolTimeout,
		SerializeWrites: d.Capabilities.SingleWriter, PipelineBegin: true, BeginTxID: true,
		KeepIdle: d.KeepIdle, OverflowIdle: cfg.DB.PoolOverflowIdle,
	})
	// Outermost first: user middleware, then classification and retry,
	// then statement logging (which so sees every attempt).
	res := o.resilience
	if res.Policy.MaxAttempts == 0 {
		res.Policy = RetryPolicy(cfg.Retry)
	}
	if res.Logger == nil {
		res.Logger = o.logger
	}
	names := outbox.NamesFor(cfg.Outbox.Table)
	notifier := &outbox.Notifier{}
	resMW := resilience.Middleware(res)
	var echo []driver.Middleware
	if cfg.DB.Echo {
		echo = append(echo, driver.Echo(o.logger))
	}
	mw := append([]driver.Middleware(nil), o.middleware...)
	// The outbox sits outside resilience: it records the transaction id
	// from its insert before resilience needs it to resolve a COMMIT.
	mw = append(mw, outbox.Middleware(outbox.WriterOptions{Names: names, Dialect: d.Dialect, Wakers: []outbox.Waker{notifier}}), resMW)
	router, err := openReplicas(cfg, d.Dialect, pool, o)
	if err != nil {
		d.DB.Close()
		return nil, err
	}
	if router != nil {
		// Inside resilience: a retried read is routed afresh.
		mw = append(mw, router.Middleware())
	}
	mw = append(mw, echo...)
	// A relay's own pool (NewRelay): the same chain without the outbox
	// writer (a relay records no events) and the router (it works on the
	// primary).
	relayMW := append(append(append([]driver.Middleware(nil), o.middleware...), resMW), echo...)
	relayLock := outbox.MutexLock()
	if d.Dialect == dialect.SQLite && !cfg.DB.URL.Memory() {
		relayLock = outbox.FileLock(cfg.DB.URL.AbsPath() + ".relay.lock")
	}
	db := &DB{
		cfg: cfg, db: d, pool: pool, logger: o.logger, names: names, notifier: notifier, relayLock: relayLock,
		router: router, relayMW: relayMW, dial: o.dial, devURL: o.devURL,
		tables: append(outbox.Tables(names), o.tables...),
		drv:    driver.New(driver.Config{Dialect: d.Dialect, Primary: pool, Middleware: mw}),
	}
	if router != nil {
		ctx, cancel := context.WithCancel(context.Background())
		db.stopReplicas = cancel
		go router.Run(ctx)
	}
	return db, nil
}

// openReplicas opens the DB_REPLICA_URLS pools, each sized like the
// primary unless DB_REPLICA_POOL_SIZE/MAX_OVERFLOW say otherwise.
func openReplicas(cfg config.Config, dialectName string, primary *driver.Pool, o options) (*replica.Router, error) {
	if len(cfg.DB.ReplicaURLs) == 0 {
		return nil, nil
	}
	var (
		pools []*driver.Pool
		urls  []string
	)
	for i, u := range cfg.DB.ReplicaURLs {
		rc := cfg.DB
		rc.URL = u
		if rc.ReplicaPoolSize >= 0 {
			rc.PoolSize = rc.ReplicaPoolSize
		}
		if rc.ReplicaMaxOverflow >= 0 {
			rc.MaxOverflow = rc.ReplicaMaxOverflow
		}
		rd, err := dialects.Open(rc, dialects.Options{DialContext: o.dial, Logger: o.logger})
		if err != nil {
			for _, p := range pools {
				p.Close()
			}
			return nil, fmt.Errorf("bento: replica %d: %w", i+1, err)
		}
		pools = append(pools, driver.NewPool(driver.PoolConfig{
			Role: fmt.Sprintf("replica-%d", i+1), Dialect: rd.Dialect, DB: rd.DB, MaxOpen: rd.MaxOpen, Timeout: cfg.DB.PoolTimeout,
			KeepIdle: rd.KeepIdle, OverflowIdle: cfg.DB.PoolOverflowIdle,
		}))
		urls = append(urls, u.String())
	}
	router := replica.New(dialectName, primary, pools, urls, replica.Config{
		MaxLag: cfg.DB.ReplicaMaxLag, CheckInterval: cfg.DB.ReplicaCheckInterval,
		ReadYourWritesWindow: cfg.DB.ReadYourWritesWindow, Logger: o.logger, Observer: o.replicaObs,
	})
	return router, nil
}

// Replicas returns the replica router, or nil without DB_REPLICA_URLS.
func (db *DB) Replicas() *replica.Router { return db.router }

// Driver returns the ent driver: ent.NewClient(ent.Driver(db.Driver())).
func (db *DB) Driver() *driver.Driver { return db.drv }

// Dialect returns "postgres", "mysql" or "sqlite3".
func (db *DB) Dialect() string { return db.db.Dialect }

// Capabilities returns what the database supports.
func (db *DB) Capabilities() dialects.Capabilities { return db.db.Capabilities }

// Config returns the configuration the DB was opened with.
func (db *DB) Config() config.Config { return db.cfg }

// Pool returns the primary pool.
func (db *DB) Pool() *driver.Pool { return db.pool }

// Logger returns the DB's logger.
func (db *DB) Logger() *slog.Logger { return db.logger }

// Health runs SELECT 1 on the primary within timeout (the connect timeout
// plus one second when timeout <= 0), once: a health check reports a fault
// instead of retrying through it. The error says what failed and where,
// with the URL redacted.
func (db *DB) Health(ctx context.Context, timeout time.Duration) error {
	if timeout <= 0 {
		timeout = db.cfg.DB.ConnectTimeout + time.Second
	}
	ctx, cancel := context.WithTimeout(driver.UsePrimary(resilience.WithoutRetry(ctx)), timeout)
	defer cancel()
	var one int
	rows, err := db.drv.QueryContext(ctx, "SELECT 1")
	if err == nil {
		if rows.Next() {
			err = rows.Scan(&one)
		}
		err = errors.Join(err, rows.Err(), rows.Close())
	}
	if err == nil && one != 1 {
		err = fmt.Errorf("SELECT 1 returned %d", one)
	}
	if err != nil {
		if ctx.Err() != nil && errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("bento: health: %s at %s did not answer within %s: %w", db.db.Dialect, db.cfg.DB.URL, timeout, err)
		}
		return fmt.Errorf("bento: health: %s at %s: %w", db.db.Dialect, db.cfg.DB.URL, err)
	}
	return nil
}

// Info describes the database for operators; it never contains a password.
type Info struct {
	Dialect       string                `json:"dialect"`
	ServerVersion string                `json:"server_version"`
	URL           string                `json:"url"`
	Pool          driver.PoolStats      `json:"pool"`
	Capabilities  dialects.Capabilities `json:"capabilities"`
	Settings      map[string]string     `json:"settings"`
	// Replicas lists each replica with its state, lag and pool.
	Replicas []ReplicaInfo `json:"replicas,omitempty"`
}

// ReplicaInfo is one replica in Info.
type ReplicaInfo struct {
	replica.State
	Pool driver.PoolStats `json:"pool"`
}

// Info asks the server for its version and reports the pool's statistics.
func (db *DB) Info(ctx context.Context) (Info, error) {
	info := Info{
		Dialect: db.db.Dialect, URL: db.cfg.DB.URL.String(), Pool: db.pool.Stats(),
		Capabilities: db.db.Capabilities, Settings: map[string]string{},
	}
	for _, a := range db.cfg.LogValue().Group() {
		info.Settings[a.Key] = a.Value.String()
	}
	ctx, cancel := context.WithTimeout(driver.UsePrimary(resilience.WithoutRetry(ctx)), db.cfg.DB.ConnectTimeout+time.Second)
	defer cancel()
	rows, err := db.drv.QueryContext(ctx, db.db.VersionQuery)
	if err != nil {
		return info, fmt.Errorf("bento: info: %s at %s: %w", db.db.Dialect, db.cfg.DB.URL, err)
	}
	defer rows.Close()
	if rows.Next() {
		if err := rows.Scan(&info.ServerVersion); err != nil {
			return info, fmt.Errorf("bento: info: reading the server version: %w", err)
		}
	}
	if err := rows.Err(); err != nil {
		return info, fmt.Errorf("bento: info: reading the server version: %w", err)
	}
	info.Pool = db.pool.Stats()
	if db.router != nil {
		db.router.CheckNow(ctx)
		pools := db.router.Pools()
		for i, st := range db.router.States() {
			info.Replicas = append(info.Replicas, ReplicaInfo{State: st, Pool: pools[i].Stats()})
		}
	}
	return info, nil
}

// Names returns the framework's table names (OUTBOX_TABLE).
func (db *DB) Names() outbox.Names { return db.names }

// Notifier is woken after every COMMIT that wrote outbox rows; relays in
// this process subscribe to it.
func (db *DB) Notifier() *outbox.Notifier { return db.notifier }

// Tables returns the framework's tables (the outbox's and any registered
// with WithTables).
func (db *DB) Tables() []*schema.Table { return slices.Clone(db.tables) }

// Close closes the pool. It does not drain in-flight work: see package
// drain. Calling it again returns the first call's result.
func (db *DB) Close() error {
	db.closeOnce.Do(func() {
		if db.stopReplicas != nil {
			db.stopReplicas()
		}
		errs := []error{db.drv.Close()}
		if db.router != nil {
			for _, p := range db.router.Pools() {
				errs = append(errs, p.Close())
			}
		}
		db.closeErr = errors.Join(errs...)
	})
	return db.closeErr
}
