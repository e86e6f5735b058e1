package metrics_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bento-go/bento"
	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/drain"
	"github.com/bento-go/bento/ent"
	"github.com/bento-go/bento/ent/migrate"
	"github.com/bento-go/bento/metrics"
	"github.com/bento-go/bento/outbox"
	"github.com/bento-go/bento/resilience"
	"github.com/bento-go/bento/unitofwork"
)

// Example wires every hook the way bento serve does, on a SQLite file:
// drain → metrics → (Bento's outbox, resilience) middleware, the retry and
// ambiguous-commit hooks, the unit of work's observer and retry hook, the
// relay's observer, the pool and the outbox backlog. Everything goes to a
// registry of the caller's; serve it with
// promhttp.HandlerFor(reg, promhttp.HandlerOpts{}).
func Example() {
	dir, err := os.MkdirTemp("", "bento-metrics-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ctx := context.Background()

	cfg := config.Default() // or config.Load(config.Source{}) for DB_* and OUTBOX_*
	if cfg.DB.URL, err = config.ParseURL("sqlite://" + filepath.Join(dir, "shop.db")); err != nil {
		log.Fatal(err)
	}

	reg := prometheus.NewRegistry() // never the global default
	m := metrics.New(reg)
	d := drain.New(drain.Config{Observer: m})
	db, err := bento.Open(cfg,
		bento.WithMiddleware(d.Middleware(), m.Middleware()), // drain outermost, then metrics
		bento.WithReplicaObserver(m),                         // with DB_REPLICA_URLS
		bento.WithResilience(resilience.Options{
			Policy:      bento.RetryPolicy(cfg.Retry),
			OnRetry:     m.Retry,
			OnAmbiguous: m.Ambiguous,
		}))
	if err != nil {
		log.Fatal(err)
	}
	d.SetPool(db.Pool(), db.Close)
	m.WatchPool(db.Pool())
	m.WatchOutbox(db.Driver(), db.Names(), 2*time.Second)
	if err := db.Migrate(ctx, migrate.Tables...); err != nil {
		log.Fatal(err)
	}

	client := ent.NewClient(ent.Driver(db.Driver()))
	unitPolicy := bento.RetryPolicy(cfg.Retry)
	unitPolicy.OnRetry = m.UnitRetry // retries of whole units of work
	uow := ent.NewUnitOfWork(client, unitofwork.Retry(unitPolicy), unitofwork.WithObserver(m),
		unitofwork.Tables(db.Names()))

	rc := db.RelayConfig()
	rc.Observer = m
	relay, err := db.NewRelay(outbox.LogPublisher{Logger: db.Logger()}, rc)
	if err != nil {
		log.Fatal(err)
	}
	defer relay.Close()

	// One unit of work that records one event.
	err = uow.Do(ctx, func(ctx context.Context, tx *ent.Client) error {
		o, err := tx.Order.Create().SetCustomer("a@example.com").SetTotalCents(2500).Save(ctx)
		if err != nil {
			return err
		}
		return outbox.Raise(ctx, o, placed{ID: o.ID})
	})
	if err != nil {
		log.Fatal(err)
	}
	show(reg, "bento_units_of_work_total", `outcome="committed"`)
	show(reg, "bento_outbox_pending", "")
	if _, err := relay.RunOnce(ctx); err != nil {
		log.Fatal(err)
	}
	show(reg, "bento_outbox_published_total", "")
	show(reg, "bento_outbox_pending", "")
	show(reg, "bento_transaction_duration_seconds", `outcome="commit"`)

	d.Drain(ctx) // what a SIGTERM does in bento serve; closes the database
	show(reg, "bento_drain_state", "")

	// Output:
	// bento_units_of_work_total{outcome="committed"} 1
	// bento_outbox_pending 1
	// bento_outbox_published_total 1
	// bento_outbox_pending 0
	// bento_transaction_duration_seconds{outcome="commit"} present
	// bento_drain_state 2
}

// show prints the series of name whose labels render as want: its value,
// or "present" for a histogram.
func show(g prometheus.Gatherer, name, want string) {
	fams, err := g.Gather()
	if err != nil {
		log.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			var ls []string
			for _, lp := range m.GetLabel() {
				ls = append(ls, fmt.Sprintf("%s=%q", lp.GetName(), lp.GetValue()))
			}
			if strings.Join(ls, ",") != want {
				continue
			}
			label := name
			if want != "" {
				label += "{" + want + "}"
			}
			switch {
			case m.Counter != nil:
				fmt.Println(label, m.GetCounter().GetValue())
			case m.Gauge != nil:
				fmt.Println(label, m.GetGauge().GetValue())
			default:
				fmt.Println(label, "present")
			}
			return
		}
	}
	fmt.Println(name, "missing")
}
