// Package shop is Bento's reference application: the use cases of an
// ecommerce Order aggregate — place, pay, cancel — each run through a unit
// of work, each recording its domain event (OrderPlaced, OrderPaid,
// OrderCancelled; aggregate type "Order") in the outbox in the same
// transaction as the change.
//
// It depends only on the unit-of-work port and the generated ent client;
// package cmd/bento wires it to a database and serves it over HTTP.
package shop

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/mail"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/bento-go/bento/ent"
	"github.com/bento-go/bento/ent/order"
	"github.com/bento-go/bento/ent/orderline"
	"github.com/bento-go/bento/ids"
	"github.com/bento-go/bento/outbox"
	"github.com/bento-go/bento/resilience"
	"github.com/bento-go/bento/unitofwork"
)

// Limits of an order.
const (
	MaxLines         = 100
	MaxQuantity      = 10_000
	MaxUnitPrice     = 100_000_000 // cents
	MaxCustomerBytes = 320
	MaxSKUBytes      = 64
)

// Status values of an order.
const (
	StatusPending   = string(order.StatusPending)
	StatusPaid      = string(order.StatusPaid)
	StatusCancelled = string(order.StatusCancelled)
)

// Events.
type (
	// OrderPlaced is recorded when an order is placed.
	OrderPlaced struct {
		OrderID    int    `json:"order_id"`
		Customer   string `json:"customer"`
		TotalCents int64  `json:"total_cents"`
		Lines      []Line `json:"lines"`
	}
	// OrderPaid is recorded when an order is paid.
	OrderPaid struct {
		OrderID    int   `json:"order_id"`
		TotalCents int64 `json:"total_cents"`
	}
	// OrderCancelled is recorded when an order is cancelled.
	OrderCancelled struct {
		OrderID int `json:"order_id"`
	}
)

// EventType implements outbox.Event.
func (OrderPlaced) EventType() string { return "OrderPlaced" }

// EventType implements outbox.Event.
func (OrderPaid) EventType() string { return "OrderPaid" }

// EventType implements outbox.Event.
func (OrderCancelled) EventType() string { return "OrderCancelled" }

// Events returns a registry of the shop's events, for consumers.
func Events() *outbox.Registry {
	return outbox.NewRegistry(OrderPlaced{}, OrderPaid{}, OrderCancelled{})
}

// Line is one line of an order.
type Line struct {
	SKU            string `json:"sku"`
	Quantity       int    `json:"quantity"`
	UnitPriceCents int64  `json:"unit_price_cents"`
}

// PlaceOrder is the command to place an order.
type PlaceOrder struct {
	Customer string `json:"customer"`
	Lines    []Line `json:"lines"`
}

// Order is the view of an order the use cases return (and the HTTP API
// serves).
type Order struct {
	ID         int       `json:"id"`
	Customer   string    `json:"customer"`
	Status     string    `json:"status"`
	TotalCents int64     `json:"total_cents"`
	Lines      []Line    `json:"lines"`
	Version    int64     `json:"version"`
	CreatedAt  time.Time `json:"created_at"`
	UpdatedAt  time.Time `json:"updated_at"`
}

// ValidationError says why a command was refused; nothing was changed.
type ValidationError struct {
	Field   string
	Problem string
}

func (e *ValidationError) Error() string { return e.Field + ": " + e.Problem }

// ErrNotFound is returned for an order that does not exist.
var ErrNotFound = errors.New("order not found")

// TransitionError is returned when an order cannot go to the requested
// status from its current one; nothing was changed.
type TransitionError struct {
	ID       int
	From, To string
}

func (e *TransitionError) Error() string {
	return fmt.Sprintf("order %d is %s: it cannot become %s", e.ID, e.From, e.To)
}

// Service runs the use cases.
type Service struct {
	uow    unitofwork.Port[*ent.Client]
	client *ent.Client
	ids    *ids.Blocks
}

// Option configures a Service.
type Option func(*Service)

// WithIDs makes Place take the ids of the order and its lines from b
// before its unit of work runs, so that the unit sends its inserts and its
// event in one round trip, one implicit transaction on PostgreSQL
// (unitofwork.DeferWrites). Without it (or with a nil b: MySQL/MariaDB,
// SQLite) the database assigns them, one round trip for the order and one
// for its lines.
func WithIDs(b *ids.Blocks) Option { return func(s *Service) { s.ids = b } }

