package outbox_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/google/uuid"

	"github.com/bento-go/bento"
	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/ent"
	"github.com/bento-go/bento/ent/migrate"
	"github.com/bento-go/bento/outbox"
	"github.com/bento-go/bento/outbox/natspub"
	"github.com/bento-go/bento/shop"
)

// exampleDB opens a migrated SQLite database in a temporary directory.
func exampleDB() (db *bento.DB, client *ent.Client, cleanup func()) {
	dir, err := os.MkdirTemp("", "bento-example")
	if err != nil {
		log.Fatal(err)
	}
	cfg := config.Default()
	if cfg.DB.URL, err = config.ParseURL("sqlite://" + filepath.Join(dir, "shop.db")); err != nil {
		log.Fatal(err)
	}
	if db, err = bento.Open(cfg); err != nil {
		log.Fatal(err)
	}
	if err := db.Migrate(context.Background(), migrate.Tables...); err != nil {
		log.Fatal(err)
	}
	return db, ent.NewClient(ent.Driver(db.Driver())), func() { db.Close(); os.RemoveAll(dir) }
}

// A use case commits an order and its OrderPlaced event together; a relay
// publishes the event (here to an in-process channel) and deletes the row.
func Example_relay() {
	ctx := context.Background()
	db, client, cleanup := exampleDB()
	defer cleanup()
	svc := shop.NewService(ent.NewUnitOfWork(client), client)
	if _, err := svc.Place(ctx, shop.PlaceOrder{Customer: "a@example.com",
		Lines: []shop.Line{{SKU: "SKU-1", Quantity: 2, UnitPriceCents: 1250}}}, ""); err != nil {
		log.Fatal(err)
	}

	pub := outbox.NewChannelPublisher(10)
	relay, err := db.NewRelay(pub, db.RelayConfig())
	if err != nil {
		log.Fatal(err) // on SQLite: another relay runs on this database
	}
	defer relay.Close()
	res, err := relay.RunOnce(ctx)
	if err != nil {
		log.Fatal(err)
	}
	m := <-pub.C()
	fmt.Println(res.Published, m.AggregateType, m.Type, m.Sequence)

	st, err := outbox.ReadStats(ctx, db.Driver(), db.Names())
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("pending:", st.Pending, "dead:", st.Dead)
	// Output:
	// 1 Order OrderPlaced 1
	// pending: 0 dead: 0
}

// A relay process publishing to NATS JetStream until SIGTERM, woken by
// commits in its own process and, on PostgreSQL, by other processes'
// NOTIFY. Most services run "bento relay" instead, which does this.
func Example_natsRelay() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	cfg, err := config.Load(config.Source{}) // DB_URL, OUTBOX_*
	if err != nil {
		log.Fatal(err)
	}
	db, err := bento.Open(cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	pub, err := natspub.Connect(ctx, natspub.Config{
		URL: cfg.Outbox.NATSURL, SubjectPrefix: cfg.Outbox.SubjectPrefix, Stream: cfg.Outbox.Stream, CreateStream: true,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer pub.Close()

	rc := db.RelayConfig() // OUTBOX_* settings, the in-process wake-up
	rc.BatchSize = 500     // adjust before NewRelay if needed
	relay, err := db.NewRelay(pub, rc)
	if err != nil {
		log.Fatal(err)
	}
	defer relay.Close()
	listen, err := db.Listen(ctx) // nil except on PostgreSQL with OUTBOX_NOTIFY
	if err != nil {
		log.Fatal(err)
	}
	if err := relay.Run(ctx, listen); err != nil {
		log.Fatal(err)
	}
}

// A consumer applies each event once: the inbox mark commits with the
// consumer's own changes, so a redelivered event is skipped.
func ExampleMarkProcessed() {
	ctx := context.Background()
	db, client, cleanup := exampleDB() // the consumer's database
	defer cleanup()
	uow := ent.NewUnitOfWork(client)
	eventID := uuid.Must(uuid.NewV7()) // from the message's Nats-Msg-Id header

	for range 2 { // a delivery, then its redelivery
		err := uow.Do(ctx, func(ctx context.Context, tx *ent.Client) error {
			dup, err := outbox.MarkProcessed(ctx, db.Names(), "billing", eventID)
			if err != nil || dup {
				fmt.Println("duplicate: skipped")
				return err
			}
			fmt.Println("applied") // ... apply the event with tx ...
			return nil
		})
		if err != nil {
			log.Print(err) // not acknowledged: the broker redelivers it
		}
	}
	// Output:
	// applied
	// duplicate: skipped
}
