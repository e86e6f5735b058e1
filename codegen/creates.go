package codegen

import (
	"bytes"
	"fmt"
	"go/ast"
	"go/format"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"

	"entgo.io/ent/entc/gen"
	"golang.org/x/tools/go/ast/astutil"
)

// sqlcreatePath is the package the create builders call instead of
// sqlgraph.CreateNode.
const sqlcreatePath = "github.com/bento-go/bento/sqlcreate"

// directCreates runs the generator, then rewrites the sqlSave method of
// every create builder (<type>_create.go) to call sqlcreate.Node where
// ent's template calls sqlgraph.CreateNode: same arguments, same
// contract. The rewrite works on the syntax tree, so it does not depend
// on the rest of ent's template; a create builder without exactly one
// such call (a future ent that changed it) fails the generation with an
// error that names the file and Extension.EntCreates.
func directCreates(next gen.Generator) gen.Generator {
	return gen.GenerateFunc(func(g *gen.Graph) error {
		if err := next.Generate(g); err != nil {
			return err
		}
		if g.Storage == nil || g.Storage.Name != "sql" {
			return nil
		}
		for _, n := range g.Nodes {
			if n.IsView() {
				continue // views have no create builder
			}
			if err := rewriteCreate(filepath.Join(g.Config.Target, n.PackageDir()+"_create.go")); err != nil {
				return err
			}
		}
		return nil
	})
}

// rewriteCreate rewrites the sqlgraph.CreateNode call of path's sqlSave
// methods to sqlcreate.Node and adds the import.
func rewriteCreate(path string) error {
	src, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("codegen: %w", err)
	}
	fset := token.NewFileSet()
	file, err := parser.ParseFile(fset, path, src, parser.ParseComments)
	if err != nil {
		return fmt.Errorf("codegen: %w", err)
	}
	calls := 0
	for _, d := range file.Decls {
		fn, ok := d.(*ast.FuncDecl)
		if !ok || fn.Recv == nil || fn.Name.Name != "sqlSave" {
			continue
		}
		ast.Inspect(fn.Body, func(n ast.Node) bool {
			sel, ok := n.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			if pkg, ok := sel.X.(*ast.Ident); ok && pkg.Name == "sqlgraph" && sel.Sel.Name == "CreateNode" {
				pkg.Name, sel.Sel.Name = "sqlcreate", "Node"
				calls++
			}
			return true
		})
	}
	if calls != 1 {
		return fmt.Errorf("codegen: %s: found %d sqlgraph.CreateNode calls in sqlSave, expected 1: this ent version generates create builders Bento does not know; set codegen.Extension{EntCreates: true} to keep ent's create path", path, calls)
	}
	astutil.AddImport(fset, file, sqlcreatePath)
	var out bytes.Buffer
	if err := format.Node(&out, fset, file); err != nil {
		return fmt.Errorf("codegen: %s: %w", path, err)
	}
	return os.WriteFile(path, out.Bytes(), 0o644)
}
