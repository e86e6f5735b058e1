package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/consumer"
	"github.com/bento-go/bento/ent"
	"github.com/bento-go/bento/ent/summaryorder"
	"github.com/bento-go/bento/internal/testdb"
	"github.com/bento-go/bento/metrics"
	"github.com/bento-go/bento/outbox/natspub"
	"github.com/bento-go/bento/resilience"
)

// step is the test event: it records effect N, unless Mode says to fail.
type step struct {
	N    int    `json:"n"`
	Mode string `json:"mode"`
}

// publishStep publishes a step event of aggregate Step/agg with Bento's
// headers, as the relay would, and returns its event id.
func (e *env) publishStep(agg string, seq int64, payload string) uuid.UUID {
	e.t.Helper()
	id := uuid.Must(uuid.NewV7())
	m := nats.NewMsg("bento.Step.Step")
	m.Data = []byte(payload)
	m.Header.Set(jetstream.MsgIDHeader, id.String())
	m.Header.Set(natspub.HeaderAggregateType, "Step")
	m.Header.Set(natspub.HeaderAggregateID, agg)
	m.Header.Set(natspub.HeaderEventType, "Step")
	m.Header.Set(natspub.HeaderSequence, strconv.FormatInt(seq, 10))
	m.Header.Set(natspub.HeaderOccurredAt, time.Now().UTC().Format(time.RFC3339Nano))
	if _, err := e.js.PublishMsg(context.Background(), m); err != nil {
		e.t.Fatal(err)
	}
	return id
}

