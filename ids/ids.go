// Package ids hands out the ids of new rows before they are inserted,
// from the database's own sequence for the table, a block at a time.
//
// ent asks the database for the id of every row it inserts (RETURNING),
// so each insert is a round trip of its own and the next statement waits
// for it. A row whose id the code sets (ent's SetID) is inserted without
// RETURNING; with unitofwork.DeferWrites such inserts then go to the
// server together, with the transaction's COMMIT. Blocks supplies those
// ids: it reads a block of the table's sequence (nextval, the sequence the
// column's default uses, so the ids never collide with ids the database
// assigns) and hands them out one by one until the block is used up.
//
// Ids so taken are unique, and increase within one process; across
// processes, and where a block is not used up (a process that ends), they
// leave gaps, as sequences do after a rollback. Only PostgreSQL has such
// sequences here: on MySQL/MariaDB and SQLite New returns nil, and a nil
// *Blocks hands out no ids, so the database assigns them as before.
package ids

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"

	"github.com/bento-go/bento/driver"
	"github.com/bento-go/bento/resilience"
)

// DefaultBlock is how many ids a Blocks reads at a time unless New is told
// otherwise: one statement per hundred rows.
const DefaultBlock = 100

// Blocks hands out ids from blocks of the tables' sequences. It is safe
// for concurrent use.
type Blocks struct {
	db      Querier
	size    int
	policy  resilience.Policy
	mu      sync.Mutex
	free    map[string][]int
	reading map[string]*blockRead // the block read in flight, per table
}

// blockRead is a block read in flight: the callers that need ids of the
// same table meanwhile wait for it, not for a read of their own, so a
// read that fails (a pool timeout, say) fails them all at once instead of
// one after another.
type blockRead struct {
	done chan struct{}
	err  error // set before done is closed
}

// Querier runs a query: a Bento driver (bento.DB.Driver(), whose
// middleware then sees the statement; it goes to the primary) or a
// *sql.DB.
type Querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// New returns a Blocks reading blocks of size ids (DefaultBlock if size <=
// 0) through db; nil unless dialect is "postgres".
func New(db Querier, dialect string, size int) *Blocks {
	if dialect != "postgres" || db == nil {
		return nil
	}
	if size <= 0 {
		size = DefaultBlock
	}
	return &Blocks{db: db, size: size, policy: resilience.DefaultPolicy(), free: map[string][]int{}, reading: map[string]*blockRead{}}
}

// Retry sets the policy a block's read is retried with on a retryable
// error (default resilience.DefaultPolicy: a read lost to a restarting
// server is read again, wasting at most the values it had taken). It
// returns b, and is a no-op on a nil Blocks.
func (b *Blocks) Retry(p resilience.Policy) *Blocks {
	if b != nil {
		b.policy = p
	}
	return b
}

// Take returns n ids for new rows of table, whose id column takes its
// default from a sequence (ent's integer ids: an identity column). On a
// nil Blocks it returns nil: the database is to assign the ids.
//
// When the table's block is used up, one caller reads the next one, and
// the callers that need ids of that table meanwhile wait for that read
// (or for their ctx): a caller waits at most one block read, never a
// queue of them. No lock is held while reading.
func (b *Blocks) Take(ctx context.Context, table string, n int) ([]int, error) {
	if b == nil || n <= 0 {
		return nil, nil
	}
	b.mu.Lock()
	for len(b.free[table]) < n {
		if r := b.reading[table]; r != nil {
			b.mu.Unlock()
			select {
			case <-r.done:
			case <-ctx.Done():
				return nil, fmt.Errorf("ids: waiting for ids of table %q: %w", table, resilience.Wrap(context.Cause(ctx), "query"))
			}
			// Another caller's cancellation is not this caller's
			// failure: it then reads the block itself.
			if r.err != nil && !errors.Is(r.err, context.Canceled) && !errors.Is(r.err, context.DeadlineExceeded) {
				return nil, r.err
			}
			b.mu.Lock()
			continue
		}
		r := &blockRead{done: make(chan struct{})}
		b.reading[table] = r
		need := max(b.size, n-len(b.free[table]))
		b.mu.Unlock()
		block, err := b.read(ctx, table, need)
		b.mu.Lock()
		delete(b.reading, table)
		r.err = err
		close(r.done)
		if err != nil {
			b.mu.Unlock()
			return nil, err
		}
		b.free[table] = append(b.free[table], block...)
	}
	free := b.free[table]
	b.free[table] = free[n:]
	b.mu.Unlock()
	return free[:n:n], nil
}

// read reads n values of table's id sequence, retrying with the policy.
func (b *Blocks) read(ctx context.Context, table string, n int) (block []int, err error) {
	err = b.policy.Do(ctx, func(ctx context.Context) error {
		block, err = b.readOnce(ctx, table, n)
		return err
	})
	return block, err
}

// readOnce reads n values of table's id sequence once. Its errors are
// classified (resilience.Error), those of reading the rows too: a
// connection lost after the statement was answered is retryable.
func (b *Blocks) readOnce(ctx context.Context, table string, n int) ([]int, error) {
	rows, err := b.db.QueryContext(driver.UsePrimary(ctx), "SELECT nextval(pg_get_serial_sequence($1, 'id')) FROM generate_series(1, $2::int)", table, n)
	if err != nil {
		return nil, fmt.Errorf("ids: reading %d ids of table %q: %w", n, table, resilience.Wrap(err, "query"))
	}
	defer rows.Close()
	block := make([]int, 0, n)
	var id sql.NullInt64
	for rows.Next() {
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("ids: reading ids of table %q: %w", table, resilience.Wrap(err, "query"))
		}
		if !id.Valid {
			return nil, fmt.Errorf("ids: table %q has no sequence behind its id column (accepted: a table whose integer id the database assigns, such as ent's)", table)
		}
		block = append(block, int(id.Int64))
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("ids: reading ids of table %q: %w", table, resilience.Wrap(err, "query"))
	}
	if len(block) != n {
		return nil, errors.New("ids: the database returned fewer ids than asked for")
	}
	return block, nil
}
