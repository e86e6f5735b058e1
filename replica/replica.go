// Package replica routes reads to streaming replicas behind Bento's
// driver, with health and lag checks and read-your-writes.
//
// Routing (the Router's driver middleware):
//
//   - A read outside a transaction (driver.IsReadOnly: a SELECT without
//     FOR UPDATE/SHARE) goes to a healthy replica, round-robin.
//   - Everything else goes to the primary: writes, transactions (and so
//     every statement of a unit of work), SELECT … FOR UPDATE, INSERT …
//     RETURNING (ent sends it through Query), reads under UsePrimary(ctx),
//     and reads when no replica is healthy.
//   - Read-your-writes: in a context carrying a Session (WithSession), after
//     a write commits (a transaction, or a write outside one), reads go to
//     the primary or to a replica that has replayed that commit (PostgreSQL:
//     its pg_last_wal_replay_lsn(), as of its last health check, is at least
//     the primary's pg_current_wal_lsn() read after the commit), until the
//     window passes (0: for the session's whole life). A commit whose
//     outcome was ambiguous sends the session's reads to the primary.
//   - A read that fails on a replica with a connection error is retried
//     once on another target, and the replica is taken out until its next
//     check passes.
//
// Health (Run, in the background): every check interval each replica is
// asked whether it is reachable, in recovery, and how far behind it is
// (PostgreSQL: pg_last_xact_replay_timestamp(), zero when it has replayed
// all it received; MariaDB: SHOW SLAVE STATUS Seconds_Behind_Master). A
// replica past the lag limit or failing is taken out, and put back when
// healthy; each change is logged once.
package replica

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"entgo.io/ent/dialect"

	"github.com/bento-go/bento/driver"
	"github.com/bento-go/bento/resilience"
)

// Config configures a Router. Zero fields take the defaults shown.
type Config struct {
	// MaxLag takes a replica out when it is further behind (5 s).
	MaxLag time.Duration
	// CheckInterval is how often replicas are checked (1 s).
	CheckInterval time.Duration
	// CheckTimeout bounds one check (2 s).
	CheckTimeout time.Duration
	// ReadYourWritesWindow bounds how long after a commit a session's reads
	// avoid replicas that have not replayed it; 0 means for the session's
	// whole life.
	ReadYourWritesWindow time.Duration
	// Logger gets one line per replica state change.
	Logger *slog.Logger
	// Observer, if set, is told about routing and replica states (metrics).
	Observer Observer
}

// Observer is told about routing decisions and replica states.
type Observer interface {
	Routed(target, reason string)
	Fallback(reason string)
	ReplicaState(replica string, healthy bool, lag time.Duration)
}

// Replica is one replica and its last known state.
type Replica struct {
	name    string
	url     string // redacted
	pool    *driver.Pool
	healthy atomic.Bool

	mu        sync.Mutex
	state     State
	replayLSN uint64
}

// State is a replica's last known state.
type State struct {
	Name       string        `json:"name"`
	URL        string        `json:"url"`
	Healthy    bool          `json:"healthy"`
	InRecovery bool          `json:"in_recovery"`
	Lag        time.Duration `json:"lag_ns"`
	LagMS      float64       `json:"lag_ms"`
	ReplayLSN  string        `json:"replay_lsn,omitempty"`
	Reason     string        `json:"reason,omitempty"` // why it is out
	CheckedAt  time.Time     `json:"checked_at,omitzero"`
}

// Router routes statements between the primary and the replicas.
type Router struct {
	dialect  string
	primary  *driver.Pool
	replicas []*Replica
	cfg      Config
	next     atomic.Uint64
}

