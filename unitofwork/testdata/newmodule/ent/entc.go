//go:build ignore

// entc.go generates package ent from package schema; go generate ./...
// runs it.
package main

import (
	"log"

	"entgo.io/ent/entc"
	"entgo.io/ent/entc/gen"

	"github.com/bento-go/bento/codegen"
)

func main() {
	err := entc.Generate("../schema", &gen.Config{
		Target:   ".",
		Package:  "example.com/shop/ent",
		Features: []gen.Feature{gen.FeatureLock, gen.FeatureExecQuery, gen.FeatureModifier},
	}, entc.Extensions(codegen.Extension{}))
	if err != nil {
		log.Fatalf("running ent codegen: %v", err)
	}
}
