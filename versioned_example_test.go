package bento_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bento-go/bento"
	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/ent/migrate"
)

// The versioned workflow on an in-memory SQLite database: MigrateDiff
// writes a file in development, MigrateApply applies it at deployment,
// MigrateStatus reports it applied.
func ExampleDB_MigrateApply() {
	ctx := context.Background()
	cfg := config.Default()
	cfg.DB.URL, _ = config.ParseURL(":memory:")
	db, err := bento.Open(cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	tmp, err := os.MkdirTemp("", "bento-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	dir := filepath.Join(tmp, "migrations", db.Dialect())

	// Development: write the file for what the schema needs, review it,
	// commit it with atlas.sum.
	file, err := db.MigrateDiff(ctx, dir, "create_orders", migrate.Tables...)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("wrote a file:", file != "")

	// Deployment: apply what is pending, under the migration lock.
	applied, err := db.MigrateApply(ctx, dir)
	if err != nil {
		log.Fatal(err)
	}
	for _, f := range applied {
		fmt.Println("applied", f.Description)
	}

	st, err := db.MigrateStatus(ctx, dir)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("applied %d, pending %d\n", st.Applied, st.Pending)
	// Output:
	// wrote a file: true
	// applied create_orders
	// applied 1, pending 0
}

// TestMigrationsDocCode keeps docs/migrations.md honest: every ```go block
// of the page is a run of lines (indentation aside) of this file, where
// the code compiles and runs.
func TestMigrationsDocCode(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("docs", "migrations.md"))
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile("versioned_example_test.go")
	if err != nil {
		t.Fatal(err)
	}
	trim := func(s string) []string {
		var out []string
		for _, l := range strings.Split(s, "\n") {
			if l = strings.TrimSpace(l); l != "" {
				out = append(out, l)
			}
		}
		return out
	}
	source := strings.Join(trim(string(src)), "\n")
	blocks := strings.Split(string(doc), "```go\n")[1:]
	if len(blocks) < 3 {
		t.Fatalf("found %d Go blocks in docs/migrations.md; want the diff, apply and status calls", len(blocks))
	}
	for _, b := range blocks {
		block, _, _ := strings.Cut(b, "```")
		if !strings.Contains(source, strings.Join(trim(block), "\n")) {
			t.Errorf("docs/migrations.md shows code that is not in versioned_example_test.go:\n%s", block)
		}
	}
}
