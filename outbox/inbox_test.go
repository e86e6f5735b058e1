package outbox_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"

	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/ent"
	"github.com/bento-go/bento/ent/order"
	"github.com/bento-go/bento/internal/testdb"
	"github.com/bento-go/bento/outbox"
	"github.com/bento-go/bento/shop"
)

// consume is a consumer's handler: in one unit of work it marks the event
// processed for consumer and, unless it was a duplicate, applies it — here
// by creating an order whose customer names the consumer and the event, a
// side effect the test can count. fail makes the unit of work fail after
// both.
func consume(ctx context.Context, e *relayEnv, consumer string, m outbox.Message, fail bool) (duplicate bool, err error) {
	err = e.uow.Do(ctx, func(ctx context.Context, tx *ent.Client) error {
		dup, err := outbox.MarkProcessed(ctx, e.db.Names(), consumer, m.ID)
		if err != nil {
			return err
		}
		duplicate = dup
		if dup {
			return nil
		}
		if _, err := tx.Order.Create().SetCustomer(effectOf(consumer, m)).SetTotalCents(1).Save(ctx); err != nil {
			return err
		}
		if fail {
			return errConsumerFailed
		}
		return nil
	})
	return duplicate, err
}

var errConsumerFailed = errors.New("consumer failed after applying")

func effectOf(consumer string, m outbox.Message) string {
	return consumer + "+" + m.ID.String() + "@inbox.example"
}

// effects counts a consumer's side effects per event.
func (e *relayEnv) effects(consumer string) map[string]int {
	e.t.Helper()
	orders, err := e.client.Order.Query().Where(order.CustomerHasPrefix(consumer + "+")).All(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	out := map[string]int{}
	for _, o := range orders {
		out[strings.TrimSuffix(strings.TrimPrefix(o.Customer, consumer+"+"), "@inbox.example")]++
	}
	return out
}

// TestInboxAppliesOnce: invariant — a consumer that records each event
// with outbox.MarkProcessed in the unit of work that applies it applies a
// redelivered event once: its side effects, counted in the database, are
// one per event however many times and however concurrently the event is
// delivered. A unit of work that fails after marking leaves the event
// unprocessed, so its redelivery applies it; each consumer has its own
// inbox.
func TestInboxAppliesOnce(t *testing.T) {
	testdb.Each(t, func(t *testing.T, cfg config.Config) {
		w := openWriteEnv(t, cfg)
		uow := ent.NewUnitOfWork(w.client)
		e := &relayEnv{writeEnv: w, uow: uow, svc: shop.NewService(uow, w.client)}
		ctx := context.Background()
		const n = 20
		e.place(ctx, n)
		pub := outbox.NewChannelPublisher(n)
		r := newRelay(t, e.db, pub, nil)
		if _, err := r.RunOnce(ctx); err != nil {
			t.Fatal(err)
		}
		msgs := make([]outbox.Message, 0, n)
		for range n {
			msgs = append(msgs, <-pub.C())
		}
		check := func(consumer string) {
			t.Helper()
			got := e.effects(consumer)
			if len(got) != n {
				t.Errorf("%s: side effects for %d events, want %d", consumer, len(got), n)
			}
			for _, m := range msgs {
				if got[m.ID.String()] != 1 {
					t.Errorf("%s: event %s applied %d times, want once", consumer, m.ID, got[m.ID.String()])
				}
			}
			if c := e.count("SELECT COUNT(*) FROM bento_outbox_inbox WHERE consumer = ?", consumer); c != n {
				t.Errorf("%s: %d inbox rows, want %d", consumer, c, n)
			}
		}

		// Each event delivered three times in a row.
		for _, m := range msgs {
			for i := range 3 {
				dup, err := consume(ctx, e, "billing", m, false)
				if err != nil {
					t.Fatalf("billing %s, delivery %d: %v", m.ID, i+1, err)
				}
				if dup != (i > 0) {
					t.Fatalf("billing %s, delivery %d: duplicate = %v", m.ID, i+1, dup)
				}
			}
		}
		check("billing")

		// Four deliveries of every event at once, in random orders.
		var wg sync.WaitGroup
		errs := make(chan error, 4*n)
		for range 4 {
			perm := rand.Perm(n)
			wg.Go(func() {
				for _, i := range perm {
					if _, err := consume(ctx, e, "shipping", msgs[i], false); err != nil {
						errs <- err
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("shipping: %v", err)
		}
		check("shipping")

		// A unit of work that fails after marking and applying commits
		// neither: the redelivery applies the event.
		for _, m := range msgs {
			if _, err := consume(ctx, e, "audit", m, true); !errors.Is(err, errConsumerFailed) {
				t.Fatalf("audit, failing delivery: %v", err)
			}
		}
		if got := e.effects("audit"); len(got) != 0 {
			t.Fatalf("a failed unit of work left %d side effects", len(got))
		}
		for _, m := range msgs {
			if dup, err := consume(ctx, e, "audit", m, false); err != nil || dup {
				t.Fatalf("audit, redelivery after a failure: duplicate = %v, %v", dup, err)
			}
		}
		check("audit")

		// Outside a unit of work there is nothing to record the mark in.
		if _, err := outbox.MarkProcessed(ctx, e.db.Names(), "billing", msgs[0].ID); err == nil ||
			!strings.Contains(err.Error(), "unit of work") {
			t.Fatalf("MarkProcessed outside a unit of work: %v, want an error", err)
		}
	})
}
