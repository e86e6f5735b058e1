package drain_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bento-go/bento"
	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/drain"
	"github.com/bento-go/bento/ent"
	"github.com/bento-go/bento/ent/migrate"
	"github.com/bento-go/bento/shop"
)

// Example wires a Drainer and a Shutdown into an HTTP service, as
// docs/shutdown.md describes: the Drainer's middleware first, readiness
// false once shutdown starts, intake and workers stopped before the drain.
func Example() {
	dir, err := os.MkdirTemp("", "drain-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	// A service reads its environment: config.Load(config.Source{}).
	cfg, err := config.Load(config.Source{Environ: func() []string {
		return []string{"DB_URL=sqlite://" + filepath.Join(dir, "app.db"), "DB_DRAIN_TIMEOUT=10s"}
	}})
	if err != nil {
		log.Fatal(err)
	}

	// The Drainer counts the work in flight: its middleware goes first.
	mode, err := drain.ParseMode(cfg.Drain.Mode)
	if err != nil {
		log.Fatal(err)
	}
	d := drain.New(drain.Config{Mode: mode, Timeout: cfg.Drain.Timeout, CheckInterval: cfg.Drain.CheckInterval})
	db, err := bento.Open(cfg, bento.WithMiddleware(d.Middleware()))
	if err != nil {
		log.Fatal(err)
	}
	d.SetPool(db.Pool(), db.Close) // Drain closes the DB last
	ctx := context.Background()
	if err := db.Migrate(ctx, migrate.Tables...); err != nil {
		log.Fatal(err)
	}
	client := ent.NewClient(ent.Driver(db.Driver()))
	svc := shop.NewService(ent.NewUnitOfWork(client), client)

	// Readiness turns false as soon as the shutdown starts.
	var stopping atomic.Bool
	api := shop.NewHandler(svc, shop.HTTPOptions{Ready: func(ctx context.Context) error {
		if stopping.Load() || d.Draining() {
			return drain.ErrDraining
		}
		return db.Health(ctx, 2*time.Second)
	}})
	srv := &http.Server{Handler: api, ReadHeaderTimeout: 10 * time.Second}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	go srv.Serve(ln)

	// Background work (a relay, a consumer) stops before the drain.
	workers, stopWorkers := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); <-workers.Done() }()

	sd := &drain.Shutdown{
		NotReady:     func() { stopping.Store(true) },
		PreStopDelay: cfg.Drain.PreStopDelay,
		StopIntake:   srv.Shutdown, // in-flight requests finish
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
		Drainer: d,
	}

	resp, err := http.Post("http://"+ln.Addr().String()+"/orders", "application/json", strings.NewReader(
		`{"customer": "a@example.com", "lines": [{"sku": "SKU-1", "quantity": 2, "unit_price_cents": 1250}]}`))
	if err != nil {
		log.Fatal(err)
	}
	resp.Body.Close()
	fmt.Println("placed:", resp.Status)

	// A service blocks here until SIGTERM or SIGINT:
	//
	//	stats := sd.Wait(context.Background())
	//
	// This example ends Wait's context instead of sending a signal.
	now, cancel := context.WithCancel(ctx)
	cancel()
	stats := sd.Wait(now)
	fmt.Println("mode:", stats.Mode, "success:", stats.Success, "in flight at the end:", stats.InFlightEnd)

	_, err = db.Driver().ExecContext(ctx, "SELECT 1")
	fmt.Println("new work refused:", errors.Is(err, drain.ErrDraining))
	// Output:
	// placed: 201 Created
	// mode: graceful success: true in flight at the end: 0
	// new work refused: true
}
