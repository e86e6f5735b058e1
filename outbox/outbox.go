// Package outbox is Bento's transactional outbox: events recorded during a
// unit of work become rows of the outbox table in the same transaction as
// the change that raised them, just before COMMIT, so an event exists if
// and only if its change committed. A relay (Relay) then publishes the rows
// to a broker and marks them published only after the broker acknowledged
// them.
//
// The table (bento_outbox by default) is compatible with Debezium's outbox
// event router: id (UUID, time-ordered), aggregatetype, aggregateid, type,
// payload (JSONB on PostgreSQL, JSON elsewhere), plus a per-aggregate
// sequence, headers, occurred_at and the relay's status columns.
//
// Recording an event:
//
//	err := outbox.Raise(ctx, order, OrderPlaced{OrderID: order.ID})
//
// ctx must belong to a unit of work (package unitofwork) or carry a
// Collector made with NewContext and bound to a transaction begun with it.
package outbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/google/uuid"
)

// Event is a domain event: a Go value the application defines, encoded to
// JSON as the row's payload. EventType names it ("OrderPlaced"); the relay
// derives the broker subject from it.
type Event interface {
	EventType() string
}

// Aggregate identifies the aggregate an event belongs to. Bento's ent
// extension generates these methods for schemas with the aggregate mixin.
type Aggregate interface {
	AggregateType() string
	AggregateID() string
}

// Message is one outbox row.
type Message struct {
	ID            uuid.UUID
	AggregateType string
	AggregateID   string
	Type          string
	Payload       json.RawMessage
	// Sequence is the event's position among its aggregate's events,
	// starting at 1, without gaps; assigned when the row is written.
	Sequence   int64
	Headers    map[string]string
	OccurredAt time.Time
}

// ErrNoUnitOfWork is returned when an event is recorded with a context that
// belongs to no transaction.
var ErrNoUnitOfWork = errors.New("outbox: no unit of work: events can be recorded only inside a unit of work (unitofwork.Do) or a transaction begun with outbox.NewContext")

// ErrCollectorClosed is returned when an event is recorded after its
// transaction ended.
var ErrCollectorClosed = errors.New("outbox: the transaction already ended: record events before it commits")

// Raise records events of agg in the unit of work of ctx. The payloads are
// encoded now; the rows are written just before COMMIT.
func Raise(ctx context.Context, agg Aggregate, events ...Event) error {
	return Record(ctx, agg.AggregateType(), agg.AggregateID(), events...)
}

// Record is Raise for an aggregate given by type and id.
func Record(ctx context.Context, aggregateType, aggregateID string, events ...Event) error {
	c := FromContext(ctx)
	if c == nil {
		return ErrNoUnitOfWork
	}
	if aggregateType == "" || aggregateID == "" {
		return fmt.Errorf("outbox: event for aggregate %q/%q: aggregate type and id must not be empty", aggregateType, aggregateID)
	}
	now := time.Now().UTC()
	msgs := make([]Message, 0, len(events))
	for _, e := range events {
		if e == nil || e.EventType() == "" {
			return fmt.Errorf("outbox: event %T for %s %s has no type", e, aggregateType, aggregateID)
		}
		payload, err := json.Marshal(e)
		if err != nil {
			return fmt.Errorf("outbox: encoding %s: %w", e.EventType(), err)
		}
		id, err := uuid.NewV7()
		if err != nil {
			return fmt.Errorf("outbox: event id: %w", err)
		}
		msgs = append(msgs, Message{
			ID: id, AggregateType: aggregateType, AggregateID: aggregateID, Type: e.EventType(),
			Payload: payload, Headers: headersFrom(ctx), OccurredAt: now,
		})
	}
	return c.add(msgs)
}

// Collector gathers the events of one transaction. It is safe for
// concurrent use.
type Collector struct {
	mu     sync.Mutex
	msgs   []Message
	bound  bool
	closed bool
}

type collectorKey struct{}

// NewContext returns a context carrying a new Collector. A transaction
// begun with that context (ent client.Tx(ctx)) writes the collected events
// at COMMIT; the unit of work does this itself.
func NewContext(ctx context.Context) (context.Context, *Collector) {
	c := &Collector{}
	return context.WithValue(ctx, collectorKey{}, c), c
}

// FromContext returns the context's Collector, or nil.
func FromContext(ctx context.Context) *Collector {
	c, _ := ctx.Value(collectorKey{}).(*Collector)
	return c
}

func (c *Collector) add(msgs []Message) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.closed:
		return ErrCollectorClosed
	case !c.bound:
		return ErrNoUnitOfWork
	}
	c.msgs = append(c.msgs, msgs...)
	return nil
}

// bind marks the collector as belonging to a started transaction.
func (c *Collector) bind() {
	c.mu.Lock()
	c.bound, c.closed = true, false
	c.mu.Unlock()
}

// take closes the collector and returns what it gathered.
func (c *Collector) take() []Message {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	msgs := c.msgs
	c.msgs = nil
	return msgs
}

// Len returns the number of events gathered so far.
func (c *Collector) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.msgs)
}

// Messages returns a copy of the events gathered so far.
func (c *Collector) Messages() []Message {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Message(nil), c.msgs...)
}

// Header names Bento sets.
const (
	HeaderCorrelationID = "correlation_id"
	HeaderTraceParent   = "traceparent"
	HeaderTraceState    = "tracestate"
)

type headersKey struct{}

// WithHeaders returns a context whose recorded events carry these headers
// (merged over any set before), e.g. a correlation id per request.
func WithHeaders(ctx context.Context, h map[string]string) context.Context {
	merged := map[string]string{}
	for k, v := range headersFrom(ctx) {
		merged[k] = v
	}
	for k, v := range h {
		merged[k] = v
	}
	return context.WithValue(ctx, headersKey{}, merged)
}

// WithCorrelationID is WithHeaders for the correlation id.
func WithCorrelationID(ctx context.Context, id string) context.Context {
	return WithHeaders(ctx, map[string]string{HeaderCorrelationID: id})
}

// HeaderFunc adds headers to every event recorded under a context; tracing
// uses it to put the W3C trace context in.
type HeaderFunc func(ctx context.Context, h map[string]string)

type headerFuncKey struct{}

// WithHeaderFunc returns a context under which f adds headers to each
// recorded event.
func WithHeaderFunc(ctx context.Context, f HeaderFunc) context.Context {
	return context.WithValue(ctx, headerFuncKey{}, f)
}

func headersFrom(ctx context.Context) map[string]string {
	h, _ := ctx.Value(headersKey{}).(map[string]string)
	f, _ := ctx.Value(headerFuncKey{}).(HeaderFunc)
	if f == nil {
		return h
	}
	out := make(map[string]string, len(h)+2)
	for k, v := range h {
		out[k] = v
	}
	f(ctx, out)
	if len(out) == 0 {
		return nil
	}
	return out
}
