package driver

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"entgo.io/ent/dialect"
	entsql "entgo.io/ent/dialect/sql"
)

// ErrDraining is returned for work that arrives while the driver is
// draining (package drain). It is never retried.
var ErrDraining = errors.New("bento: draining: the database is shutting down and takes no new work")

// ErrPoolTimeout is returned (wrapped in a *PoolTimeoutError) when no
// connection became free within the pool timeout.
var ErrPoolTimeout = errors.New("pool timeout")

// PoolTimeoutError says that every connection of a pool stayed busy for the
// whole pool timeout.
type PoolTimeoutError struct {
	Role    string        // the pool's role, e.g. "primary"
	Waited  time.Duration // how long the caller waited
	MaxOpen int           // the limit that was reached
	Write   bool          // the wait was for the single write slot (SQLite)
}

func (e *PoolTimeoutError) Error() string {
	if e.Write {
		return fmt.Sprintf("bento: pool timeout: another write transaction held the %s database for %s (SQLite writes one at a time; shorten write transactions or raise DB_POOL_TIMEOUT)",
			e.Role, e.Waited.Round(time.Millisecond))
	}
	return fmt.Sprintf("bento: pool timeout: no %s connection became free within %s (all %d in use; raise DB_POOL_SIZE/DB_MAX_OVERFLOW or DB_POOL_TIMEOUT)",
		e.Role, e.Waited.Round(time.Millisecond), e.MaxOpen)
}

// Is makes errors.Is(err, ErrPoolTimeout) true.
func (e *PoolTimeoutError) Is(target error) bool { return target == ErrPoolTimeout }

// Pool is one database/sql pool behind the Driver (the primary, or a
// replica) with a bounded wait for a connection: database/sql waits for a
// free connection as long as the context allows, so the Pool admits at most
// MaxOpen units of work at a time and fails the rest after the pool timeout.
//
// A unit of work is a whole transaction, or a statement outside one until
// its result arrives (rows are then read on the connection database/sql
// holds until they are closed).
type Pool struct {
	role    string
	dialect string
	db      *sql.DB
	base    *entsql.Driver
	sem     chan struct{}
	writers chan struct{} // one write unit at a time, when SerializeWrites
	timeout time.Duration

	deferBegin bool // PostgreSQL: BEGIN goes with the first statement that writes
	txID       bool // and the pipeline reads the transaction id

	overflow *overflow // nil: database/sql closes connections beyond max idle on return

	waits     atomic.Int64
	waitNanos atomic.Int64
	timeouts  atomic.Int64
}

// PoolConfig describes a Pool.
type PoolConfig struct {
	// Role names the pool in errors, logs and metrics: "primary", "replica".
	Role string
	// Dialect is the ent dialect name.
	Dialect string
	// DB is the database/sql pool. Its SetMaxOpenConns should equal MaxOpen.
	DB *sql.DB
	// MaxOpen is the number of units of work admitted at once; <= 0 means
	// no limit beyond database/sql's own.
	MaxOpen int
	// Timeout bounds a unit of work's whole wait for its slots: the write
	// slot (SerializeWrites) and a connection slot together, one deadline
	// for both. <= 0 waits as long as the context allows.
	Timeout time.Duration
	// SerializeWrites admits one writing unit of work at a time (a
	// transaction that is not read-only, or a statement outside one that
	// is not IsReadOnly); reads go on beside it. SQLite needs it: its
	// writers take the file's write lock one at a time, and a writer that
	// finds it taken sleeps in SQLite's busy handler, so queueing writers
	// in Go hands the lock over at once and never surfaces SQLITE_BUSY
	// within the process.
	SerializeWrites bool
	// PipelineBegin (PostgreSQL only) runs each transaction on a
	// connection of its own whose BEGIN is sent in one pipeline with the
	// transaction's first statement that writes, instead of as a round
	// trip of its own; a first statement that only reads is preceded by
	// the BEGIN as usual. COMMIT and ROLLBACK, their errors and their
	// effect on the connection are as with database/sql's transactions.
	PipelineBegin bool
	// BeginTxID (PostgreSQL, with PipelineBegin) adds SELECT
	// PostgresTxIDExpr to the pipeline that sends BEGIN, so the
	// transaction's id is known (Tx.BeginTxID) from its first round trip:
	// resolving a lost COMMIT then needs no round trip before COMMIT to
	// learn it, and a deferred statement (Tx.DeferExec) can go with COMMIT.
	// A transaction sent whole with its COMMIT (Tx.WholeWithCommit) does
	// not read it: its answer would be lost with the COMMIT's.
	BeginTxID bool
	// KeepIdle is DB's max idle (SetMaxIdleConns): the connections kept
	// however long they sit idle. With OverflowIdle > 0 and KeepIdle <
	// MaxOpen, the connections opened beyond KeepIdle under load are kept
	// too while they are needed, and closed once no more than KeepIdle
	// units of work have held a slot at once for OverflowIdle; database/sql
	// alone would close each as it is returned, so a load that swings
	// around KeepIdle would open a connection (a server process, on
	// PostgreSQL) for nearly every unit of work above it.
	KeepIdle int
	// OverflowIdle is how long connections beyond KeepIdle outlive the
	// last moment more than KeepIdle were in use; 0 closes them on return.
	OverflowIdle time.Duration
}

