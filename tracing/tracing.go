// Package tracing adds OpenTelemetry tracing to Bento through the OTel API
// only: the caller passes a TracerProvider (and a propagator); no exporter
// is forced on anyone.
//
//   - UnitOfWork wraps a unit-of-work port: each Do is a span, and every
//     event recorded in it carries the span's W3C trace context in its
//     outbox headers (traceparent, tracestate).
//
//   - Publisher wraps an outbox publisher: each relay batch is a span linked
//     to the traces of the events it publishes; the headers travel on to the
//     broker message (NATS headers), so consumers continue the trace.
//
//     tp := sdktrace.NewTracerProvider(...) // yours
//     uow := tracing.UnitOfWork[*ent.Client](ent.NewUnitOfWork(client), tp, nil)
//     relay, _ := db.NewRelay(tracing.Publisher(pub, tp, nil), db.RelayConfig())
package tracing

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/bento-go/bento/outbox"
	"github.com/bento-go/bento/resilience"
	"github.com/bento-go/bento/unitofwork"
)

// Name is the instrumentation scope's name.
const Name = "github.com/bento-go/bento"

func propagator(p propagation.TextMapPropagator) propagation.TextMapPropagator {
	if p == nil {
		return propagation.TraceContext{}
	}
	return p
}

// UnitOfWork returns a port that runs each Do of u in a span named
// "bento.unit_of_work" and puts the span's trace context in the headers of
// the events recorded in it. A nil propagator means W3C trace context.
func UnitOfWork[C any](u unitofwork.Port[C], tp trace.TracerProvider, prop propagation.TextMapPropagator) unitofwork.Port[C] {
	tracer := tp.Tracer(Name)
	prop = propagator(prop)
	return unitofwork.Func[C](func(ctx context.Context, fn func(ctx context.Context, c C) error, opts ...unitofwork.Option) error {
		ctx, span := tracer.Start(ctx, "bento.unit_of_work", trace.WithSpanKind(trace.SpanKindInternal))
		defer span.End()
		ctx = outbox.WithHeaderFunc(ctx, func(ctx context.Context, h map[string]string) {
			prop.Inject(ctx, propagation.MapCarrier(h))
		})
		attempts := 0
		err := u.Do(ctx, func(ctx context.Context, c C) error {
			attempts++
			return fn(ctx, c)
		}, opts...)
		span.SetAttributes(attribute.Int("bento.attempts", attempts))
		if err != nil {
			span.RecordError(err)
			span.SetAttributes(attribute.String("bento.error.category", resilience.Classify(err).String()))
			span.SetStatus(codes.Error, err.Error())
		}
		return err
	})
}

// Publisher returns a publisher that traces each batch as a span named
// "bento.outbox.publish" linked to every event's trace (from its headers).
func Publisher(p outbox.Publisher, tp trace.TracerProvider, prop propagation.TextMapPropagator) outbox.Publisher {
	return &publisher{next: p, tracer: tp.Tracer(Name), prop: propagator(prop)}
}

type publisher struct {
	next   outbox.Publisher
	tracer trace.Tracer
	prop   propagation.TextMapPropagator
}

func (p *publisher) Publish(ctx context.Context, msgs []outbox.Message) []error {
	links := make([]trace.Link, 0, len(msgs))
	for _, m := range msgs {
		if len(m.Headers) == 0 {
			continue
		}
		sc := trace.SpanContextFromContext(p.prop.Extract(context.Background(), propagation.MapCarrier(m.Headers)))
		if sc.IsValid() {
			links = append(links, trace.Link{SpanContext: sc, Attributes: []attribute.KeyValue{
				attribute.String("bento.event_id", m.ID.String()), attribute.String("bento.event_type", m.Type)}})
		}
	}
	ctx, span := p.tracer.Start(ctx, "bento.outbox.publish", trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithLinks(links...), trace.WithAttributes(attribute.Int("bento.batch_size", len(msgs))))
	defer span.End()
	results := p.next.Publish(ctx, msgs)
	failed := 0
	for _, err := range results {
		if err != nil {
			failed++
		}
	}
	span.SetAttributes(attribute.Int("bento.failed", failed))
	if failed > 0 {
		span.SetStatus(codes.Error, "some events were not acknowledged")
	}
	return results
}
