package consumer_test

import (
	"context"
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/bento-go/bento/consumer"
	"github.com/bento-go/bento/ent"
	"github.com/bento-go/bento/internal/testdb"
	"github.com/bento-go/bento/outbox/natspub"
)

// perAggregate is how many events each aggregate of the benchmark has.
const perAggregate = 5

// BenchmarkConsume measures, per dialect, events applied per second:
//
//   - raw: a bare JetStream pull consumer that acks each message (the
//     broker's ceiling for these messages);
//   - uow: one unit of work per event inserting one row, one goroutine
//     after another (the database's ceiling of one commit per event);
//   - consumer1, consumer3: one and three consumer instances (INBOX_WORKERS
//     4 each) applying the events — order check, inbox, a handler that
//     inserts one row, commit, ack.
//
// Each iteration is one event; run with a fixed count:
//
//	go test -run '^$' -bench Consume -benchtime 2000x ./consumer/
func BenchmarkConsume(b *testing.B) {
	for _, d := range testdb.Dialects() {
		b.Run(d, func(b *testing.B) {
			b.Run("raw", func(b *testing.B) { benchRaw(b, d) })
			b.Run("uow", func(b *testing.B) { benchUnitOfWork(b, d) })
			b.Run("consumer1", func(b *testing.B) { benchConsumer(b, d, 1) })
			b.Run("consumer3", func(b *testing.B) { benchConsumer(b, d, 3) })
		})
	}
}

// publishBench publishes n step events, perAggregate per aggregate, as the
// relay would, and waits for the stream's acks.
func (e *env) publishBench(n int) {
	e.t.Helper()
	ctx := context.Background()
	futures := make([]jetstream.PubAckFuture, 0, n)
	for i := range n {
		m := nats.NewMsg("bento.Step.Step")
		m.Data = []byte(`{"n":` + strconv.Itoa(i+1) + `}`)
		m.Header.Set(jetstream.MsgIDHeader, uuid.Must(uuid.NewV7()).String())
		m.Header.Set(natspub.HeaderAggregateType, "Step")
		m.Header.Set(natspub.HeaderAggregateID, strconv.Itoa(i/perAggregate))
		m.Header.Set(natspub.HeaderEventType, "Step")
		m.Header.Set(natspub.HeaderSequence, strconv.Itoa(i%perAggregate+1))
		m.Header.Set(natspub.HeaderOccurredAt, time.Now().UTC().Format(time.RFC3339Nano))
		f, err := e.js.PublishMsgAsync(m)
		if err != nil {
			e.t.Fatal(err)
		}
		futures = append(futures, f)
	}
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			e.t.Fatal(err)
		case <-ctx.Done():
		}
	}
}

func benchRaw(b *testing.B, dialect string) {
	e := newEnv(b, testdb.Config(b, dialect))
	e.publishBench(b.N)
	c, err := e.js.CreateOrUpdateConsumer(context.Background(), stream, jetstream.ConsumerConfig{
		Durable: "raw", AckPolicy: jetstream.AckExplicitPolicy, MaxAckPending: 1000})
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	it, err := c.Messages(jetstream.PullMaxMessages(100))
	if err != nil {
		b.Fatal(err)
	}
	defer it.Stop()
	for range b.N {
		m, err := it.Next()
		if err != nil {
			b.Fatal(err)
		}
		if err := m.Ack(); err != nil {
			b.Fatal(err)
		}
	}
	if err := e.nc.Flush(); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

func benchUnitOfWork(b *testing.B, dialect string) {
	e := newEnv(b, testdb.Config(b, dialect))
	ctx := context.Background()
	b.ResetTimer()
	for i := range b.N {
		if err := e.uow.Do(ctx, func(ctx context.Context, tx *ent.Client) error {
			return tx.SummaryOrder.Create().SetOrderID(i + 1).SetCustomer("steps@example.com").SetTotalCents(0).Exec(ctx)
		}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

func benchConsumer(b *testing.B, dialect string, instances int) {
	e := newEnv(b, testdb.Config(b, dialect))
	e.publishBench(b.N)
	obs := &counts{}
	reg := stepRegistry(&atomic.Bool{}, nil, nil)
	b.ResetTimer()
	for range instances {
		e.run(reg, consumer.Config{Name: "bench", Stream: stream, Observer: obs, DeferDelay: 10 * time.Millisecond})
	}
	waitFor(b, 10*time.Minute, fmt.Sprintf("%d events applied", b.N), func() bool { return obs.processed.Load() >= int64(b.N) })
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	b.ReportMetric(float64(obs.deferred.Load())/float64(b.N), "deferred/event")
	if n := e.inboxCount("bench"); n != b.N {
		b.Errorf("inbox holds %d events, want %d", n, b.N)
	}
}
