package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/bento-go/bento"
	"github.com/bento-go/bento/drain"
	"github.com/bento-go/bento/ent"
	"github.com/bento-go/bento/ent/migrate"
	"github.com/bento-go/bento/ids"
	"github.com/bento-go/bento/metrics"
	"github.com/bento-go/bento/replica"
	"github.com/bento-go/bento/resilience"
	"github.com/bento-go/bento/shop"
	"github.com/bento-go/bento/unitofwork"
)

// stack is a database opened with every Bento layer, as a service runs
// it: drain, metrics, outbox, resilience.
type stack struct {
	db      *bento.DB
	client  *ent.Client
	uow     *ent.UnitOfWork
	drainer *drain.Drainer
	metrics *metrics.Metrics
	reg     *prometheus.Registry
	ids     *ids.Blocks // the shop's ids (nil but on PostgreSQL)
}

// openStack opens the database with all layers and migrates it.
func (inv *invocation) openStack(ctx context.Context, migrateSchema bool) (*stack, error) {
	cfg := inv.cfg
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := metrics.New(reg)
	mode, err := drain.ParseMode(cfg.Drain.Mode)
	if err != nil {
		return nil, err
	}
	d := drain.New(drain.Config{Mode: mode, Timeout: cfg.Drain.Timeout, CheckInterval: cfg.Drain.CheckInterval,
		Logger: inv.logger, Observer: m})
	policy := bento.RetryPolicy(cfg.Retry)
	db, err := bento.Open(cfg, bento.WithLogger(inv.logger),
		bento.WithMiddleware(d.Middleware(), m.Middleware()), bento.WithReplicaObserver(m),
		bento.WithResilience(resilience.Options{Policy: policy, Logger: inv.logger, OnRetry: m.Retry, OnAmbiguous: m.Ambiguous}))
	if err != nil {
		return nil, err
	}
	d.SetPool(db.Pool(), db.Close)
	m.WatchPool(db.Pool())
	if r := db.Replicas(); r != nil {
		for _, p := range r.Pools() {
			m.WatchPool(p)
		}
	}
	m.WatchOutbox(db.Driver(), db.Names(), 2*time.Second)
	if migrateSchema {
		if err := db.Migrate(ctx, migrate.Tables...); err != nil {
			db.Close()
			return nil, err
		}
	}
	client := ent.NewClient(ent.Driver(db.Driver()))
	unitPolicy := policy
	unitPolicy.OnRetry = m.UnitRetry
	uow := ent.NewUnitOfWork(client, unitofwork.Retry(unitPolicy), unitofwork.WithObserver(m), unitofwork.Logger(inv.logger),
		unitofwork.Tables(db.Names()))
	return &stack{db: db, client: client, uow: uow, drainer: d, metrics: m, reg: reg,
		ids: ids.New(db.Driver(), db.Dialect(), ids.DefaultBlock).Retry(policy)}, nil
}

func serveCommand() command {
	var addr *string
	var migrateOnStart *bool
	return command{
		name:  "serve",
		short: "run the reference ecommerce HTTP service with its outbox relay",
		usage: `Serves the reference HTTP API (POST /orders, GET /orders/{id}, POST /orders/{id}/pay,
POST /orders/{id}/cancel, GET /healthz, GET /readyz, GET /metrics) on --addr, migrates the
schema on start (unless --migrate=false: see bento migrate apply), and runs the outbox relay in process (OUTBOX_PUBLISHER: log by default, nats).
With no configuration it uses the SQLite file bento.db in the working directory.

On SIGTERM or SIGINT: /readyz turns 503, DB_DRAIN_PRESTOP_DELAY passes, the listener stops
taking requests, the relay finishes its batch, the database drains (DB_DRAIN_MODE) and the
process exits 0. A second signal forces the drain. If the HTTP server fails, the same shutdown
runs and the process exits 1; a malformed --addr exits 2 before anything starts.`,
		flags: func(fs *flag.FlagSet) {
			addr = fs.String("addr", "127.0.0.1:8080", "listen address HOST:PORT")
			migrateOnStart = fs.Bool("migrate", true, "auto-migrate the schema on start; false when bento migrate apply applies versioned migrations")
		},
		run: func(ctx context.Context, inv *invocation) int {
			if err := checkAddr(*addr); err != nil {
				fmt.Fprintf(inv.stderr, "bento serve: --addr %q: %v; accepted: HOST:PORT with a port 0-65535, e.g. 127.0.0.1:8080, :8080, [::1]:8080 (port 0 picks a free one)\n", *addr, err)
				return exitConfig
			}
			return serve(ctx, inv, *migrateOnStart, func() (net.Listener, error) { return net.Listen("tcp", *addr) })
		},
	}
}

// checkAddr reports what is wrong with a listen address, before anything
// is opened: it must be HOST:PORT (the host may be empty) with a numeric
// port or a service name.
func checkAddr(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		var ae *net.AddrError
		if errors.As(err, &ae) {
			return errors.New(ae.Err)
		}
		return err
	}
	if port == "" {
		return errors.New("missing port")
	}
	if _, err := net.LookupPort("tcp", port); err != nil {
		return fmt.Errorf("invalid port %q", port)
	}
	return nil
}

