package shop

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/bento-go/bento/consumer"
	"github.com/bento-go/bento/ent"
	"github.com/bento-go/bento/ent/customersummary"
	"github.com/bento-go/bento/ent/summaryorder"
)

// Summary is a customer's order summary, projected from the Order events
// by the reference consumer (bento consume).
type Summary struct {
	Customer        string    `json:"customer"`
	OrdersPlaced    int64     `json:"orders_placed"`
	OrdersPaid      int64     `json:"orders_paid"`
	OrdersCancelled int64     `json:"orders_cancelled"`
	TotalSpentCents int64     `json:"total_spent_cents"`
	UpdatedAt       time.Time `json:"updated_at"`
}

// ErrNoSummary is returned for a customer the projection has not seen.
var ErrNoSummary = fmt.Errorf("no summary for this customer: %w", ErrNotFound)

// SummaryConsumer is the name of the reference consumer.
const SummaryConsumer = "customer-summary"

// SummaryHandlers returns the handlers that project OrderPlaced, OrderPaid
// and OrderCancelled into the customer summaries (tables customer_summaries
// and summary_orders). They rely on the consumer's per-aggregate order: an
// order's OrderPaid or OrderCancelled is applied after its OrderPlaced.
func SummaryHandlers() *consumer.Registry[*ent.Client] {
	reg := consumer.NewRegistry[*ent.Client]()
	consumer.Handle(reg, OrderPlaced{}.EventType(), ApplyOrderPlaced)
	consumer.Handle(reg, OrderPaid{}.EventType(), ApplyOrderPaid)
	consumer.Handle(reg, OrderCancelled{}.EventType(), ApplyOrderCancelled)
	return reg
}

// ApplyOrderPlaced records the order and counts it for its customer.
func ApplyOrderPlaced(ctx context.Context, tx *ent.Client, ev OrderPlaced, _ consumer.Metadata) error {
	if err := tx.SummaryOrder.Create().SetOrderID(ev.OrderID).SetCustomer(ev.Customer).SetTotalCents(ev.TotalCents).Exec(ctx); err != nil {
		return fmt.Errorf("summary: order %d: %w", ev.OrderID, err)
	}
	n, err := tx.CustomerSummary.Update().Where(customersummary.Customer(ev.Customer)).AddOrdersPlaced(1).Save(ctx)
	if err != nil {
		return fmt.Errorf("summary: customer of order %d: %w", ev.OrderID, err)
	}
	if n == 0 {
		// Two first orders of a customer applied at once: one insert
		// fails on the unique customer and its event is retried.
		err = tx.CustomerSummary.Create().SetCustomer(ev.Customer).SetOrdersPlaced(1).Exec(ctx)
	}
	if err != nil {
		return fmt.Errorf("summary: customer of order %d: %w", ev.OrderID, err)
	}
	return nil
}

// ApplyOrderPaid adds the paid order's total to its customer's spending.
func ApplyOrderPaid(ctx context.Context, tx *ent.Client, ev OrderPaid, _ consumer.Metadata) error {
	return settle(ctx, tx, ev.OrderID, summaryorder.StatusPaid, func(u *ent.CustomerSummaryUpdate, o *ent.SummaryOrder) {
		u.AddOrdersPaid(1).AddTotalSpentCents(o.TotalCents)
	})
}

// ApplyOrderCancelled counts the cancelled order.
func ApplyOrderCancelled(ctx context.Context, tx *ent.Client, ev OrderCancelled, _ consumer.Metadata) error {
	return settle(ctx, tx, ev.OrderID, summaryorder.StatusCancelled, func(u *ent.CustomerSummaryUpdate, _ *ent.SummaryOrder) {
		u.AddOrdersCancelled(1)
	})
}

// settle moves a pending order to status and updates its customer's
// summary with count.
func settle(ctx context.Context, tx *ent.Client, orderID int, status summaryorder.Status, count func(*ent.CustomerSummaryUpdate, *ent.SummaryOrder)) error {
	o, err := tx.SummaryOrder.Query().Where(summaryorder.OrderID(orderID)).Only(ctx)
	if err != nil {
		if ent.IsNotFound(err) {
			return consumer.Permanent(fmt.Errorf("summary: order %d is %s but was never placed", orderID, status))
		}
		return fmt.Errorf("summary: order %d: %w", orderID, err)
	}
	if o.Status != summaryorder.StatusPending {
		return consumer.Permanent(fmt.Errorf("summary: order %d is %s: it cannot become %s", orderID, o.Status, status))
	}
	if err := tx.SummaryOrder.UpdateOne(o).SetStatus(status).Exec(ctx); err != nil {
		return fmt.Errorf("summary: order %d: %w", orderID, err)
	}
	u := tx.CustomerSummary.Update().Where(customersummary.Customer(o.Customer))
	count(u, o)
	if _, err := u.Save(ctx); err != nil {
		return fmt.Errorf("summary: customer of order %d: %w", orderID, err)
	}
	return nil
}

// Summary returns the customer's order summary, or ErrNoSummary.
func (s *Service) Summary(ctx context.Context, customer string) (Summary, error) {
	cs, err := s.client.CustomerSummary.Query().Where(customersummary.Customer(customer)).Only(ctx)
	if err != nil {
		if ent.IsNotFound(err) {
			return Summary{}, ErrNoSummary
		}
		return Summary{}, err
	}
	return Summary{Customer: cs.Customer, OrdersPlaced: cs.OrdersPlaced, OrdersPaid: cs.OrdersPaid,
		OrdersCancelled: cs.OrdersCancelled, TotalSpentCents: cs.TotalSpentCents, UpdatedAt: cs.UpdatedAt}, nil
}

// summary serves GET /customers/{email}/summary.
func (h *api) summary(w http.ResponseWriter, r *http.Request) {
	email := r.PathValue("email")
	if email == "" || len(email) > MaxCustomerBytes {
		writeJSON(w, http.StatusBadRequest, errorBody{fmt.Sprintf("customer %q is not an e-mail address of at most %d bytes", truncate(email, 100), MaxCustomerBytes)})
		return
	}
	s, err := h.svc.Summary(r.Context(), email)
	if err != nil {
		if errors.Is(err, ErrNoSummary) {
			writeJSON(w, http.StatusNotFound, errorBody{fmt.Sprintf("no summary for customer %q (no order of theirs was consumed yet)", truncate(email, 100))})
			return
		}
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, s)
}
