package schema

import (
	"time"

	"entgo.io/ent"
	"entgo.io/ent/schema/field"
	"entgo.io/ent/schema/index"
)

// CustomerSummary is a read model the reference consumer (bento consume)
// projects from the Order events: per customer, how many orders were
// placed, paid and cancelled, and the total of the paid ones. It is
// written only by the consumer, one event at a time, in the unit of work
// that records the event in the inbox.
type CustomerSummary struct {
	ent.Schema
}

// Fields of the CustomerSummary.
func (CustomerSummary) Fields() []ent.Field {
	return []ent.Field{
		field.String("customer").NotEmpty().MaxLen(320).Unique().
			Comment("the customer's e-mail address"),
		field.Int64("orders_placed").Default(0),
		field.Int64("orders_paid").Default(0),
		field.Int64("orders_cancelled").Default(0),
		field.Int64("total_spent_cents").Default(0).
			Comment("sum of the paid orders' totals, in cents"),
		field.Time("updated_at").Default(time.Now).UpdateDefault(time.Now),
	}
}

// SummaryOrder is the consumer's own copy of what it needs of an order to
// apply OrderPaid and OrderCancelled, which carry no customer: the order's
// customer and total, taken from OrderPlaced.
type SummaryOrder struct {
	ent.Schema
}

// Fields of the SummaryOrder.
func (SummaryOrder) Fields() []ent.Field {
	return []ent.Field{
		field.Int("order_id").Unique().Immutable().
			Comment("the order's id in the source service"),
		field.String("customer").NotEmpty().MaxLen(320),
		field.Int64("total_cents").NonNegative(),
		field.Enum("status").Values("pending", "paid", "cancelled").Default("pending"),
	}
}

// Indexes of the SummaryOrder.
func (SummaryOrder) Indexes() []ent.Index {
	return []ent.Index{index.Fields("customer")}
}