// effects returns the N of every applied step, sorted.
func (e *env) effects() []int {
	e.t.Helper()
	ns, err := e.client.SummaryOrder.Query().Order(ent.Asc(summaryorder.FieldOrderID)).Select(summaryorder.FieldOrderID).Ints(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	return ns
}

// stepRegistry applies steps; poisonFixed makes "poison" steps succeed.
func stepRegistry(poisonFixed *atomic.Bool, block chan struct{}, entered chan<- struct{}) *consumer.Registry[*ent.Client] {
	reg := consumer.NewRegistry[*ent.Client]()
	consumer.Handle(reg, "Step", func(ctx context.Context, tx *ent.Client, ev step, m consumer.Metadata) error {
		switch ev.Mode {
		case "flaky":
			if m.Delivery < 3 {
				return &resilience.Error{Category: resilience.Transient, Err: fmt.Errorf("flaky step %d, delivery %d", ev.N, m.Delivery)}
			}
		case "poison":
			if !poisonFixed.Load() {
				return consumer.Permanent(fmt.Errorf("step %d breaks a rule", ev.N))
			}
		case "always":
			return errors.New("this step always fails")
		case "block":
			entered <- struct{}{}
			<-block
		}
		return tx.SummaryOrder.Create().SetOrderID(ev.N).SetCustomer("steps@example.com").SetTotalCents(0).Exec(ctx)
	})
	return reg
}

// TestFailures: invariants — a transient failure is retried with backoff
// and applied once; a permanent failure, an undecodable payload and a
// message that is no Bento event are dead-lettered at their first
// delivery; an unclassified failure is dead-lettered at MaxDeliver; an
// aggregate's later events are applied after its dead letter (and wait
// for its retried one); Requeue applies a dead letter once its cause is
// fixed, and only once.
func TestFailures(t *testing.T) {
	testdb.Each(t, func(t *testing.T, cfg config.Config) {
		e := newEnv(t, cfg)
		var fixed atomic.Bool
		obs := &counts{}
		reg := prometheus.NewRegistry()
		ccfg := fastConfig("steps", tee{obs, metrics.NewInbox(reg)})
		ccfg.MaxDeliver = 3
		e.run(stepRegistry(&fixed, nil, nil), ccfg)

		e.publishStep("A", 1, `{"n":1}`)
		poison := e.publishStep("A", 2, `{"n":2,"mode":"poison"}`)
		e.publishStep("A", 3, `{"n":3}`)
		e.publishStep("B", 1, `{"n":10,"mode":"flaky"}`)
		e.publishStep("B", 2, `{"n":11}`)
		e.publishStep("C", 1, `{"n":20,"mode":"always"}`)
		e.publishStep("C", 2, `{"n":21}`)
		e.publishStep("D", 1, `{"n":`)
		e.publishStep("D", 2, `{"n":31}`)
		if _, err := e.js.Publish(context.Background(), "bento.Nothing.Here", []byte("not an event")); err != nil {
			t.Fatal(err)
		}

		want := []int{1, 3, 10, 11, 21, 31}
		waitFor(t, 30*time.Second, "the good steps applied and the bad ones dead-lettered", func() bool {
			return len(e.effects()) >= len(want) && e.deadCount("steps") >= 4
		})
		e.settled("steps", 30*time.Second)
		if got := e.effects(); !slices.Equal(got, want) {
			t.Errorf("applied %v, want %v", got, want)
		}
		if n := e.deadCount("steps"); n != 4 {
			t.Errorf("%d dead letters, want 4 (poison, always, undecodable, not an event)", n)
		}
		if n := e.count("SELECT COUNT(*) FROM bento_outbox_inbox_dead WHERE consumer = ? AND category = ? AND deliveries = 1", "steps", "permanent"); n != 3 {
			t.Errorf("%d permanent dead letters at delivery 1, want 3", n)
		}
		if n := e.count("SELECT COUNT(*) FROM bento_outbox_inbox_dead WHERE consumer = ? AND deliveries = 3", "steps"); n != 1 {
			t.Errorf("%d dead letters at delivery 3 (MaxDeliver), want 1", n)
		}
		if got := obs.retried.Load(); got != 4 {
			t.Errorf("%d retries, want 4 (flaky twice, always twice)", got)
		}
		if got := gathered(t, reg, "bento_inbox_dead_lettered_total"); got != 4 {
			t.Errorf("bento_inbox_dead_lettered_total = %v, want 4", got)
		}
		if got := gathered(t, reg, "bento_inbox_processed_total"); got != 6 {
			t.Errorf("bento_inbox_processed_total = %v, want 6", got)
		}

		fixed.Store(true)
		n, err := consumer.Requeue(context.Background(), e.js, e.db.Driver(), e.db.Names(), "steps", poison)
		if err != nil || n != 1 {
			t.Fatalf("Requeue: %d, %v; want 1", n, err)
		}
		want = []int{1, 2, 3, 10, 11, 21, 31}
		waitFor(t, 30*time.Second, "the requeued step applied", func() bool { return len(e.effects()) >= len(want) })
		e.settled("steps", 30*time.Second)
		if got := e.effects(); !slices.Equal(got, want) {
			t.Errorf("after the requeue: applied %v, want %v", got, want)
		}
		if n := e.deadCount("steps"); n != 3 {
			t.Errorf("after the requeue: %d dead letters, want 3", n)
		}
		if n := e.inboxCount("steps"); n != 7 {
			t.Errorf("inbox holds %d events, want 7", n)
		}
	})
}

// TestDrain: invariant — when Run's context ends while a handler runs,
// Run waits for it, commits and acks its event, and only then returns;
// nothing is left awaiting an ack.
func TestDrain(t *testing.T) {
	testdb.Each(t, func(t *testing.T, cfg config.Config) {
		e := newEnv(t, cfg)
		block, entered := make(chan struct{}), make(chan struct{}, 1)
		stop := e.run(stepRegistry(&atomic.Bool{}, block, entered), fastConfig("steps", nil))
		e.publishStep("A", 1, `{"n":1,"mode":"block"}`)
		select {
		case <-entered:
		case <-time.After(30 * time.Second):
			t.Fatal("the handler was not called within 30s")
		}
		stopped := make(chan struct{})
		go func() { stop(); close(stopped) }()
		select {
		case <-stopped:
			t.Fatal("Run returned while its handler was running")
		case <-time.After(300 * time.Millisecond):
		}
		close(block)
		select {
		case <-stopped:
		case <-time.After(30 * time.Second):
			t.Fatal("Run did not return after its handler finished")
		}
		if got := e.effects(); !slices.Equal(got, []int{1}) {
			t.Errorf("applied %v, want [1]", got)
		}
		if err := e.nc.Flush(); err != nil {
			t.Fatal(err)
		}
		c, err := e.js.Consumer(context.Background(), stream, "steps")
		if err != nil {
			t.Fatal(err)
		}
		info, err := c.Info(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if info.NumAckPending != 0 || info.NumPending != 0 {
			t.Errorf("after the drain: %d awaiting an ack, %d pending; want none", info.NumAckPending, info.NumPending)
		}
	})
}

// tee tells two observers.
type tee [2]consumer.Observer

func (t tee) Processed(typ string, took time.Duration) {
	t[0].Processed(typ, took)
	t[1].Processed(typ, took)
}
func (t tee) Duplicate() { t[0].Duplicate(); t[1].Duplicate() }
func (t tee) Deferred()  { t[0].Deferred(); t[1].Deferred() }
func (t tee) Lag(n uint64) {
	t[0].Lag(n)
	t[1].Lag(n)
}
func (t tee) Failed(c resilience.Category, dead bool) {
	t[0].Failed(c, dead)
	t[1].Failed(c, dead)
}

// gathered returns the value of an unlabelled counter.
func gathered(t *testing.T, g prometheus.Gatherer, name string) float64 {
	t.Helper()
	fams, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() == name && len(f.GetMetric()) == 1 {
			return f.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no series %s", name)
	return 0
}
