package consumer_test

import (
	"context"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/consumer"
	"github.com/bento-go/bento/ent"
	"github.com/bento-go/bento/internal/testdb"
	"github.com/bento-go/bento/outbox/natspub"
)

// TestUnordered: invariant — with the order check off, two instances fed
// every event twice (the copy after the stream's duplicate window) still
// apply each event once: the inbox alone skips the copies.
func TestUnordered(t *testing.T) {
	testdb.Each(t, func(t *testing.T, cfg config.Config) {
		e := newEnv(t, cfg)
		const n = 40
		for i := range n {
			e.publishStep("U", int64(i+1), `{"n":`+strconv.Itoa(i+1)+`}`)
		}
		copies := e.duplicate(1, 1)
		obs := &counts{}
		for range 2 {
			c := fastConfig("unordered", obs)
			c.Unordered = true
			e.run(stepRegistry(&atomic.Bool{}, nil, nil), c)
		}
		waitFor(t, 30*time.Second, "every step applied", func() bool { return len(e.effects()) >= n })
		e.settled("unordered", 30*time.Second)
		want := make([]int, n)
		for i := range want {
			want[i] = i + 1
		}
		if got := e.effects(); !slices.Equal(got, want) {
			t.Errorf("applied %v, want 1..%d once each", got, n)
		}
		if got := obs.duplicates.Load(); got != int64(copies) {
			t.Errorf("%d duplicates skipped, want the %d copies", got, copies)
		}
		if got := e.inboxCount("unordered"); got != n {
			t.Errorf("inbox holds %d, want %d", got, n)
		}
		if got := obs.deferred.Load(); got != 0 {
			t.Errorf("%d deferrals with the order check off", got)
		}
	})
}

// TestTraceContinued: the handler's context continues the trace of the
// event's traceparent header, and with a TracerProvider each event is a
// span "bento.inbox.handle" in that trace.
func TestTraceContinued(t *testing.T) {
	cfg := testdb.Config(t, testdb.SQLite)
	e := newEnv(t, cfg)
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	var mu sync.Mutex
	var seen []trace.TraceID
	reg := consumer.NewRegistry[*ent.Client]()
	consumer.Handle(reg, "Step", func(ctx context.Context, tx *ent.Client, ev step, m consumer.Metadata) error {
		mu.Lock()
		seen = append(seen, trace.SpanContextFromContext(ctx).TraceID())
		mu.Unlock()
		return nil
	})
	c := fastConfig("traced", nil)
	c.TracerProvider = tp
	e.run(reg, c)

	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	m := nats.NewMsg("bento.Step.Step")
	m.Data = []byte(`{"n":1}`)
	m.Header.Set(jetstream.MsgIDHeader, "01a23b29-be4a-7cdb-b4e7-a77ae111961b")
	m.Header.Set(natspub.HeaderAggregateType, "Step")
	m.Header.Set(natspub.HeaderAggregateID, "T")
	m.Header.Set(natspub.HeaderEventType, "Step")
	m.Header.Set(natspub.HeaderSequence, "1")
	m.Header.Set("traceparent", "00-"+traceID+"-00f067aa0ba902b7-01")
	if _, err := e.js.PublishMsg(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the event handled", func() bool { mu.Lock(); defer mu.Unlock(); return len(seen) > 0 })
	e.settled("traced", 30*time.Second)
	mu.Lock()
	defer mu.Unlock()
	if seen[0].String() != traceID {
		t.Errorf("handler's trace id %s, want the header's %s", seen[0], traceID)
	}
	spans := rec.Ended()
	if len(spans) != 1 || spans[0].Name() != "bento.inbox.handle" || spans[0].SpanContext().TraceID().String() != traceID ||
		spans[0].Parent().SpanID().String() != "00f067aa0ba902b7" || spans[0].SpanKind() != trace.SpanKindConsumer {
		for _, s := range spans {
			t.Logf("span %s trace %s parent %s kind %s", s.Name(), s.SpanContext().TraceID(), s.Parent().SpanID(), s.SpanKind())
		}
		t.Errorf("want one consumer span bento.inbox.handle, child of the header's span, got %d spans", len(spans))
	}
}

// TestConsumerRecreated: invariant — when the broker loses the durable
// consumer (deleted here), Run creates it again and goes on: the events
// published after are applied, those redelivered from the stream's start
// are skipped as duplicates, each applied once.
func TestConsumerRecreated(t *testing.T) {
	e := newEnv(t, testdb.Config(t, testdb.SQLite))
	obs := &counts{}
	e.run(stepRegistry(&atomic.Bool{}, nil, nil), fastConfig("recreated", obs))
	for i := range 10 {
		e.publishStep("R", int64(i+1), `{"n":`+strconv.Itoa(i+1)+`}`)
	}
	waitFor(t, 30*time.Second, "the first ten applied", func() bool { return len(e.effects()) >= 10 })
	if err := e.js.DeleteConsumer(context.Background(), stream, "recreated"); err != nil {
		t.Fatal(err)
	}
	for i := 10; i < 20; i++ {
		e.publishStep("R", int64(i+1), `{"n":`+strconv.Itoa(i+1)+`}`)
	}
	waitFor(t, 60*time.Second, "the next ten applied", func() bool { return len(e.effects()) >= 20 })
	e.settled("recreated", 30*time.Second)
	if got := e.inboxCount("recreated"); got != 20 {
		t.Errorf("inbox holds %d, want 20", got)
	}
	if got := obs.processed.Load(); got != 20 {
		t.Errorf("processed %d, want 20", got)
	}
	if got := obs.duplicates.Load(); got != 10 {
		t.Errorf("%d duplicates skipped, want the 10 redelivered from the stream's start", got)
	}
}
