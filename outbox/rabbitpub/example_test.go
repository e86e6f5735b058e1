package rabbitpub_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/bento-go/bento"
	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/ent"
	"github.com/bento-go/bento/outbox"
	"github.com/bento-go/bento/outbox/rabbitpub"
)

type orderPlaced struct {
	TotalCents int `json:"total_cents"`
}

func (orderPlaced) EventType() string { return "OrderPlaced" }

// A unit of work commits an event; the relay publishes it to RabbitMQ
// (OUTBOX_PUBLISHER=rabbitmq does the same in bento serve and bento
// relay). A consumer of a queue bound with "Order.*" applies it once: the
// inbox (outbox.MarkProcessed) skips a second delivery of the same
// message_id, as a republish after a relay crash would be.
func Example() {
	ctx := context.Background()
	const url, exchange = "amqp://guest:guest@127.0.0.1:5672/", "bento.example"
	dir, err := os.MkdirTemp("", "bento-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	cfg := config.Default()
	if cfg.DB.URL, err = config.ParseURL("sqlite://" + filepath.Join(dir, "shop.db")); err != nil {
		log.Fatal(err)
	}
	db, err := bento.Open(cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	if err := db.Migrate(ctx); err != nil {
		log.Fatal(err)
	}
	uow := ent.NewUnitOfWork(ent.NewClient(ent.Driver(db.Driver())))

	// The consumer's queue, bound before anything is published: a message
	// no queue is bound for is returned and dead-lettered.
	conn, err := amqp.Dial(url)
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		log.Fatal(err)
	}
	if err := ch.ExchangeDeclare(exchange, amqp.ExchangeTopic, true, false, false, false, nil); err != nil {
		log.Fatal(err)
	}
	defer ch.ExchangeDelete(exchange, false, false) // the example leaves nothing behind

	q, err := ch.QueueDeclare("", false, true, true, false, nil) // a real consumer's is durable and named
	if err != nil {
		log.Fatal(err)
	}
	if err := ch.QueueBind(q.Name, "Order.*", exchange, false, nil); err != nil {
		log.Fatal(err)
	}

	// The write side and the relay.
	if err := uow.Do(ctx, func(ctx context.Context, _ *ent.Client) error {
		return outbox.Record(ctx, "Order", "42", orderPlaced{TotalCents: 2500})
	}); err != nil {
		log.Fatal(err)
	}
	pub, err := rabbitpub.Connect(ctx, rabbitpub.Config{URL: url, Exchange: exchange})
	if err != nil {
		log.Fatal(err)
	}
	defer pub.Close()
	relay, err := db.NewRelay(pub, db.RelayConfig())
	if err != nil {
		log.Fatal(err)
	}
	defer relay.Close()
	res, err := relay.RunOnce(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("published:", res.Published)

	// The consumer: apply, then acknowledge. The same delivery twice (a
	// redelivery, or the relay's republish) is applied once.
	d, ok, err := ch.Get(q.Name, false)
	if err != nil || !ok {
		log.Fatal("no message in the queue: ", err)
	}
	fmt.Println(d.RoutingKey, d.Headers["Bento-Sequence"], string(d.Body))
	for range 2 {
		id, err := uuid.Parse(d.MessageId)
		if err != nil {
			log.Fatal(err)
		}
		err = uow.Do(ctx, func(ctx context.Context, tx *ent.Client) error {
			dup, err := outbox.MarkProcessed(ctx, db.Names(), "billing", id)
			if err != nil || dup {
				fmt.Println("duplicate: skipped")
				return err
			}
			fmt.Println("applied") // ... apply the event with tx ...
			return nil
		})
		if err != nil {
			log.Fatal(err) // not acknowledged: RabbitMQ redelivers it
		}
	}
	if err := d.Ack(false); err != nil {
		log.Fatal(err)
	}
	// Output:
	// published: 1
	// Order.OrderPlaced 1 {"total_cents":2500}
	// applied
	// duplicate: skipped
}

// consume is the consumer loop of docs/outbox.md ("The consumer side"),
// kept here so that it compiles.
func consume(ctx context.Context, ch *amqp.Channel, uow *ent.UnitOfWork, db *bento.DB) error {
	deliveries, err := ch.Consume("billing.orders", "billing", false, false, false, false, nil)
	if err != nil {
		return err
	}
	for d := range deliveries {
		id, err := uuid.Parse(d.MessageId)
		if err != nil {
			_ = d.Reject(false) // not a Bento event
			continue
		}
		err = uow.Do(ctx, func(ctx context.Context, tx *ent.Client) error {
			dup, err := outbox.MarkProcessed(ctx, db.Names(), "billing", id)
			if err != nil || dup {
				return err
			}
			// ... apply the event with tx ...
			return nil
		})
		if err != nil {
			_ = d.Nack(false, true) // RabbitMQ redelivers it
			continue
		}
		_ = d.Ack(false)
	}
	return nil
}

var _ = consume
