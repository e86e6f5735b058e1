package consumer

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	"github.com/google/uuid"

	"github.com/bento-go/bento/resilience"
)

// Metadata describes the event a handler is given: what the outbox
// recorded with it and what the broker says about its delivery.
type Metadata struct {
	// EventID is the outbox row's id (the message's Nats-Msg-Id).
	EventID uuid.UUID
	// AggregateType and AggregateID name the aggregate that raised it.
	AggregateType string
	AggregateID   string
	// Sequence is the event's position among its aggregate's events,
	// from 1, without gaps.
	Sequence int64
	// Type is the event type ("OrderPlaced").
	Type string
	// OccurredAt is when the event was recorded.
	OccurredAt time.Time
	// Headers are the message's headers (first value of each): the
	// event's own (correlation_id, traceparent, …) and Bento-*.
	Headers map[string]string
	// Subject is the NATS subject the event was published to.
	Subject string
	// StreamSequence is the message's position in the stream.
	StreamSequence uint64
	// Delivery counts the deliveries of this message to the consumer, this
	// one included (1 for the first).
	Delivery int
	// Requeued: the message was put back from the dead letters (see
	// Requeue); it is applied whatever the aggregate's order.
	Requeued bool
}

// HandlerFunc applies one decoded event of type T with the client C bound
// to the unit of work's transaction. Everything it changes through that
// client commits with the event's inbox record, or not at all. It may run
// again for the same event when its transaction did not commit, so it must
// change nothing outside that transaction that a second run would repeat
// harmfully.
type HandlerFunc[T any, C any] func(ctx context.Context, c C, ev T, meta Metadata) error

// handler is a registered handler, its decoding included.
type handler[C any] func(ctx context.Context, c C, payload []byte, meta Metadata) error

// Registry maps event types to their handlers for a client type C (the
// generated *ent.Client). Build it before Run; it is not safe to register
// while a consumer uses it.
type Registry[C any] struct {
	handlers map[string]handler[C]
}

// NewRegistry returns an empty registry.
func NewRegistry[C any]() *Registry[C] {
	return &Registry[C]{handlers: map[string]handler[C]{}}
}

// Handle registers fn for events of type eventType, whose JSON payloads
// decode into T. A payload that does not decode is a permanent failure:
// the event is dead-lettered at once. Registering a type again replaces
// its handler.
//
//	consumer.Handle(reg, "OrderPlaced", func(ctx context.Context, tx *ent.Client, ev shop.OrderPlaced, m consumer.Metadata) error {
//		return tx.SummaryOrder.Create().SetOrderID(ev.OrderID).SetCustomer(ev.Customer).SetTotalCents(ev.TotalCents).Exec(ctx)
//	})
func Handle[T any, C any](r *Registry[C], eventType string, fn HandlerFunc[T, C]) {
	r.handlers[eventType] = func(ctx context.Context, c C, payload []byte, meta Metadata) error {
		var ev T
		if err := json.Unmarshal(payload, &ev); err != nil {
			return Permanent(fmt.Errorf("consumer: decoding %s %s as %T: %w", meta.Type, meta.EventID, ev, err))
		}
		return fn(ctx, c, ev, meta)
	}
}

// Types returns the event types with a handler, sorted.
func (r *Registry[C]) Types() []string {
	out := make([]string, 0, len(r.handlers))
	for t := range r.handlers {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

// Permanent marks err as a failure that no redelivery can cure (bad data,
// a rule the event breaks): the consumer dead-letters the event at once
// instead of retrying it. errors.Is and errors.As still reach err.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &resilience.Error{Category: resilience.Permanent, Op: "consume", Err: err}
}
