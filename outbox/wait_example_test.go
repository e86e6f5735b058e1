package outbox_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/bento-go/bento/ent"
	"github.com/bento-go/bento/outbox"
	"github.com/bento-go/bento/shop"
)

// A relay runs in the background; WaitDrained returns once it has
// published every event (a test, or a shutdown that wants the outbox
// empty, waits like this). List shows the events without SQL.
func ExampleWaitDrained() {
	ctx := context.Background()
	db, client, cleanup := exampleDB()
	defer cleanup()
	svc := shop.NewService(ent.NewUnitOfWork(client), client)
	for _, customer := range []string{"a@example.com", "b@example.com"} {
		if _, err := svc.Place(ctx, shop.PlaceOrder{Customer: customer,
			Lines: []shop.Line{{SKU: "SKU-1", Quantity: 1, UnitPriceCents: 100}}}, ""); err != nil {
			log.Fatal(err)
		}
	}
	pending, err := outbox.List(ctx, db.Driver(), db.Names(), outbox.ListOptions{Status: outbox.StatusPending})
	if err != nil {
		log.Fatal(err)
	}
	for _, e := range pending {
		fmt.Println(e.Status, e.AggregateType, e.Type, e.Sequence, e.Attempts)
	}

	pub := outbox.NewChannelPublisher(10)
	relay, err := db.NewRelay(pub, db.RelayConfig())
	if err != nil {
		log.Fatal(err)
	}
	defer relay.Close()
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- relay.Run(runCtx) }()

	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	st, err := outbox.WaitDrained(ctx, db.Driver(), db.Names(), outbox.WaitOptions{})
	if err != nil {
		log.Fatal(err) // names how many events are still pending
	}
	fmt.Println("pending:", st.Pending, "dead:", st.Dead, "published:", len(pub.C()))
	stop()
	if err := <-done; err != nil {
		log.Fatal(err)
	}
	// Output:
	// pending Order OrderPlaced 1 0
	// pending Order OrderPlaced 1 0
	// pending: 0 dead: 0 published: 2
}
