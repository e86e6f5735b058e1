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
}

// Templates returns the template that generates bento.go in the ent
// package.
func (Extension) Templates() []*gen.Template {
	return []*gen.Template{gen.MustParse(gen.NewTemplate("bento").Parse(bentoTemplate))}
}

var _ entc.Extension = Extension{}