// NewPool returns a Pool over cfg.DB.
func NewPool(cfg PoolConfig) *Pool {
	p := &Pool{role: cfg.Role, dialect: cfg.Dialect, db: cfg.DB, base: entsql.OpenDB(cfg.Dialect, cfg.DB), timeout: cfg.Timeout}
	if p.role == "" {
		p.role = "primary"
	}
	if cfg.MaxOpen > 0 {
		p.sem = make(chan struct{}, cfg.MaxOpen)
	}
	if cfg.SerializeWrites {
		p.writers = make(chan struct{}, 1)
	}
	p.deferBegin = cfg.PipelineBegin && cfg.Dialect == dialect.Postgres
	p.txID = p.deferBegin && cfg.BeginTxID
	if p.sem != nil && cfg.OverflowIdle > 0 && cfg.KeepIdle > 0 && cfg.KeepIdle < cfg.MaxOpen {
		p.overflow = &overflow{db: cfg.DB, keep: cfg.KeepIdle, max: cfg.MaxOpen, linger: cfg.OverflowIdle, epoch: time.Now()}
	}
	return p
}

// overflow keeps a pool's connections beyond its max idle open while they
// are needed: the first unit of work that finds more than keep slots taken
// raises database/sql's max idle to max, and a timer lowers it back to keep
// (closing the idle connections above it) once linger has passed without
// such a unit.
type overflow struct {
	db     *sql.DB
	keep   int
	max    int
	linger time.Duration
	epoch  time.Time

	last   atomic.Int64 // when a unit last found more than keep slots taken, in ns since epoch
	raised atomic.Bool  // max idle is max

	mu     sync.Mutex // serialises raising and lowering
	timer  *time.Timer
	closed bool
}

// busy notes that n slots are taken, the caller's among them.
func (o *overflow) busy(n int) {
	if n <= o.keep {
		return
	}
	o.last.Store(int64(time.Since(o.epoch)))
	if o.raised.Load() {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.raised.Load() || o.closed {
		return
	}
	o.db.SetMaxIdleConns(o.max)
	o.raised.Store(true)
	if o.timer == nil {
		o.timer = time.AfterFunc(o.linger, o.retire)
	} else {
		o.timer.Reset(o.linger)
	}
}

// retire lowers max idle back to keep if no unit found more than keep
// slots taken for linger, and otherwise looks again when linger will have
// passed since the last one did.
func (o *overflow) retire() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return
	}
	last := o.last.Load()
	if wait := o.linger - (time.Since(o.epoch) - time.Duration(last)); wait > 0 {
		o.timer.Reset(wait)
		return
	}
	o.raised.Store(false)
	// A unit that stored its time before seeing raised still true did not
	// raise it again: keep the connections for it.
	if o.last.Load() != last {
		o.raised.Store(true)
		o.timer.Reset(o.linger)
		return
	}
	o.db.SetMaxIdleConns(o.keep)
}

// stop ends the timer; the pool is closing.
func (o *overflow) stop() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.closed = true
	if o.timer != nil {
		o.timer.Stop()
	}
}

// Close stops the pool's timers and closes its database/sql pool.
func (p *Pool) Close() error {
	if p.overflow != nil {
		p.overflow.stop()
	}
	return p.db.Close()
}

// Role returns the pool's role.
func (p *Pool) Role() string { return p.role }

// Dialect returns the pool's ent dialect name.
func (p *Pool) Dialect() string { return p.dialect }

// DB returns the underlying database/sql pool.
func (p *Pool) DB() *sql.DB { return p.db }

