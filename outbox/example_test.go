package outbox_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"

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

// A relay publishing to NATS JetStream, as a service runs one (bento relay
// does the same): natspub.Connect, db.NewRelay, db.Listen, then relay.Run
// until ctx ends. A commit in this process wakes the relay at once; on
// PostgreSQL with OUTBOX_NOTIFY, db.Listen also wakes it on other processes'
// commits (elsewhere it returns nil and the relay polls every
// OUTBOX_POLL_INTERVAL). It runs against the NATS server at 127.0.0.1:4222,
// on a stream of its own that it deletes at the end.
func Example_natsRelay() {
	// In a service: signal.NotifyContext(ctx, syscall.SIGTERM, os.Interrupt).
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	db, client, cleanup := exampleDB() // in a service: config.Load, bento.Open
	defer cleanup()

	run := uuid.NewString()[:8] // a stream and subjects of this run only
	prefix, stream := "example-"+run, "EXAMPLE_"+run
	pub, err := natspub.Connect(ctx, natspub.Config{
		URL:           "nats://127.0.0.1:4222", // cfg.Outbox.NATSURL
		SubjectPrefix: prefix,                  // cfg.Outbox.SubjectPrefix
		Stream:        stream,                  // cfg.Outbox.Stream
		CreateStream:  true,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer pub.Close()
	defer pub.JetStream().DeleteStream(context.Background(), stream)

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
	stopped := make(chan error, 1)
	go func() { stopped <- relay.Run(ctx, listen) }()

	svc := shop.NewService(ent.NewUnitOfWork(client), client)
	if _, err := svc.Place(ctx, shop.PlaceOrder{Customer: "a@example.com",
		Lines: []shop.Line{{SKU: "SKU-1", Quantity: 2, UnitPriceCents: 1250}}}, ""); err != nil {
		log.Fatal(err)
	}

	// A consumer reads the event from the stream.
	cons, err := pub.JetStream().OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{})
	if err != nil {
		log.Fatal(err)
	}
	msg, err := cons.Next(jetstream.FetchMaxWait(10 * time.Second))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(strings.TrimPrefix(msg.Subject(), prefix+"."), "sequence", msg.Headers().Get(natspub.HeaderSequence))

	stop() // SIGTERM: Run returns after the batch in progress
	if err := <-stopped; err != nil {
		log.Fatal(err)
	}
	// Output:
	// Order.OrderPlaced sequence 1
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
