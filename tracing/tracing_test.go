package tracing_test

import (
	"context"
	"strings"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/bento-go/bento"
	"github.com/bento-go/bento/ent"
	"github.com/bento-go/bento/ent/migrate"
	"github.com/bento-go/bento/internal/testdb"
	"github.com/bento-go/bento/outbox"
	"github.com/bento-go/bento/shop"
	"github.com/bento-go/bento/tracing"
)

// TestTraceTravelsToTheMessage: a unit of work's trace context is stored
// in its events' headers, and the relay's publish span links to it; the
// message handed to the broker carries the traceparent header.
func TestTraceTravelsToTheMessage(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	cfg := testdb.Config(t, testdb.SQLite)
	ctx := context.Background()
	db, err := bento.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Migrate(ctx, migrate.Tables...); err != nil {
		t.Fatal(err)
	}
	client := ent.NewClient(ent.Driver(db.Driver()))
	uow := tracing.UnitOfWork[*ent.Client](ent.NewUnitOfWork(client), tp, nil)
	svc := shop.NewService(uow, client)
	if _, err := svc.Place(ctx, shop.PlaceOrder{Customer: "t@example.com", Lines: []shop.Line{{SKU: "S", Quantity: 1, UnitPriceCents: 1}}}, ""); err != nil {
		t.Fatal(err)
	}
	ch := outbox.NewChannelPublisher(10)
	relay, err := db.NewRelay(tracing.Publisher(ch, tp, nil), db.RelayConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer relay.Close()
	if res, err := relay.RunOnce(ctx); err != nil || res.Published != 1 {
		t.Fatalf("relay: %+v %v", res, err)
	}
	msg := <-ch.C()
	tp.ForceFlush(ctx)
	spans := rec.Ended()
	var uowSpan, pubSpan sdktrace.ReadOnlySpan
	for _, s := range spans {
		switch s.Name() {
		case "bento.unit_of_work":
			uowSpan = s
		case "bento.outbox.publish":
			pubSpan = s
		}
	}
	if uowSpan == nil || pubSpan == nil {
		t.Fatalf("spans: %d, want a unit-of-work span and a publish span", len(spans))
	}
	parent := msg.Headers[outbox.HeaderTraceParent]
	if !strings.Contains(parent, uowSpan.SpanContext().TraceID().String()) {
		t.Fatalf("message traceparent %q does not carry the unit of work's trace %s", parent, uowSpan.SpanContext().TraceID())
	}
	if len(pubSpan.Links()) != 1 || pubSpan.Links()[0].SpanContext.TraceID() != uowSpan.SpanContext().TraceID() {
		t.Fatalf("publish span links %v, want the unit of work's trace", pubSpan.Links())
	}
}
