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
	return "SELECT " + result + ", fingerprint FROM " + t + " WHERE idempotency_key = " + p(1),
		"INSERT INTO " + t + " (idempotency_key, result, created_at, fingerprint) VALUES (" + p(1) + ", " + value + ", " + p(3) + ", " + p(4) + ")"
}

// storedKey is what the idempotency table holds for a key.
type storedKey struct {
	result      []byte
	fingerprint string // "" when the key was stored without one
}

// ErrIdempotencyKeyReused is returned (wrapped) by a Do whose
// IdempotencyKey was stored with a different IdempotencyFingerprint: the
// key was sent again with another request. Nothing is applied.
var ErrIdempotencyKeyReused = errors.New("unitofwork: idempotency key reused with a different request")

// check returns ErrIdempotencyKeyReused when both fingerprints are known
// and differ.
func (k storedKey) check(key, fingerprint string) error {
	if k.fingerprint == "" || fingerprint == "" || k.fingerprint == fingerprint {
		return nil
	}
	return fmt.Errorf("%w: key %q was first used with request %.12s…, now with %.12s…", ErrIdempotencyKeyReused, key, k.fingerprint, fingerprint)
}

func lookupKey(ctx context.Context, tx *driver.Tx, n outbox.Names, key string) (storedKey, bool, error) {
	q, _ := keyQueries(tx.Pool().Dialect(), n)
	return lookup(ctx, tx, q, key)
}

func lookupKeyOutside(ctx context.Context, d *driver.Driver, n outbox.Names, key string) (storedKey, bool, error) {
	q, _ := keyQueries(d.Dialect(), n)
	// On the primary: a replica may not have the other unit's key yet.
	return lookup(driver.UsePrimary(ctx), d, q, key)
}

func lookup(ctx context.Context, db querier, q, key string) (storedKey, bool, error) {
	rows, err := db.QueryContext(ctx, q, key)
	if err != nil {
		return storedKey{}, false, fmt.Errorf("unitofwork: looking up idempotency key: %w", err)
	}
	defer rows.Close()
	if !rows.Next() {
		return storedKey{}, false, rows.Err()
	}
	var result, fingerprint sql.NullString
	if err := rows.Scan(&result, &fingerprint); err != nil {
		return storedKey{}, false, fmt.Errorf("unitofwork: reading idempotency key: %w", err)
	}
	return storedKey{result: []byte(result.String), fingerprint: fingerprint.String}, true, errors.Join(rows.Err())
}

func storeKey(ctx context.Context, tx *driver.Tx, n outbox.Names, key, fingerprint string, result []byte) error {
	_, q := keyQueries(tx.Pool().Dialect(), n)
	var r, fp any
	if result != nil {
		r = string(result)
	}
	if fingerprint != "" {
		fp = fingerprint
	}
	if _, err := tx.ExecContext(ctx, q, key, r, time.Now().UTC(), fp); err != nil {
		return fmt.Errorf("unitofwork: storing idempotency key: %w", err)
	}
	return nil
}