// serve runs the service on the listener listen opens once the schema is
// migrated, until the first signal (ctx's end) or until the HTTP server
// fails; it returns exitOK after a shutdown on a signal, exitFail after one
// because the server failed (or if it could not start).
func serve(ctx context.Context, inv *invocation, migrateSchema bool, listen func() (net.Listener, error)) int {
	// ctx ends at the first signal; the service's own life is
	// governed by the shutdown sequence below.
	base := context.WithoutCancel(ctx)
	st, err := inv.openStack(base, migrateSchema)
	if err != nil {
		return inv.fail("", err)
	}
	db := st.db
	svc := shop.NewService(st.uow, st.client, shop.WithIDs(st.ids))

	workers, stopWorkers := context.WithCancel(base)
	defer stopWorkers()
	var wg sync.WaitGroup
	pub, closePub, err := bento.Publisher(base, inv.cfg.Outbox, db)
	if err != nil {
		db.Close()
		return inv.fail("", err)
	}
	if pub != nil {
		rc := db.RelayConfig()
		rc.Observer = st.metrics
		relay, err := db.NewRelay(pub, rc)
		if err != nil {
			closePub()
			db.Close()
			return inv.fail("", err)
		}
		defer relay.Close()
		if relay.Pool() != db.Pool() {
			st.metrics.WatchPool(relay.Pool())
		}
		listen, err := db.Listen(workers)
		if err != nil {
			closePub()
			db.Close()
			return inv.fail("", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := relay.Run(workers, listen); err != nil {
				inv.logger.Error("bento: relay stopped", "error", err.Error())
			}
		}()
	}
	defer closePub()
	wg.Add(1)
	go func() { defer wg.Done(); db.RunNotify(workers) }()

	// notReady is set when the drain begins: readiness fails from then on,
	// and every reply carries Connection: close.
	var notReady atomic.Bool
	handler := shop.NewHandler(svc, shop.HTTPOptions{
		Logger:  inv.logger,
		Metrics: promhttp.HandlerFor(st.reg, promhttp.HandlerOpts{}),
		Ready: func(ctx context.Context) error {
			if notReady.Load() || st.drainer.Draining() {
				return drain.ErrDraining
			}
			return db.Health(ctx, 2*time.Second)
		},
	})
	ln, err := listen()
	if err != nil {
		stopWorkers()
		wg.Wait()
		db.Close()
		return inv.fail("", fmt.Errorf("listening: %w", err))
	}
	// Each request is a read-your-writes session: after it commits,
	// its reads see the commit even with replicas behind. Once the drain
	// has begun, each reply carries Connection: close, so that a client
	// does not reuse a connection the server is about to drop, and the
	// server closes it after the reply. (Server.SetKeepAlivesEnabled(false)
	// would also close every idle connection at once, which races with a
	// request arriving on one: net/http can close a connection it still
	// counts idle after it has read the request, whose reply is then lost
	// although the handler ran.)
	sessions := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if notReady.Load() {
			w.Header().Set("Connection", "close")
		}
		handler.ServeHTTP(w, r.WithContext(replica.WithSession(r.Context())))
	})
	srv := &http.Server{Handler: sessions, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, IdleTimeout: 60 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	inv.logger.Info("bento: serving", "addr", ln.Addr().String(), "dialect", db.Dialect(), "url", inv.cfg.DB.URL,
		"publisher", inv.cfg.Outbox.Publisher, "drain_mode", inv.cfg.Drain.Mode)
	fmt.Fprintf(inv.stdout, "listening on http://%s\n", ln.Addr())

	shutdown := &drain.Shutdown{
		NotReady:     func() { notReady.Store(true) },
		PreStopDelay: inv.cfg.Drain.PreStopDelay,
		StopIntake:   srv.Shutdown,
		StopWorkers: func(ctx context.Context) error {
			stopWorkers()
			done := make(chan struct{})
			go func() { wg.Wait(); close(done) }()
			select {
			case <-done:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		},
		Drainer: st.drainer,
		Logger:  inv.logger,
	}
	failed := make(chan struct{})
	var serveErr error // set before failed is closed
	go func() {
		if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
			inv.logger.Error("bento: server failed", "error", err.Error())
			serveErr = err
			close(failed)
		}
	}()
	// The first signal is ctx's: main registered for SIGTERM and
	// SIGINT before anything started, so a signal that arrived
	// while starting (migrating) is not lost — shutdown.Wait would
	// only hear signals sent after it began listening, and main's
	// registration keeps the default action from ending the
	// process. Only a signal after the first escalates.
	var exitErr error
	select {
	case <-ctx.Done():
		inv.logger.Info("bento: shutdown: signal received", "cause", context.Cause(ctx).Error())
	case <-failed:
		exitErr = serveErr
	}
	escalate := make(chan os.Signal, 1)
	signal.Notify(escalate, syscall.SIGTERM, os.Interrupt)
	stats := shutdown.Run(escalate)
	signal.Stop(escalate)
	inv.logger.Info("bento: stopped", "drain_success", stats.Success, "in_flight_end", stats.InFlightEnd,
		"rejected", stats.Rejected, "took", stats.Took.Round(time.Millisecond))
	if exitErr != nil {
		return inv.fail("HTTP server failed", exitErr)
	}
	return exitOK
}