// acquire takes a slot for a unit of work (and the write slot when writes
// are serialised and write is true), waiting at most the pool timeout in
// all. It reports whether it took the write slot.
func (p *Pool) acquire(ctx context.Context, write bool) (wrote bool, err error) {
	write = write && p.writers != nil
	// One deadline for both slots: the write slot's wait counts against
	// the connection slot's.
	var start, deadline time.Time
	begin := func() {
		if start.IsZero() {
			p.waits.Add(1) // once per unit of work, however many slots it waits for
			start = time.Now()
			if p.timeout > 0 {
				deadline = start.Add(p.timeout)
			}
		}
	}
	if write {
		select {
		case p.writers <- struct{}{}:
		default:
			begin()
			if err := p.acquireSlow(ctx, p.writers, start, deadline, "write"); err != nil {
				return false, err
			}
		}
	}
	if p.sem != nil {
		select {
		case p.sem <- struct{}{}:
		default:
			begin()
			if err := p.acquireSlow(ctx, p.sem, start, deadline, ""); err != nil {
				if write {
					<-p.writers
				}
				return false, err
			}
		}
		if p.overflow != nil {
			p.overflow.busy(len(p.sem))
		}
	}
	return write, nil
}

// acquireSlow waits for a slot of sem until ctx ends or deadline (none if
// zero) passes; start is when the caller began to wait, for the figures.
func (p *Pool) acquireSlow(ctx context.Context, sem chan struct{}, start, deadline time.Time, what string) error {
	waitStart := time.Now()
	defer func() { p.waitNanos.Add(int64(time.Since(waitStart))) }()
	var timeout <-chan time.Time
	if !deadline.IsZero() {
		t := time.NewTimer(time.Until(deadline))
		defer t.Stop()
		timeout = t.C
	}
	select {
	case sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("bento: waiting for a %s connection: %w", p.role, context.Cause(ctx))
	case <-timeout:
		p.timeouts.Add(1)
		return &PoolTimeoutError{Role: p.role, Waited: time.Since(start), MaxOpen: cap(sem), Write: what == "write"}
	}
}

// release gives back what acquire took.
func (p *Pool) release(write bool) {
	if p.sem != nil {
		<-p.sem
	}
	if write {
		<-p.writers
	}
}

// Acquire reserves a connection slot for work done directly on DB (a
// dedicated *sql.Conn, say), bounded by the pool timeout like every other
// unit of work. Call the returned function exactly once when done.
//
// A write unit (write true) also takes the write slot when writes are
// serialised.
func (p *Pool) Acquire(ctx context.Context, write bool) (release func(), err error) {
	w, err := p.acquire(ctx, write)
	if err != nil {
		return nil, err
	}
	return func() { p.release(w) }, nil
}

// PoolStats are a Pool's statistics: database/sql's and the slot wait.
type PoolStats struct {
	Role string `json:"role"`
	// MaxOpen is the connection limit.
	MaxOpen int `json:"max_open"`
	// Open, InUse and Idle are database/sql's connection counts.
	Open  int `json:"open"`
	InUse int `json:"in_use"`
	Idle  int `json:"idle"`
	// Busy is the number of units of work holding a slot.
	Busy int `json:"busy"`
	// Writing is 1 while a write unit holds the write slot (SQLite).
	Writing int `json:"writing"`
	// Waits is how many units of work had to wait for a slot, WaitTime the
	// total time they waited and Timeouts how many gave up after the pool
	// timeout.
	Waits    int64         `json:"waits"`
	WaitTime time.Duration `json:"wait_ns"`
	Timeouts int64         `json:"timeouts"`
	// Closed counts connections closed for being idle too long or too old:
	// ClosedIdle for idling beyond the idle limit (with the overflow
	// closed on return, DB_POOL_OVERFLOW_IDLE=0, this grows by about one
	// per unit of work above DB_POOL_SIZE), ClosedLifetime for
	// DB_POOL_RECYCLE.
	Closed         int64 `json:"closed"`
	ClosedIdle     int64 `json:"closed_idle"`
	ClosedLifetime int64 `json:"closed_lifetime"`
}

// Stats returns the pool's statistics.
func (p *Pool) Stats() PoolStats {
	s := p.db.Stats()
	st := PoolStats{
		Role: p.role, MaxOpen: s.MaxOpenConnections, Open: s.OpenConnections, InUse: s.InUse, Idle: s.Idle,
		Waits: p.waits.Load(), WaitTime: time.Duration(p.waitNanos.Load()), Timeouts: p.timeouts.Load(),
		ClosedIdle: s.MaxIdleClosed + s.MaxIdleTimeClosed, ClosedLifetime: s.MaxLifetimeClosed,
	}
	st.Closed = st.ClosedIdle + st.ClosedLifetime
	if p.sem != nil {
		st.MaxOpen = cap(p.sem)
		st.Busy = len(p.sem)
	}
	if p.writers != nil {
		st.Writing = len(p.writers)
	}
	return st
}
