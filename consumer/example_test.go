package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/bento-go/bento"
	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/consumer"
	"github.com/bento-go/bento/ent"
	"github.com/bento-go/bento/ent/migrate"
	"github.com/bento-go/bento/outbox"
	"github.com/bento-go/bento/outbox/natspub"
	"github.com/bento-go/bento/resilience"
	"github.com/bento-go/bento/shop"
)

// Handlers are typed by event: the registry decodes each payload into
// the handler's type and hands it the client bound to the transaction.
func ExampleHandle() {
	reg := consumer.NewRegistry[*ent.Client]()
	consumer.Handle(reg, "OrderPlaced", func(ctx context.Context, tx *ent.Client, ev shop.OrderPlaced, m consumer.Metadata) error {
		return tx.SummaryOrder.Create().
			SetOrderID(ev.OrderID).SetCustomer(ev.Customer).SetTotalCents(ev.TotalCents).
			Exec(ctx)
	})
	consumer.Handle(reg, "OrderCancelled", func(ctx context.Context, tx *ent.Client, ev shop.OrderCancelled, m consumer.Metadata) error {
		if m.Sequence < 2 {
			// No redelivery can fix this event: dead-letter it now.
			return consumer.Permanent(fmt.Errorf("order %d cancelled before it was placed", ev.OrderID))
		}
		return nil // ... apply it with tx ...
	})
	fmt.Println(reg.Types())
	// Output:
	// [OrderCancelled OrderPlaced]
}

// Permanent marks an error that redelivery cannot cure; anything else is
// retried with backoff until INBOX_MAX_DELIVER.
func ExamplePermanent() {
	err := consumer.Permanent(errors.New("unknown currency XYZ"))
	fmt.Println(resilience.Classify(err))
	fmt.Println(resilience.Classify(errors.New("the tax service answered 502")))
	// Output:
	// permanent
	// unknown
}

// A service's consumer process: the projection's handlers, a unit of work
// over the service's database, a durable consumer shared by its instances,
// and a drain on SIGTERM. "bento consume" runs this with the reference
// projection.
func Example_service() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	cfg, err := config.Load(config.Source{}) // DB_URL, OUTBOX_*, INBOX_*
	if err != nil {
		log.Fatal(err)
	}
	names := outbox.NamesFor(cfg.Outbox.Table)
	db, err := bento.Open(cfg, bento.WithTables(consumer.Schema(names)...))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	if err := db.Migrate(ctx, migrate.Tables...); err != nil {
		log.Fatal(err)
	}
	client := ent.NewClient(ent.Driver(db.Driver()))
	uow := ent.NewUnitOfWork(client)

	nc, err := nats.Connect(cfg.Outbox.NATSURL, nats.MaxReconnects(-1))
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		log.Fatal(err)
	}
	c, err := consumer.New(uow, js, shop.SummaryHandlers(), consumer.FromSettings(cfg))
	if err != nil {
		log.Fatal(err)
	}
	// Run returns once ctx ended and the events in hand are applied and
	// acknowledged.
	if err := c.Run(ctx); err != nil {
		log.Fatal(err)
	}
}

// The whole path on one SQLite file and the machine's NATS server
// (127.0.0.1:4222, or BENTO_TEST_NATS_URL): an order placed and paid, its
// events relayed to a stream of their own, consumed into the customer's
// summary — each once, in order.
func Example_projection() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "consumer-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	cfg := config.Default()
	if cfg.DB.URL, err = config.ParseURL("sqlite://" + filepath.Join(dir, "shop.db")); err != nil {
		log.Fatal(err)
	}
	db, err := bento.Open(cfg, bento.WithTables(consumer.Schema(outbox.NamesFor(""))...))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	if err := db.Migrate(ctx, migrate.Tables...); err != nil {
		log.Fatal(err)
	}
	client := ent.NewClient(ent.Driver(db.Driver()))
	uow := ent.NewUnitOfWork(client)
	svc := shop.NewService(uow, client)

	// The source: an order placed and paid, its two events relayed.
	o, err := svc.Place(ctx, shop.PlaceOrder{Customer: "ada@example.com",
		Lines: []shop.Line{{SKU: "TEA", Quantity: 2, UnitPriceCents: 1250}}}, "")
	if err != nil {
		log.Fatal(err)
	}
	if _, err := svc.Pay(ctx, o.ID); err != nil {
		log.Fatal(err)
	}
	url := os.Getenv("BENTO_TEST_NATS_URL")
	if url == "" {
		url = nats.DefaultURL
	}
	run := uuid.NewString()[:8] // a stream and subjects of this run's own
	streamName, prefix := "EXAMPLE_"+run, "example"+run
	pub, err := natspub.Connect(ctx, natspub.Config{URL: url, Stream: streamName, SubjectPrefix: prefix, CreateStream: true})
	if err != nil {
		log.Fatal(err)
	}
	defer pub.Close()
	defer pub.JetStream().DeleteStream(context.Background(), streamName)
	relay, err := db.NewRelay(pub, db.RelayConfig())
	if err != nil {
		log.Fatal(err)
	}
	defer relay.Close()
	if _, err := relay.RunOnce(ctx); err != nil {
		log.Fatal(err)
	}

	// The consumer, until the summary shows both events.
	c, err := consumer.New(uow, pub.JetStream(), shop.SummaryHandlers(),
		consumer.Config{Name: "summary", Stream: streamName, FilterSubject: prefix + ".>"})
	if err != nil {
		log.Fatal(err)
	}
	running, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(running) }()
	var s shop.Summary
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if s, err = svc.Summary(ctx, "ada@example.com"); err == nil && s.OrdersPaid == 1 {
			break
		}
	}
	stop()
	if err := <-done; err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s: %d placed, %d paid, %d cents spent\n", s.Customer, s.OrdersPlaced, s.OrdersPaid, s.TotalSpentCents)
	// Output:
	// ada@example.com: 1 placed, 1 paid, 2500 cents spent
}
