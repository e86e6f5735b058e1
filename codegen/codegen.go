// Package codegen is Bento's ent extension. Added to entc.Generate, it
// generates into the ent package, for every schema with the aggregate
// mixin, the AggregateType and AggregateID methods (so entities satisfy
// outbox.Aggregate), AggregateSpecs (what aggregate.Hooks needs), and a
// UnitOfWork type with its constructor, so that users never spell type
// parameters or write adapters:
//
//	// ent/entc.go
//	err := entc.Generate("./schema", &gen.Config{...}, entc.Extensions(codegen.Extension{}))
//
//	// application
//	uow := ent.NewUnitOfWork(client) // *unitofwork.UnitOfWork[*ent.Client, *ent.Tx]
//
// It also points each create builder's sqlSave at sqlcreate.Node instead
// of sqlgraph.CreateNode (see Extension.EntCreates).
package codegen

import (
	_ "embed"

	"entgo.io/ent/entc"
	"entgo.io/ent/entc/gen"
)

//go:embed bento.tmpl
var bentoTemplate string

// Extension is the ent extension. The zero value is ready to use.
type Extension struct {
	entc.DefaultExtension

	// EntCreates keeps ent's own create path in the generated create
	// builders (sqlgraph.CreateNode) instead of sqlcreate.Node, which
	// writes the common INSERT without ent's SQL builder and hands every
	// other create to sqlgraph.CreateNode.
	EntCreates bool
}

// Hooks returns the generator hook that routes the create builders'
// inserts through sqlcreate.Node, unless EntCreates is set.
func (e Extension) Hooks() []gen.Hook {
	if e.EntCreates {
		return nil
	}
	return []gen.Hook{directCreates}
}

// Templates returns the template that generates bento.go in the ent
// package.
func (Extension) Templates() []*gen.Template {
	return []*gen.Template{gen.MustParse(gen.NewTemplate("bento").Parse(bentoTemplate))}
}

var _ entc.Extension = Extension{}
