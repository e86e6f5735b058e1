// Package pgxfloor places the benchmarks' order the cheapest way a Go
// program can: the rows a unit of work writes for it (the order, its line,
// its OrderPlaced outbox row) in the unit of work's one round trip (the
// three inserts in one pipeline, PostgreSQL's implicit transaction
// committing them at its Sync), written by hand on a bare pgx pool, with
// no ent, database/sql or Bento layer. Its client CPU per order is the
// floor under the unit of work's: what pgx and the Go runtime cost for the
// same work. `bento bench --floor` and shop's BenchmarkPlaceOrderPgx run
// it.
//
// The ids come from the same ids.Blocks as the unit of work's, and the
// outbox row from the writer's own statement (outbox.WriteStatements);
// the order's and the line's inserts are written by hand, with the
// columns ent sets (the order's version and status as literals, where ent
// binds them as parameters: a little less for the floor to encode).
package pgxfloor

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"time"

	"entgo.io/ent/dialect"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/dialects"
	"github.com/bento-go/bento/ids"
	"github.com/bento-go/bento/outbox"
	"github.com/bento-go/bento/shop"
)

// The order's and the line's inserts, with the columns ent sets.
const (
	insertOrder = "INSERT INTO orders (id, version, customer, status, total_cents, created_at, updated_at) VALUES ($1, 1, $2, 'pending', $3, $4, $4)"
	insertLine  = "INSERT INTO order_lines (id, sku, quantity, unit_price_cents, order_lines) VALUES ($1, $2, $3, $4, $5)"
)

// Placer places one-line orders on a pgx pool.
type Placer struct {
	pool   *pgxpool.Pool
	ids    *ids.Blocks
	outbox string // the outbox insert (sequence upsert and insert in one statement)
}

// New returns a Placer that writes on pool, with ids from blocks (which
// must not be nil: the floor is PostgreSQL's, whose ids come from the
// tables' sequences) and the outbox table of names.
func New(pool *pgxpool.Pool, blocks *ids.Blocks, names outbox.Names) (*Placer, error) {
	if blocks == nil {
		return nil, errors.New("pgxfloor: no id blocks: the floor runs on PostgreSQL only")
	}
	return &Placer{pool: pool, ids: blocks, outbox: outbox.WriteStatements(dialect.Postgres, names).Insert}, nil
}

// Place writes an order of customer with line, its line and its
// OrderPlaced outbox row in one transaction, in one round trip, and
// returns the order's id. The three inserts go in one pipeline without
// BEGIN and COMMIT, as the unit of work sends them: PostgreSQL runs a
// pipeline's statements up to its Sync as one implicit transaction. An
// error leaves nothing behind: the server skips the rest of the pipeline
// after a failed statement and rolls the transaction back at the Sync.
func (p *Placer) Place(ctx context.Context, customer string, line shop.Line) (int, error) {
	id, err := p.ids.Take(ctx, "orders", 1)
	if err != nil {
		return 0, err
	}
	lineID, err := p.ids.Take(ctx, "order_lines", 1)
	if err != nil {
		return 0, err
	}
	total := int64(line.Quantity) * line.UnitPriceCents
	payload, err := json.Marshal(shop.OrderPlaced{OrderID: id[0], Customer: customer, TotalCents: total, Lines: []shop.Line{line}})
	if err != nil {
		return 0, err
	}
	eid, err := uuid.NewV7()
	if err != nil {
		return 0, err
	}
	now := time.Now()
	b := &pgx.Batch{}
	b.Queue(insertOrder, id[0], customer, total, now)
	b.Queue(insertLine, lineID[0], line.SKU, line.Quantity, line.UnitPriceCents, id[0])
	b.Queue(p.outbox, "Order", strconv.Itoa(id[0]), eid.String(), shop.OrderPlaced{}.EventType(), json.RawMessage(payload), nil, now, now.UnixMicro())
	c, err := p.pool.Acquire(ctx)
	if err != nil {
		return 0, err
	}
	defer c.Release()
	br := c.SendBatch(ctx, b)
	for range 3 { // the three inserts
		if err == nil {
			_, err = br.Exec()
		}
	}
	if err = errors.Join(err, br.Close()); err != nil {
		return 0, err
	}
	return id[0], nil
}

// NewPool opens a pgx pool on the database of cfg, with the connection
// settings Bento's own PostgreSQL connections get
// (dialects.PostgresConnConfig) and as many connections as Bento's pool
// holds at most (DB_POOL_SIZE + DB_MAX_OVERFLOW).
func NewPool(ctx context.Context, cfg config.DB) (*pgxpool.Pool, error) {
	cc, err := dialects.PostgresConnConfig(cfg, dialects.Options{})
	if err != nil {
		return nil, err
	}
	pc, err := pgxpool.ParseConfig("")
	if err != nil {
		return nil, err
	}
	pc.ConnConfig = cc
	pc.MaxConns = int32(max(1, cfg.PoolSize+cfg.MaxOverflow))
	return pgxpool.NewWithConfig(ctx, pc)
}
