package outbox_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bento-go/bento"
	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/ent"
	"github.com/bento-go/bento/internal/testdb"
	"github.com/bento-go/bento/outbox"
	"github.com/bento-go/bento/shop"
)

// drainEnv is a migrated database and the reference shop on it: each
// order placed writes one OrderPlaced row.
type drainEnv struct {
	t   *testing.T
	db  *bento.DB
	svc *shop.Service
}

func openDrainEnv(t *testing.T, cfg config.Config) *drainEnv {
	t.Helper()
	w := openWriteEnv(t, cfg)
	return &drainEnv{t: t, db: w.db, svc: shop.NewService(ent.NewUnitOfWork(w.client), w.client)}
}

// place places n orders and returns their ids.
func (e *drainEnv) place(n int) []int {
	e.t.Helper()
	var ids []int
	for i := range n {
		o, err := e.svc.Place(context.Background(), shop.PlaceOrder{Customer: fmt.Sprintf("drain%d@example.com", i),
			Lines: []shop.Line{{SKU: "S", Quantity: 1, UnitPriceCents: 1}}}, "")
		if err != nil {
			e.t.Fatalf("Place: %v", err)
		}
		ids = append(ids, o.ID)
	}
	return ids
}

// relay starts a relay publishing to pub until the test ends.
func (e *drainEnv) relay(pub outbox.Publisher, adjust func(*outbox.RelayConfig)) {
	e.t.Helper()
	rc := e.db.RelayConfig()
	rc.PollInterval = 20 * time.Millisecond
	if adjust != nil {
		adjust(&rc)
	}
	r, err := e.db.NewRelay(pub, rc)
	if err != nil {
		e.t.Fatalf("NewRelay: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	e.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			e.t.Errorf("Run: %v", err)
		}
		r.Close()
	})
}

// orderOf returns the order id of an OrderPlaced message.
func orderOf(m outbox.Message) int {
	var ev shop.OrderPlaced
	_ = json.Unmarshal(m.Payload, &ev)
	return ev.OrderID
}

func (e *drainEnv) wait(timeout time.Duration) (outbox.Stats, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return outbox.WaitDrained(ctx, e.db.Driver(), e.db.Names(), outbox.WaitOptions{Interval: 10 * time.Millisecond})
}

// Without a relay nothing drains: WaitDrained gives up when its context
// ends, saying how many events are pending.
func TestWaitDrainedNoRelay(t *testing.T) {
	testdb.Each(t, func(t *testing.T, cfg config.Config) {
		e := openDrainEnv(t, cfg)
		e.place(2)
		st, err := e.wait(300 * time.Millisecond)
		if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(fmt.Sprint(err), "2 events still pending") {
			t.Fatalf("err %v; want the deadline, naming 2 pending events", err)
		}
		if st.Pending != 2 {
			t.Fatalf("stats %+v, want 2 pending", st)
		}
	})
}

// Invariant: when WaitDrained returns nil, the publisher has received
// every event written before the call (counted at the publisher), and an
// event waiting for its backoff after a failure keeps it waiting.
func TestWaitDrainedWaitsForEveryEvent(t *testing.T) {
	testdb.Each(t, func(t *testing.T, cfg config.Config) {
		e := openDrainEnv(t, cfg)
		const n = 40
		ids := e.place(n)
		// The last order's event fails until failing is cleared; after a
		// failure the relay waits 400 ms before trying it again.
		poison := ids[n-1]
		var failing atomic.Bool
		var failures atomic.Int64
		failing.Store(true)
		pub := outbox.NewChannelPublisher(2 * n)
		pub.Reject = func(m outbox.Message) error {
			if failing.Load() && orderOf(m) == poison {
				failures.Add(1)
				return errors.New("refused for the test")
			}
			return nil
		}
		e.relay(pub, func(rc *outbox.RelayConfig) {
			rc.Backoff, rc.MaxBackoff, rc.MaxAttempts = 400*time.Millisecond, 400*time.Millisecond, 1000
		})
		deadline := time.Now().Add(20 * time.Second)
		for failures.Load() == 0 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if failures.Load() == 0 {
			t.Fatal("the poison event was never tried")
		}
		// Its row is pending with a next attempt in the future: not drained.
		if _, err := e.wait(250 * time.Millisecond); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("WaitDrained returned %v while an event waited for its retry; want it to keep waiting", err)
		}
		failing.Store(false)
		st, err := e.wait(20 * time.Second)
		if err != nil || st.Pending != 0 || st.Dead != 0 {
			t.Fatalf("WaitDrained: %+v, %v; want drained with no dead letter", st, err)
		}
		if got := len(pub.C()); got != n {
			t.Fatalf("the publisher holds %d messages when WaitDrained returned, want %d", got, n)
		}
	})
}