// NewService returns the service over a unit of work and the client used
// for reads outside transactions.
func NewService(uow unitofwork.Port[*ent.Client], client *ent.Client, opts ...Option) *Service {
	s := &Service{uow: uow, client: client}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Validate checks a PlaceOrder command and returns its total.
func (cmd PlaceOrder) Validate() (int64, error) {
	c := strings.TrimSpace(cmd.Customer)
	if c == "" {
		return 0, &ValidationError{"customer", "is required (an e-mail address)"}
	}
	if len(c) > MaxCustomerBytes {
		return 0, &ValidationError{"customer", fmt.Sprintf("is longer than %d bytes", MaxCustomerBytes)}
	}
	if a, err := mail.ParseAddress(c); err != nil || a.Address != c || !printable(c) {
		return 0, &ValidationError{"customer", fmt.Sprintf("%q is not an e-mail address", c)}
	}
	if len(cmd.Lines) == 0 {
		return 0, &ValidationError{"lines", "at least one line is required"}
	}
	if len(cmd.Lines) > MaxLines {
		return 0, &ValidationError{"lines", fmt.Sprintf("at most %d lines are accepted", MaxLines)}
	}
	var total int64
	for i, l := range cmd.Lines {
		f := fmt.Sprintf("lines[%d]", i)
		switch {
		case strings.TrimSpace(l.SKU) == "" || len(l.SKU) > MaxSKUBytes:
			return 0, &ValidationError{f + ".sku", fmt.Sprintf("must be 1-%d bytes", MaxSKUBytes)}
		case !printable(l.SKU):
			return 0, &ValidationError{f + ".sku", "must be printable text (no control characters)"}
		case l.Quantity < 1 || l.Quantity > MaxQuantity:
			return 0, &ValidationError{f + ".quantity", fmt.Sprintf("must be 1-%d", MaxQuantity)}
		case l.UnitPriceCents < 0 || l.UnitPriceCents > MaxUnitPrice:
			return 0, &ValidationError{f + ".unit_price_cents", fmt.Sprintf("must be 0-%d", MaxUnitPrice)}
		}
		total += int64(l.Quantity) * l.UnitPriceCents
	}
	return total, nil
}

// printable reports whether s is valid UTF-8 without control characters.
func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return false
		}
	}
	return true
}

// Place places an order and records OrderPlaced. With a non-empty
// idempotencyKey a repeated call returns the first call's order and places
// nothing.
func (s *Service) Place(ctx context.Context, cmd PlaceOrder, idempotencyKey string) (Order, error) {
	o, _, err := s.place(ctx, cmd, idempotencyKey)
	return o, err
}

// placed is an order placed in a unit of work, and whether this call
// placed it. fresh is unexported, so it is not stored with an idempotency
// key: a replayed result decodes with fresh false.
type placed struct {
	Order
	fresh bool
}

// place is Place, also reporting whether the order was replayed from its
// idempotency key instead of placed by this call (POST /orders says so in
// a header).
func (s *Service) place(ctx context.Context, cmd PlaceOrder, idempotencyKey string) (o Order, replayed bool, err error) {
	total, err := cmd.Validate()
	if err != nil {
		return Order{}, false, err
	}
	var opts []unitofwork.Option
	if idempotencyKey != "" {
		// The key's fingerprint is the order asked for: the same key sent
		// with a different order is refused (ErrIdempotencyKeyReused), not
		// answered with the first order.
		b, err := json.Marshal(cmd)
		if err != nil {
			return Order{}, false, fmt.Errorf("shop: fingerprinting the order: %w", err)
		}
		sum := sha256.Sum256(b)
		opts = append(opts, unitofwork.IdempotencyKey("order:"+idempotencyKey), unitofwork.IdempotencyFingerprint(hex.EncodeToString(sum[:])))
	}
	// The ids first, outside the transaction (one statement per block of
	// them): the unit of work then needs no answer from the database
	// before its COMMIT.
	orderID, err := s.ids.Take(ctx, order.Table, 1)
	if err != nil {
		return Order{}, false, err
	}
	lineIDs, err := s.ids.Take(ctx, orderline.Table, len(cmd.Lines))
	if err != nil {
		return Order{}, false, err
	}
	if orderID != nil {
		// One round trip, without the transaction id (it would be lost
		// with the COMMIT's answer): a COMMIT with no answer is resolved
		// by the order's row.
		opts = append(opts, unitofwork.DeferWrites(),
			unitofwork.ResolveBy(resilience.CommitEvidence{Table: order.Table, Column: order.FieldID, Value: orderID[0]}))
	}
	p, err := unitofwork.DoValue(ctx, s.uow, func(ctx context.Context, tx *ent.Client) (placed, error) {
		create := tx.Order.Create().SetCustomer(strings.TrimSpace(cmd.Customer)).SetTotalCents(total)
		if orderID != nil {
			create.SetID(orderID[0])
		}
		o, err := create.Save(ctx)
		if err != nil {
			return placed{}, err
		}
		lines, err := s.createLines(ctx, tx, o, cmd.Lines, lineIDs)
		if err != nil {
			return placed{}, err
		}
		o.Edges.Lines = lines
		if err := outbox.Raise(ctx, o, OrderPlaced{OrderID: o.ID, Customer: o.Customer, TotalCents: total, Lines: cmd.Lines}); err != nil {
			return placed{}, err
		}
		return placed{Order: view(o), fresh: true}, nil
	}, opts...)
	return p.Order, err == nil && !p.fresh, err
}

