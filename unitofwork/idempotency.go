package unitofwork

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"entgo.io/ent/dialect"

	"github.com/bento-go/bento/dialects"
	"github.com/bento-go/bento/driver"
	"github.com/bento-go/bento/outbox"
)

// querier is what the key lookups run on: a transaction or the driver.
type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

func keyQueries(d string, n outbox.Names) (lookup, store string) {
	t := dialects.QuoteIdent(d, n.Idempotency)
	p := func(i int) string { return dialects.Placeholder(d, i) }
	result, value := "result", p(2)
	if d == dialect.Postgres {
		result, value = "result::text", p(2)+"::jsonb"
	}
	return "SELECT " + result + " FROM " + t + " WHERE idempotency_key = " + p(1),
		"INSERT INTO " + t + " (idempotency_key, result, created_at) VALUES (" + p(1) + ", " + value + ", " + p(3) + ")"
}

func lookupKey(ctx context.Context, tx *driver.Tx, n outbox.Names, key string) ([]byte, bool, error) {
	q, _ := keyQueries(tx.Pool().Dialect(), n)
	return lookup(ctx, tx, q, key)
}

func lookupKeyOutside(ctx context.Context, d *driver.Driver, n outbox.Names, key string) ([]byte, bool, error) {
	q, _ := keyQueries(d.Dialect(), n)
	// On the primary: a replica may not have the other unit's key yet.
	return lookup(driver.UsePrimary(ctx), d, q, key)
}

func lookup(ctx context.Context, db querier, q, key string) ([]byte, bool, error) {
	rows, err := db.QueryContext(ctx, q, key)
	if err != nil {
		return nil, false, fmt.Errorf("unitofwork: looking up idempotency key: %w", err)
	}
	defer rows.Close()
	if !rows.Next() {
		return nil, false, rows.Err()
	}
	var result sql.NullString
	if err := rows.Scan(&result); err != nil {
		return nil, false, fmt.Errorf("unitofwork: reading idempotency key: %w", err)
	}
	return []byte(result.String), true, errors.Join(rows.Err())
}

func storeKey(ctx context.Context, tx *driver.Tx, n outbox.Names, key string, result []byte) error {
	_, q := keyQueries(tx.Pool().Dialect(), n)
	var r any
	if result != nil {
		r = string(result)
	}
	if _, err := tx.ExecContext(ctx, q, key, r, time.Now().UTC()); err != nil {
		return fmt.Errorf("unitofwork: storing idempotency key: %w", err)
	}
	return nil
}