// List shows every status with the relay's state, oldest first, filtered
// and limited.
func TestList(t *testing.T) {
	testdb.Each(t, func(t *testing.T, cfg config.Config) {
		e := openDrainEnv(t, cfg)
		ctx := context.Background()
		ids := e.place(3)
		poison := ids[1]
		pub := outbox.NewChannelPublisher(10)
		pub.Reject = func(m outbox.Message) error {
			if orderOf(m) == poison {
				return &outbox.PermanentError{Err: errors.New("no such customer")}
			}
			return nil
		}
		rc := e.db.RelayConfig()
		rc.Retention = time.Hour // keep the published rows to list them
		r, err := e.db.NewRelay(pub, rc)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		if res, err := r.RunOnce(ctx); err != nil || res.Published != 2 || res.Dead != 1 {
			t.Fatalf("RunOnce: %+v, %v; want 2 published, 1 dead", res, err)
		}
		e.place(1) // pending

		all, err := outbox.List(ctx, e.db.Driver(), e.db.Names(), outbox.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var statuses []string
		for _, x := range all {
			statuses = append(statuses, x.Status)
		}
		if got := strings.Join(statuses, ","); got != "published,dead,published,pending" {
			t.Fatalf("statuses oldest first %q, want published,dead,published,pending", got)
		}
		for i, x := range all {
			if x.AggregateType != "Order" || x.Type != "OrderPlaced" || x.Sequence != 1 || x.OccurredAt.IsZero() ||
				time.Since(x.OccurredAt) > time.Hour || time.Since(x.OccurredAt) < 0 {
				t.Errorf("row %d: %+v", i, x)
			}
			if i < 3 && x.AggregateID != fmt.Sprint(ids[i]) {
				t.Errorf("row %d is aggregate %s, want %d", i, x.AggregateID, ids[i])
			}
		}
		dead := all[1]
		if dead.Attempts != 1 || !strings.Contains(dead.LastError, "no such customer") || !dead.PublishedAt.IsZero() {
			t.Errorf("dead row %+v; want 1 attempt, its error, no published_at", dead)
		}
		if all[0].PublishedAt.IsZero() || all[0].LastError != "" || all[3].Attempts != 0 || !all[3].PublishedAt.IsZero() {
			t.Errorf("published row %+v, pending row %+v", all[0], all[3])
		}

		for status, want := range map[string]int{outbox.StatusPending: 1, outbox.StatusDead: 1, outbox.StatusPublished: 2} {
			got, err := outbox.List(ctx, e.db.Driver(), e.db.Names(), outbox.ListOptions{Status: status})
			if err != nil || len(got) != want {
				t.Errorf("status %s: %d rows (%v), want %d", status, len(got), err, want)
			}
			for _, x := range got {
				if x.Status != status {
					t.Errorf("status %s: a %s row", status, x.Status)
				}
			}
		}
		two, err := outbox.List(ctx, e.db.Driver(), e.db.Names(), outbox.ListOptions{Limit: 2})
		if err != nil || len(two) != 2 || two[0].ID != all[0].ID || two[1].ID != all[1].ID {
			t.Errorf("limit 2: %+v, %v; want the two oldest", two, err)
		}
		for _, bad := range []outbox.ListOptions{{Status: "done"}, {Limit: -1}} {
			if _, err := outbox.List(ctx, e.db.Driver(), e.db.Names(), bad); err == nil || !strings.Contains(err.Error(), "accepted") {
				t.Errorf("%+v: %v; want an error saying what is accepted", bad, err)
			}
		}
	})
}