// New returns a Router over the primary and replica pools. urls are the
// replicas' redacted URLs, for reporting. Replicas start out of rotation
// until their first check passes.
func New(d string, primary *driver.Pool, replicas []*driver.Pool, urls []string, cfg Config) *Router {
	if cfg.MaxLag <= 0 {
		cfg.MaxLag = 5 * time.Second
	}
	if cfg.CheckInterval <= 0 {
		cfg.CheckInterval = time.Second
	}
	if cfg.CheckTimeout <= 0 {
		cfg.CheckTimeout = 2 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	r := &Router{dialect: d, primary: primary, cfg: cfg}
	for i, p := range replicas {
		rep := &Replica{name: p.Role(), pool: p}
		if i < len(urls) {
			rep.url = urls[i]
		}
		rep.state = State{Name: rep.name, URL: rep.url, Reason: "not checked yet"}
		r.replicas = append(r.replicas, rep)
	}
	return r
}

// UsePrimary returns a context whose reads go to the primary
// (driver.UsePrimary).
func UsePrimary(ctx context.Context) context.Context { return driver.UsePrimary(ctx) }

// Session tracks a caller's last commit for read-your-writes. Create one
// per request with WithSession; it is safe for concurrent use.
type Session struct {
	mu       sync.Mutex
	lsn      uint64    // the primary's WAL position after the last commit
	unknown  bool      // committed, but the position is unknown: primary only
	commitAt time.Time // when the session last committed
}

type sessionKey struct{}

// WithSession returns a context carrying a new Session: reads in it see
// the transactions it committed.
func WithSession(ctx context.Context) context.Context {
	return context.WithValue(ctx, sessionKey{}, &Session{})
}

func sessionFrom(ctx context.Context) *Session {
	s, _ := ctx.Value(sessionKey{}).(*Session)
	return s
}

// Middleware returns the routing middleware. Place it inside the
// resilience middleware, so that a retry routes afresh.
func (r *Router) Middleware() driver.Middleware {
	return driver.Middleware{
		Name: "replica",
		Statement: func(next driver.StatementHandler) driver.StatementHandler {
			return func(ctx context.Context, st driver.Statement) error {
				if st.Tx != nil || st.Pool != nil {
					return next(ctx, st)
				}
				target, reason, need := r.routeNeed(ctx, st)
				if target == nil {
					r.observe("primary", reason)
					err := next(ctx, st)
					if err == nil && reason == "write" {
						// An autocommit write commits on its own.
						if s := sessionFrom(ctx); s != nil {
							r.recordCommit(ctx, s)
						}
					}
					return err
				}
				r.observe("replica", reason)
				st.Pool = target.pool
				err := next(ctx, st)
				if err == nil || resilience.Classify(err) != resilience.Connection || ctx.Err() != nil {
					return err
				}
				// The replica failed the read: take it out and try once more
				// elsewhere.
				r.markDown(target, "read failed: "+err.Error())
				if r.cfg.Observer != nil {
					r.cfg.Observer.Fallback("replica_error")
				}
				st.Pool = nil
				if other := r.pick(target, need); other != nil {
					st.Pool = other.pool
				}
				return next(ctx, st)
			}
		},
		End: func(next driver.EndHandler) driver.EndHandler {
			return func(ctx context.Context, tx *driver.Tx, commit bool) error {
				err := next(ctx, tx, commit)
				if !commit || !tx.Wrote() {
					return err
				}
				s := sessionFrom(ctx)
				switch {
				case s == nil:
				case err == nil:
					r.recordCommit(ctx, s)
				case resilience.ClassifyCommit(err) == resilience.Ambiguous:
					// The resilience layer, outside this one, may yet find it
					// committed: read from the primary from now on.
					s.mu.Lock()
					s.unknown, s.commitAt = true, time.Now()
					s.mu.Unlock()
				}
				return err
			}
		},
	}
}

func (r *Router) observe(target, reason string) {
	if r.cfg.Observer != nil {
		r.cfg.Observer.Routed(target, reason)
	}
}

// route picks the target of a statement outside a transaction: nil means
// the primary.
func (r *Router) route(ctx context.Context, st driver.Statement) (*Replica, string) {
	rep, reason, _ := r.routeNeed(ctx, st)
	return rep, reason
}

// routeNeed is route that also returns the WAL position a replica must
// have replayed for the read (read-your-writes).
func (r *Router) routeNeed(ctx context.Context, st driver.Statement) (*Replica, string, uint64) {
	if len(r.replicas) == 0 {
		return nil, "no_replicas", 0
	}
	if !st.ReadOnly() {
		return nil, "write", 0
	}
	if driver.PrimaryOnly(ctx) {
		return nil, "forced", 0
	}
	var need uint64
	if s := sessionFrom(ctx); s != nil {
		s.mu.Lock()
		active := !s.commitAt.IsZero() && (r.cfg.ReadYourWritesWindow <= 0 || time.Since(s.commitAt) < r.cfg.ReadYourWritesWindow)
		lsn, unknown := s.lsn, s.unknown
		s.mu.Unlock()
		if active {
			if unknown || r.dialect != dialect.Postgres {
				return nil, "read_your_writes", 0
			}
			need = lsn
		}
	}
	if rep := r.pick(nil, need); rep != nil {
		return rep, "read", need
	}
	if need > 0 {
		return nil, "read_your_writes", 0
	}
	return nil, "no_healthy_replica", 0
}

// pick returns the next healthy replica other than skip that has replayed
// at least lsn, round-robin; nil if none.
func (r *Router) pick(skip *Replica, lsn uint64) *Replica {
	n := len(r.replicas)
	start := int(r.next.Add(1))
	for i := 0; i < n; i++ {
		rep := r.replicas[(start+i)%n]
		if rep == skip || !rep.healthy.Load() {
			continue
		}
		if lsn > 0 {
			rep.mu.Lock()
			ok := rep.replayLSN >= lsn
			rep.mu.Unlock()
			if !ok {
				continue
			}
		}
		return rep
	}
	return nil
}

// recordCommit notes the primary's WAL position after a session's commit.
func (r *Router) recordCommit(ctx context.Context, s *Session) {
	var lsn uint64
	unknown := true
	if r.dialect == dialect.Postgres {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.CheckTimeout)
		var text string
		err := r.primary.DB().QueryRowContext(cctx, "SELECT pg_current_wal_lsn()::text").Scan(&text)
		cancel()
		if err == nil {
			if v, err := ParseLSN(text); err == nil {
				lsn, unknown = v, false
			}
		}
	}
	s.mu.Lock()
	if lsn > s.lsn {
		s.lsn = lsn
	}
	s.unknown = s.unknown || unknown
	s.commitAt = time.Now()
	s.mu.Unlock()
}