// createLines inserts the order's lines: with their ids given, one insert
// each, which a unit of work that defers writes sends with its COMMIT
// (ent's bulk insert always asks for the ids back); without, one bulk
// insert that returns them.
func (s *Service) createLines(ctx context.Context, tx *ent.Client, o *ent.Order, lines []Line, ids []int) ([]*ent.OrderLine, error) {
	build := func(l Line) *ent.OrderLineCreate {
		return tx.OrderLine.Create().SetOrder(o).SetSku(l.SKU).SetQuantity(l.Quantity).SetUnitPriceCents(l.UnitPriceCents)
	}
	if ids == nil {
		builders := make([]*ent.OrderLineCreate, len(lines))
		for i, l := range lines {
			builders[i] = build(l)
		}
		return tx.OrderLine.CreateBulk(builders...).Save(ctx)
	}
	out := make([]*ent.OrderLine, len(lines))
	for i, l := range lines {
		line, err := build(l).SetID(ids[i]).Save(ctx)
		if err != nil {
			return nil, err
		}
		out[i] = line
	}
	return out, nil
}

// Pay marks a pending order paid and records OrderPaid.
func (s *Service) Pay(ctx context.Context, id int) (Order, error) {
	return s.transition(ctx, id, order.StatusPaid, func(o *ent.Order) outbox.Event {
		return OrderPaid{OrderID: o.ID, TotalCents: o.TotalCents}
	})
}

// Cancel cancels a pending order and records OrderCancelled.
func (s *Service) Cancel(ctx context.Context, id int) (Order, error) {
	return s.transition(ctx, id, order.StatusCancelled, func(o *ent.Order) outbox.Event {
		return OrderCancelled{OrderID: o.ID}
	})
}

func (s *Service) transition(ctx context.Context, id int, to order.Status, event func(*ent.Order) outbox.Event) (Order, error) {
	return unitofwork.DoValue(ctx, s.uow, func(ctx context.Context, tx *ent.Client) (Order, error) {
		o, err := tx.Order.Query().Where(order.ID(id)).WithLines().Only(ctx)
		if ent.IsNotFound(err) {
			return Order{}, ErrNotFound
		}
		if err != nil {
			return Order{}, err
		}
		if o.Status != order.StatusPending {
			return Order{}, &TransitionError{ID: id, From: string(o.Status), To: string(to)}
		}
		// UpdateOne(o) checks o's version: a concurrent change fails this
		// attempt with a conflict and the unit of work runs it again.
		updated, err := tx.Order.UpdateOne(o).SetStatus(to).Save(ctx)
		if err != nil {
			return Order{}, err
		}
		updated.Edges.Lines = o.Edges.Lines
		if err := outbox.Raise(ctx, updated, event(updated)); err != nil {
			return Order{}, err
		}
		return view(updated), nil
	})
}

// Get returns an order with its lines.
func (s *Service) Get(ctx context.Context, id int) (Order, error) {
	o, err := s.client.Order.Query().Where(order.ID(id)).WithLines().Only(ctx)
	if ent.IsNotFound(err) {
		return Order{}, ErrNotFound
	}
	if err != nil {
		return Order{}, err
	}
	return view(o), nil
}

func view(o *ent.Order) Order {
	v := Order{ID: o.ID, Customer: o.Customer, Status: string(o.Status), TotalCents: o.TotalCents,
		Version: o.Version, CreatedAt: o.CreatedAt, UpdatedAt: o.UpdatedAt, Lines: make([]Line, len(o.Edges.Lines))}
	for i, l := range o.Edges.Lines {
		v.Lines[i] = Line{SKU: l.Sku, Quantity: l.Quantity, UnitPriceCents: l.UnitPriceCents}
	}
	return v
}
