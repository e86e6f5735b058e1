package bento_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"

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