// ParseLSN parses a PostgreSQL LSN such as 0/16B3748.
func ParseLSN(s string) (uint64, error) {
	hi, lo, ok := strings.Cut(strings.TrimSpace(s), "/")
	if !ok {
		return 0, fmt.Errorf("replica: bad LSN %q", s)
	}
	h, err := strconv.ParseUint(hi, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("replica: bad LSN %q", s)
	}
	l, err := strconv.ParseUint(lo, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("replica: bad LSN %q", s)
	}
	return h<<32 | l, nil
}

// Run checks the replicas every CheckInterval until ctx ends. It checks
// once at once.
func (r *Router) Run(ctx context.Context) {
	if len(r.replicas) == 0 {
		return
	}
	t := time.NewTicker(r.cfg.CheckInterval)
	defer t.Stop()
	for {
		r.CheckNow(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// CheckNow checks every replica once, concurrently.
func (r *Router) CheckNow(ctx context.Context) {
	var wg sync.WaitGroup
	for _, rep := range r.replicas {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.check(ctx, rep)
		}()
	}
	wg.Wait()
}

func (r *Router) check(ctx context.Context, rep *Replica) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.CheckTimeout)
	defer cancel()
	st := State{Name: rep.name, URL: rep.url, CheckedAt: time.Now()}
	var lsn uint64
	var err error
	if r.dialect == dialect.Postgres {
		lsn, err = r.checkPostgres(ctx, rep.pool.DB(), &st)
	} else {
		err = r.checkMySQL(ctx, rep.pool.DB(), &st)
	}
	switch {
	case err != nil:
		st.Reason = "check failed: " + err.Error()
	case !st.InRecovery:
		st.Reason = "not a replica (not in recovery)"
	case st.Lag > r.cfg.MaxLag:
		st.Reason = fmt.Sprintf("lag %s over the limit %s", st.Lag.Round(time.Millisecond), r.cfg.MaxLag)
	default:
		st.Healthy = true
	}
	st.LagMS = float64(st.Lag) / float64(time.Millisecond)
	rep.mu.Lock()
	was := rep.state.Healthy
	prevReason := rep.state.Reason
	rep.state = st
	if lsn > 0 {
		rep.replayLSN = lsn
	}
	rep.mu.Unlock()
	rep.healthy.Store(st.Healthy)
	if r.cfg.Observer != nil {
		r.cfg.Observer.ReplicaState(rep.name, st.Healthy, st.Lag)
	}
	switch {
	case st.Healthy && !was:
		r.cfg.Logger.Info("bento: replica in rotation", "replica", rep.name, "url", rep.url, "lag", st.Lag.Round(time.Millisecond))
	case !st.Healthy && (was || prevReason == "not checked yet"):
		r.cfg.Logger.Warn("bento: replica out of rotation", "replica", rep.name, "url", rep.url, "reason", st.Reason)
	}
}

