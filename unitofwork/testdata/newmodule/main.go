// Command shop places one order and its event through Bento.
package main

import (
	"context"
	"fmt"
	"log"

	"github.com/bento-go/bento"
	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/outbox"

	"example.com/shop/ent"
	"example.com/shop/ent/migrate"
)

// OrderPlaced is a domain event.
type OrderPlaced struct {
	OrderID int `json:"order_id"`
}

// EventType names the event in the outbox.
func (OrderPlaced) EventType() string { return "OrderPlaced" }

func main() {
	ctx := context.Background()
	cfg, err := config.Load(config.Source{}) // DB_URL and the rest from the environment
	if err != nil {
		log.Fatal(err)
	}
	db, err := bento.Open(cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	if err := db.Migrate(ctx, migrate.Tables...); err != nil {
		log.Fatal(err)
	}
	client := ent.NewClient(ent.Driver(db.Driver()))
	uow := ent.NewUnitOfWork(client)
	err = uow.Do(ctx, func(ctx context.Context, tx *ent.Client) error {
		o, err := tx.Order.Create().SetCustomer("a@example.com").SetTotalCents(2500).Save(ctx)
		if err != nil {
			return err
		}
		return outbox.Raise(ctx, o, OrderPlaced{OrderID: o.ID})
	})
	if err != nil {
		log.Fatal(err)
	}
	st, err := outbox.ReadStats(ctx, db.Driver(), db.Names())
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("pending events:", st.Pending)
}
