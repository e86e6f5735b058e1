package schema

import (
	"entgo.io/ent"
	"entgo.io/ent/schema/field"

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
		field.String("customer").NotEmpty(),
		field.Int64("total_cents").NonNegative(),
	}
}