func (r *Router) checkPostgres(ctx context.Context, db *sql.DB, st *State) (uint64, error) {
	var (
		recovery           bool
		replay, receive    sql.NullString
		sinceReplaySeconds sql.NullFloat64
	)
	err := db.QueryRowContext(ctx, `SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, pg_last_wal_receive_lsn()::text,
		EXTRACT(EPOCH FROM (clock_timestamp() - pg_last_xact_replay_timestamp()))::float8`).Scan(&recovery, &replay, &receive, &sinceReplaySeconds)
	if err != nil {
		return 0, err
	}
	st.InRecovery = recovery
	st.ReplayLSN = replay.String
	var lsn uint64
	if replay.Valid {
		lsn, _ = ParseLSN(replay.String)
	}
	// Lag: nothing when it replayed all it received (an idle primary makes
	// the replay timestamp old without any lag); else the age of the last
	// replayed transaction. After a restart the receive position is where
	// streaming started again, at or before the replay position, until new
	// WAL arrives: that is no lag either.
	if replay.Valid && receive.Valid && sinceReplaySeconds.Valid {
		if rcv, err := ParseLSN(receive.String); err == nil && rcv > lsn {
			st.Lag = time.Duration(sinceReplaySeconds.Float64 * float64(time.Second))
		}
	}
	return lsn, nil
}

func (r *Router) checkMySQL(ctx context.Context, db *sql.DB, st *State) error {
	// SHOW REPLICA STATUS: MariaDB 10.5+, MySQL 8.0.22+ (8.4 removed the
	// SLAVE form); SHOW SLAVE STATUS for older servers.
	rows, err := db.QueryContext(ctx, "SHOW REPLICA STATUS")
	if err != nil {
		rows, err = db.QueryContext(ctx, "SHOW SLAVE STATUS")
	}
	if err != nil {
		return err
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return err
	}
	if !rows.Next() {
		return rows.Err() // no status row: not a replica
	}
	vals := make([]sql.NullString, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	if err := rows.Scan(ptrs...); err != nil {
		return err
	}
	st.InRecovery = true
	for i, c := range cols {
		switch c {
		case "Slave_SQL_Running", "Slave_IO_Running", "Replica_SQL_Running", "Replica_IO_Running":
			if vals[i].String != "Yes" {
				return errors.New(c + " is " + vals[i].String)
			}
		case "Seconds_Behind_Master", "Seconds_Behind_Source":
			if !vals[i].Valid {
				return errors.New("Seconds_Behind_Master is NULL (replication stopped)")
			}
			n, err := strconv.ParseFloat(vals[i].String, 64)
			if err != nil {
				return err
			}
			st.Lag = time.Duration(n * float64(time.Second))
		}
	}
	return rows.Err()
}

// markDown takes a replica out until its next check.
func (r *Router) markDown(rep *Replica, reason string) {
	if rep.healthy.Swap(false) {
		rep.mu.Lock()
		rep.state.Healthy = false
		rep.state.Reason = reason
		rep.mu.Unlock()
		r.cfg.Logger.Warn("bento: replica out of rotation", "replica", rep.name, "url", rep.url, "reason", reason)
		if r.cfg.Observer != nil {
			r.cfg.Observer.ReplicaState(rep.name, false, 0)
		}
	}
}

// States returns every replica's last known state.
func (r *Router) States() []State {
	out := make([]State, len(r.replicas))
	for i, rep := range r.replicas {
		rep.mu.Lock()
		out[i] = rep.state
		rep.mu.Unlock()
	}
	return out
}

// Pools returns the replicas' pools.
func (r *Router) Pools() []*driver.Pool {
	out := make([]*driver.Pool, len(r.replicas))
	for i, rep := range r.replicas {
		out[i] = rep.pool
	}
	return out
}
