// Package schema holds the ent schemas of Bento's reference domain: an
// ecommerce Order aggregate (table orders) with its order lines. The
// generated code is in package ent (go generate ./...).
package schema

import (
	"time"

	"entgo.io/ent"
	"entgo.io/ent/dialect/entsql"
	"entgo.io/ent/schema/edge"
	"entgo.io/ent/schema/field"
	"entgo.io/ent/schema/index"

	"github.com/bento-go/bento/aggregate"
)

// Order is an order a customer placed: the aggregate root.
type Order struct {
	ent.Schema
}

// Mixin makes Order an aggregate root: a version field for optimistic
// concurrency, and events recorded against aggregate type "Order".
func (Order) Mixin() []ent.Mixin {
	return []ent.Mixin{aggregate.Mixin{Type: "Order"}}
}

// Fields of the Order.
func (Order) Fields() []ent.Field {
	return []ent.Field{
		// The id as ent makes it by default (an integer the database
		// assigns), declared so that the code can set it too (SetID, from
		// package ids): an order whose id is set is inserted without
		// RETURNING, with the rest of its unit of work.
		field.Int("id"),
		field.String("customer").NotEmpty().MaxLen(320).
			Comment("the customer's e-mail address"),
		field.Enum("status").Values("pending", "paid", "cancelled").Default("pending"),
		field.Int64("total_cents").NonNegative().
			Comment("sum of the lines' quantity × unit price, in cents"),
		field.JSON("metadata", map[string]string{}).Optional().
			Comment("free-form attributes; JSONB on PostgreSQL"),
		field.Time("created_at").Default(time.Now).Immutable(),
		field.Time("updated_at").Default(time.Now).UpdateDefault(time.Now),
	}
}

// Edges of the Order.
func (Order) Edges() []ent.Edge {
	return []ent.Edge{
		edge.To("lines", OrderLine.Type).
			Annotations(entsql.OnDelete(entsql.Cascade)),
	}
}

// Indexes of the Order.
func (Order) Indexes() []ent.Index {
	return []ent.Index{index.Fields("customer")}
}

// OrderLine is one product line of an order.
type OrderLine struct {
	ent.Schema
}

// Fields of the OrderLine.
func (OrderLine) Fields() []ent.Field {
	return []ent.Field{
		field.Int("id"), // as Order's
		field.String("sku").NotEmpty().MaxLen(64),
		field.Int("quantity").Positive(),
		field.Int64("unit_price_cents").NonNegative(),
	}
}

// Indexes of the OrderLine: its order's lines are read by the order's id
// (PostgreSQL does not index a foreign key by itself).
func (OrderLine) Indexes() []ent.Index {
	return []ent.Index{index.Edges("order")}
}

// Edges of the OrderLine.
func (OrderLine) Edges() []ent.Edge {
	return []ent.Edge{
		edge.From("order", Order.Type).Ref("lines").Unique().Required(),
	}
}
