package outbox

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"entgo.io/ent/dialect"
	"github.com/google/uuid"

	"github.com/bento-go/bento/dialects"
	"github.com/bento-go/bento/driver"
	"github.com/bento-go/bento/resilience"
)

// RelayConfig configures a Relay. Zero fields take the defaults shown.
type RelayConfig struct {
	// Names of the framework's tables (NamesFor("")).
	Names Names
	// BatchSize is the most rows claimed and published at once (100).
	BatchSize int
	// PollInterval is the longest the relay sleeps without a wake-up (1 s).
	PollInterval time.Duration
	// MaxAttempts bounds the publish attempts of a row; after the last
	// failure it is dead-lettered (10).
	MaxAttempts int
	// Backoff is the delay after a row's first failed publish; it doubles
	// per failure (with ±20% jitter) up to MaxBackoff (1 s, 5 min).
	Backoff    time.Duration
	MaxBackoff time.Duration
	// PublishTimeout bounds one batch's publish (10 s).
	PublishTimeout time.Duration
	// Retention keeps published rows this long, marked published, before
	// deleting them in bounded batches; 0 deletes a row as soon as the
	// broker acknowledged it.
	Retention time.Duration
	// IdempotencyRetention deletes idempotency keys (unitofwork) older than
	// this, in bounded batches; 0 keeps them for ever.
	IdempotencyRetention time.Duration
	// Wake, if set, wakes the relay at once (DB.Notifier().Subscribe()).
	Wake <-chan struct{}
	// Logger gets one line per dead letter and per failed batch.
	Logger *slog.Logger
	// Observer, if set, is told about every batch (metrics), and about
	// each batch's publish if it is also a PublishObserver.
	Observer RelayObserver
	// Lock is how a SQLite relay makes sure it is the only one on its
	// database (nil: NewRelay takes a lock file next to the database).
	Lock func() (release func(), err error)
	// Release, if set, is called by Close (bento's NewRelay uses it to end
	// the wake-up subscription).
	Release func()
	// SessionSettings says that every connection of the relay's driver
	// already carries PostgresSessionSettings (bento's NewRelay sets them
	// when the relay has a connection of its own): a batch then skips the
	// statement that sets them for its transaction, one round trip.
	SessionSettings bool
}

// PostgresSessionSettings are the settings of a PostgreSQL relay batch:
// the claim planned once per connection, as index scans in nested loops
// only (see batchLocked), and COMMIT not waiting for the WAL flush. A batch
// sets them for its transaction unless RelayConfig.SessionSettings says
// its connections have them already.
func PostgresSessionSettings() map[string]string {
	m := map[string]string{}
	for _, kv := range postgresSettings() {
		m[kv[0]] = kv[1]
	}
	return m
}

// postgresSettings are PostgresSessionSettings in a fixed order, for the
// statement that sets them.
func postgresSettings() [][2]string {
	return [][2]string{
		{"plan_cache_mode", "force_generic_plan"},
		{"enable_seqscan", "off"}, {"enable_bitmapscan", "off"}, {"enable_sort", "off"},
		{"enable_hashjoin", "off"}, {"enable_mergejoin", "off"},
		{"synchronous_commit", "off"},
	}
}

// RelayObserver is told what each batch did.
type RelayObserver interface {
	// Batch reports a batch: rows claimed, published, failed (to retry)
	// and dead-lettered, and how long it took.
	Batch(claimed, published, failed, dead int, took time.Duration)
	// Published reports one published message.
	Published(m Message, at time.Time)
}

// PublishObserver is an optional extension of RelayObserver: a relay
// whose Observer implements it also reports each batch's publish, n
// messages handed to the Publisher and how long the Publisher took to
// return (every acknowledgement or failure). Set apart from the batch's
// claim and mark, it shows the broker's share of the commit→published
// latency; a broker that stalls shows here first.
type PublishObserver interface {
	Publish(n int, took time.Duration)
}

// BatchResult is what one batch did.
type BatchResult struct {
	Claimed, Published, Failed, Dead int
	// Unavailable counts the failures the broker caused (ErrUnavailable),
	// included in Failed.
	Unavailable int
	// Skipped counts the events left pending, with no attempt counted,
	// because an earlier event of their aggregate in the batch failed.
	Skipped int

	dead []deadLetter // logged once the batch committed
	// held: nothing was claimable because other relays held every due
	// aggregate of the window; they release them when their batches
	// commit, a few milliseconds on.
	held bool
}

type deadLetter struct {
	m        Message
	attempts int
	err      string
}

// logDead logs the batch's dead letters; call it after the batch committed.
func (r *Relay) logDead(res BatchResult) {
	for _, d := range res.dead {
		r.cfg.Logger.Error("bento: event dead-lettered", "event_id", d.m.ID.String(), "aggregate_type", d.m.AggregateType,
			"aggregate_id", d.m.AggregateID, "type", d.m.Type, "attempts", d.attempts, "error", d.err)
	}
}

// Relay publishes the outbox: it claims pending rows in batches, publishes
// them, and marks them published only after the broker acknowledged them.
//
//   - On PostgreSQL and MySQL/MariaDB (10.6+) rows are claimed with SELECT
//     … FOR UPDATE SKIP LOCKED in a transaction held while they are
//     published, so any number of relays can run side by side without
//     publishing a row twice (a relay that crashes after publishing and
//     before COMMIT leaves its rows pending: they are published again, and
//     the broker drops the duplicate by event id). On SQLite one relay per
//     database runs, enforced by a lock file.
//   - Rows are claimed by status, never by an "id greater than the last"
//     cursor.
//   - A batch claims runs: an aggregate's first pending event and the
//     pending events that follow it, in sequence order, so a backlog on a
//     few hot aggregates drains as fast as one spread over many. A later
//     event is never published while an earlier one of its aggregate is
//     pending in another batch or waiting to be retried; when an event of
//     a run fails, the rest of its run stays pending and waits for it.
//     Other aggregates are not held up. See claim.go for the statement
//     and why its cost does not grow with the backlog.
//   - A failed publish is retried after a backoff (next_attempt_at); after
//     MaxAttempts it is dead-lettered with its last error, and the
//     aggregate's later events go on. Requeue puts dead letters back.
type Relay struct {
	drv     *driver.Driver
	dialect string
	pub     Publisher
	pubObs  PublishObserver // cfg.Observer, if it is one
	cfg     RelayConfig
	q       relayQueries
	cq      claimQueries
	release func()
	rng     *rand.Rand
	mu      sync.Mutex
	cursor  claimCursor // where the claim's window starts (guarded by mu)
}

// NewRelay returns a relay that reads the outbox through drv (a Bento
// driver) and publishes with pub. On SQLite it takes the single-relay lock
// and fails if another relay holds it; Close releases it.
func NewRelay(drv *driver.Driver, pub Publisher, cfg RelayConfig) (*Relay, error) {
	if cfg.Names.Outbox == "" {
		cfg.Names = NamesFor("")
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = 100
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = time.Second
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 10
	}
	if cfg.Backoff <= 0 {
		cfg.Backoff = time.Second
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 5 * time.Minute
	}
	if cfg.PublishTimeout <= 0 {
		cfg.PublishTimeout = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	r := &Relay{drv: drv, dialect: drv.Dialect(), pub: pub, cfg: cfg,
		q: newRelayQueries(drv.Dialect(), cfg.Names), cq: newClaimQueries(drv.Dialect(), cfg.Names), rng: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 0x62656e746f))}
	r.pubObs, _ = cfg.Observer.(PublishObserver)
	if r.dialect == dialect.SQLite {
		lock := cfg.Lock
		if lock == nil {
			return nil, errors.New("outbox: a SQLite relay needs RelayConfig.Lock (bento's NewRelay sets a lock file)")
		}
		release, err := lock()
		if err != nil {
			return nil, err
		}
		r.release = release
	}
	return r, nil
}

// Pool returns the pool the relay works on: its own (bento's NewRelay with
// OUTBOX_OWN_CONNECTION) or the one it shares with the application.
func (r *Relay) Pool() *driver.Pool { return r.drv.Primary() }

// Close releases the single-relay lock (SQLite) and calls
// RelayConfig.Release (bento's NewRelay closes the relay's own pool there).
// It does not stop Run: cancel Run's context first.
func (r *Relay) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.release != nil {
		r.release()
		r.release = nil
	}
	if r.cfg.Release != nil {
		r.cfg.Release()
		r.cfg.Release = nil
	}
	return nil
}

// Run publishes until ctx is cancelled, then returns after finishing the
// batch in progress (its rows are marked, or left pending if the publish
// was cut short). It wakes on RelayConfig.Wake, on extra (a LISTEN on
// PostgreSQL, say), and every PollInterval.
func (r *Relay) Run(ctx context.Context, extra ...<-chan struct{}) error {
	var listen <-chan struct{}
	if len(extra) > 0 {
		listen = extra[0]
	}
	timer := time.NewTimer(0)
	defer timer.Stop()
	lastCleanup := time.Time{}
	heldWait := heldRetry
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		case <-r.cfg.Wake:
		case <-listen:
		}
		// The batch below covers every commit so far: wake-ups from the
		// other source (in process and NOTIFY both fire for a commit of
		// this process) must not start another batch for the same rows.
		select {
		case <-r.cfg.Wake:
		default:
		}
		select {
		case <-listen:
		default:
		}
		// Drain: batch after batch while they publish; wait only once a
		// batch found nothing to claim (or the broker is down).
		held := false
		for {
			res, err := r.Batch(context.WithoutCancel(ctx))
			held = err == nil && res.held
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				r.cfg.Logger.Warn("bento: relay batch failed", "error", err.Error())
				break
			}
			if ctx.Err() != nil || !res.progressed() {
				break
			}
		}
		if (r.cfg.Retention > 0 || r.cfg.IdempotencyRetention > 0) && time.Since(lastCleanup) > max(r.cfg.PollInterval, time.Minute) {
			if _, err := r.Cleanup(ctx); err != nil && ctx.Err() == nil {
				r.cfg.Logger.Warn("bento: relay retention cleanup failed", "error", err.Error())
			}
			lastCleanup = time.Now()
		}
		if ctx.Err() != nil {
			return nil
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		// Other relays hold what is due: they let go when their batches
		// commit, so look again soon rather than after a poll (in a
		// burn-down nothing else wakes this relay, and two relays that
		// each found the other holding everything both slept a poll).
		// Each time again it doubles, up to maxHeldRetry: relays that
		// wait on one hot aggregate held by another would otherwise take
		// CPU from it with claims that find nothing (three relays on one
		// aggregate drained at about 0.92x one relay with a cap of 80 ms,
		// 0.98x with 1 s, in three paired runs). Waiting that long costs
		// little: a commit still wakes the relay at once, the holders
		// drain what they hold without pause, and a holder whose process
		// ends lets go of its locks, which the next claim finds.
		wait := r.cfg.PollInterval
		if held {
			wait = min(wait, heldWait)
			heldWait = min(2*heldWait, maxHeldRetry)
		} else {
			heldWait = heldRetry
		}
		timer.Reset(wait)
	}
}

// heldRetry is how soon a relay that found every due aggregate held by
// other relays claims again: about one batch of theirs. maxHeldRetry
// bounds its doubling while that goes on (and PollInterval, if shorter).
const (
	heldRetry    = 10 * time.Millisecond
	maxHeldRetry = time.Second
)

// progressed reports whether the batch changed the outbox so that the
// next one may find other work: it claimed something, and the broker was
// not down for all of it.
func (res BatchResult) progressed() bool {
	if res.Claimed == 0 || (res.Unavailable > 0 && res.Published == 0) {
		return false
	}
	return res.Published+res.Failed+res.Dead > 0
}

// RunOnce publishes batches until nothing is claimable now (pending rows
// waiting for a retry later stay pending, and while the broker is down it
// stops at the first batch) and returns the totals.
func (r *Relay) RunOnce(ctx context.Context) (BatchResult, error) {
	var total BatchResult
	for {
		res, err := r.Batch(ctx)
		total.Claimed += res.Claimed
		total.Published += res.Published
		total.Failed += res.Failed
		total.Dead += res.Dead
		total.Unavailable += res.Unavailable
		total.Skipped += res.Skipped
		if err != nil || ctx.Err() != nil || !res.progressed() {
			return total, err
		}
	}
}

// Batch claims, publishes and marks one batch.
func (r *Relay) Batch(ctx context.Context) (BatchResult, error) {
	start := time.Now()
	var res BatchResult
	var err error
	if r.dialect == dialect.SQLite {
		res, err = r.batchSingle(ctx)
	} else {
		res, err = r.batchLocked(ctx)
	}
	if r.cfg.Observer != nil && (res.Claimed > 0 || err != nil) {
		r.cfg.Observer.Batch(res.Claimed, res.Published, res.Failed, res.Dead, time.Since(start))
	}
	return res, err
}

// batchLocked claims with FOR UPDATE SKIP LOCKED and holds the lock while
// publishing.
func (r *Relay) batchLocked(ctx context.Context) (res BatchResult, err error) {
	// A lost COMMIT of a batch needs no resolution: rows it did not mark
	// stay pending and are published again, which the broker dedupes.
	ctx = resilience.WithoutCommitResolution(ctx)
	tx, err := r.drv.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelReadCommitted})
	if err != nil {
		return res, fmt.Errorf("outbox: relay: begin: %w", err)
	}
	dtx := tx.(*driver.Tx)
	defer func() {
		if err != nil {
			_ = dtx.Rollback()
		}
	}()
	if r.dialect == dialect.Postgres {
		// The claim must walk the claim index in next_attempt_at order and
		// stop after BatchSize heads, checking each against the aggregate
		// index. A plan made from the table's statistics can do otherwise:
		// one made while the table was small (no statistics yet: a new
		// table, or one growing faster than autovacuum analyzes it) and
		// cached scanned every pending row for each pending row (seconds
		// per batch at 15,000 pending, so the backlog only grew), and a
		// fresh one anti-joined and sorted every pending row (~400 ms at
		// 20,000). So the batch allows only index scans, nested loops and
		// no sort: the one good plan is then the only plan whatever the
		// statistics say, and it is made once per connection (a generic
		// plan) instead of for every batch, which cost as much server time
		// as running the claim (0.25 ms of ~0.5 at 1,000 events/s).
		//
		// The batch's COMMIT does not wait for its WAL to reach the disk
		// (synchronous_commit off, for this transaction only): a mark lost
		// in a server crash leaves its rows pending, and they are published
		// again, which the broker dedupes by event id — the at-least-once
		// contract. Waiting for the flush would only lengthen every relay
		// cycle, and with it the commit→published latency.
		if !r.cfg.SessionSettings {
			if _, err := dtx.ExecContext(ctx, r.q.settings); err != nil {
				return res, fmt.Errorf("outbox: relay: %w", err)
			}
		}
	}
	msgs, attempts, held, err := r.claim(ctx, dtx)
	res.held = held
	if err != nil || len(msgs) == 0 {
		if err == nil {
			err = dtx.Rollback()
		}
		return res, err
	}
	res.Claimed = len(msgs)
	results := r.publish(ctx, msgs)
	if err := r.mark(ctx, dtx, msgs, attempts, results, &res); err != nil {
		return res, err
	}
	if err := dtx.Commit(); err != nil {
		return BatchResult{Claimed: res.Claimed}, fmt.Errorf("outbox: relay: commit: %w", err)
	}
	r.observePublished(msgs, results)
	r.logDead(res)
	return res, nil
}

// batchSingle is SQLite's batch: the only relay reads, publishes, then
// marks in a short write transaction, never holding the write lock while
// publishing.
func (r *Relay) batchSingle(ctx context.Context) (res BatchResult, err error) {
	msgs, attempts, held, err := r.claim(ctx, nil)
	res.held = held
	if err != nil || len(msgs) == 0 {
		return res, err
	}
	res.Claimed = len(msgs)
	results := r.publish(ctx, msgs)
	tx, err := r.drv.BeginTx(resilience.WithoutCommitResolution(ctx), nil)
	if err != nil {
		return BatchResult{Claimed: res.Claimed}, fmt.Errorf("outbox: relay: begin: %w", err)
	}
	dtx := tx.(*driver.Tx)
	if err := r.mark(ctx, dtx, msgs, attempts, results, &res); err != nil {
		_ = dtx.Rollback()
		return res, err
	}
	if err := dtx.Commit(); err != nil {
		return BatchResult{Claimed: res.Claimed}, fmt.Errorf("outbox: relay: commit: %w", err)
	}
	r.observePublished(msgs, results)
	r.logDead(res)
	return res, nil
}

func (r *Relay) observePublished(msgs []Message, results []error) {
	if r.cfg.Observer == nil {
		return
	}
	now := time.Now()
	for i, m := range msgs {
		if results[i] == nil {
			r.cfg.Observer.Published(m, now)
		}
	}
}

// publish runs the publisher with a timeout; a publisher that returns the
// wrong number of results fails them all.
func (r *Relay) publish(ctx context.Context, msgs []Message) []error {
	pctx, cancel := context.WithTimeout(ctx, r.cfg.PublishTimeout)
	defer cancel()
	start := time.Now()
	results := r.pub.Publish(pctx, msgs)
	if r.pubObs != nil {
		r.pubObs.Publish(len(msgs), time.Since(start))
	}
	if len(results) != len(msgs) {
		return errorsFor(len(msgs), fmt.Errorf("outbox: publisher returned %d results for %d messages", len(results), len(msgs)))
	}
	return results
}

// mark records each message's fate in tx. Messages come in runs, each
// aggregate's in sequence order: the first failure in a run is recorded
// (attempts, backoff, or dead letter), and the run's later messages are
// left pending as they were, whatever their own result (results[i] is set
// to ErrSkipped for them, so nothing reports them published).
func (r *Relay) mark(ctx context.Context, tx *driver.Tx, msgs []Message, attempts []int, results []error, res *BatchResult) error {
	now := time.Now().UTC()
	var (
		done  []string
		guard RunGuard
	)
	for i, m := range msgs {
		if guard.Blocked(m) {
			results[i] = ErrSkipped
			res.Skipped++
			continue
		}
		if results[i] == nil {
			done = append(done, m.ID.String())
			continue
		}
		guard.Fail(m)
		if errors.Is(results[i], ErrSkipped) {
			res.Skipped++
			continue
		}
		n := attempts[i] + 1
		status := StatusPending
		var permanent *PermanentError
		var next int64
		switch {
		case errors.Is(results[i], ErrUnavailable):
			// The broker, not the event: try again soon, attempts kept.
			n--
			res.Failed++
			res.Unavailable++
			next = now.Add(r.backoff(1)).UnixMicro()
		case n >= r.cfg.MaxAttempts || errors.As(results[i], &permanent):
			status = StatusDead
			res.Dead++
			res.dead = append(res.dead, deadLetter{m: m, attempts: n, err: storableError(results[i].Error())})
			next = now.Add(r.backoff(n)).UnixMicro()
		default:
			res.Failed++
			next = now.Add(r.backoff(n)).UnixMicro()
		}
		if err := r.recordFailure(ctx, tx, m, n, next, storableError(results[i].Error()), status); err != nil {
			return err
		}
	}
	res.Published = len(done)
	hot := relayedRuns(msgs, results)
	for len(done) > 0 {
		chunk := done
		if len(chunk) > 1000 {
			chunk = chunk[:1000]
		}
		done = done[len(chunk):]
		var query string
		args := make([]any, 0, len(chunk)+1)
		if r.cfg.Retention > 0 {
			query = r.q.markPublished(len(chunk))
			args = append(args, now)
		} else {
			query = r.q.deletePublished(len(chunk))
		}
		if r.dialect == dialect.Postgres {
			args = append(args, chunk)
		} else {
			for _, id := range chunk {
				args = append(args, id)
			}
		}
		if len(done) == 0 {
			// The batch's last statement goes with its COMMIT (one round
			// trip on PostgreSQL); its error is the commit's. On
			// PostgreSQL it also records how far the batch published its
			// runs (<outbox>_relayed, for the head probes: claim.go).
			if len(hot.types) > 0 {
				switch r.dialect {
				case dialect.Postgres:
					query = r.q.withRelayed(query, len(args))
					args = append(args, hot.types, hot.ids, hot.seqs)
				case dialect.MySQL:
					if err := r.recordRelayed(ctx, tx, hot); err != nil {
						return err
					}
				}
			}
			if err := tx.DeferExec(query, args...); err != nil {
				return fmt.Errorf("outbox: relay: marking %d rows published: %w", len(chunk), err)
			}
			continue
		}
		if _, err := tx.ExecContext(ctx, query, args...); err != nil {
			return fmt.Errorf("outbox: relay: marking %d rows published: %w", len(chunk), err)
		}
	}
	return nil
}

// recordRelayed writes hot into <outbox>_relayed on MySQL, where the
// mark has no statement to ride with.
func (r *Relay) recordRelayed(ctx context.Context, tx *driver.Tx, hot relayedAggregates) error {
	var b strings.Builder
	b.WriteString("INSERT INTO " + r.q.relayed + " (aggregatetype, aggregateid, `sequence`) VALUES ")
	args := make([]any, 0, 3*len(hot.types))
	for i := range hot.types {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("(?, ?, ?)")
		args = append(args, hot.types[i], hot.ids[i], hot.seqs[i])
	}
	b.WriteString(" ON DUPLICATE KEY UPDATE `sequence` = GREATEST(`sequence`, VALUES(`sequence`))")
	if _, err := tx.ExecContext(ctx, b.String(), args...); err != nil {
		return fmt.Errorf("outbox: relay: recording how far runs were published: %w", err)
	}
	return nil
}

// relayedAggregates are the aggregates a batch published two events or more of,
// with the last sequence it published of each, as the arrays of
// relayQueries.withRelayed.
type relayedAggregates struct {
	types, ids []string
	seqs       []int64
}

// relayedRuns finds them in the batch's runs (each aggregate's messages
// are contiguous, in sequence order; results[i] is nil for a published
// one).
func relayedRuns(msgs []Message, results []error) relayedAggregates {
	var out relayedAggregates
	for i := 0; i < len(msgs); {
		j, n, last := i, 0, int64(0)
		for ; j < len(msgs) && msgs[j].AggregateType == msgs[i].AggregateType && msgs[j].AggregateID == msgs[i].AggregateID; j++ {
			if results[j] == nil {
				n, last = n+1, msgs[j].Sequence
			}
		}
		if n >= 2 {
			out.types = append(out.types, msgs[i].AggregateType)
			out.ids = append(out.ids, msgs[i].AggregateID)
			out.seqs = append(out.seqs, last)
		}
		i = j
	}
	return out
}

// maxErrorRunes bounds the stored text of a failed publish (the column
// holds 2,048 characters).
const maxErrorRunes = 2000

// storableError makes a publish error's text storable on every dialect:
// valid UTF-8 (PostgreSQL rejects anything else, 22021), no NUL (which no
// PostgreSQL text can hold), at most maxErrorRunes characters, never cut
// inside a character.
func storableError(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.ReplaceAll(s, "\x00", `\x00`)
	if utf8.RuneCountInString(s) <= maxErrorRunes {
		return s
	}
	rs := []rune(s)
	return string(rs[:maxErrorRunes-1]) + "…"
}

// asciiError is s with every character outside printable ASCII escaped,
// for a column whose character set refuses some of them (a MySQL table in
// utf8mb3 or latin1, say).
func asciiError(s string) string {
	q := strconv.QuoteToASCII(s)
	q = q[1 : len(q)-1]
	if len(q) > maxErrorRunes {
		q = q[:maxErrorRunes]
	}
	return q
}

// recordFailure writes a failed publish: attempts, next attempt, status and
// the error's text. Text that is not plain ASCII is written under a
// savepoint: if the database refuses it (a character set that cannot hold
// it), the row gets the text escaped to ASCII instead, and the batch's
// other rows are marked as they should be. A failure that survives that is
// the connection's or the database's, and fails the batch.
func (r *Relay) recordFailure(ctx context.Context, tx *driver.Tx, m Message, n int, next int64, text, status string) error {
	exec := func(text string) error {
		_, err := tx.ExecContext(ctx, r.q.fail, n, next, text, status, m.ID.String())
		return err
	}
	if isPlainASCII(text) {
		if err := exec(text); err != nil {
			return fmt.Errorf("outbox: relay: recording a failed publish of %s: %w", m.ID, err)
		}
		return nil
	}
	if _, err := tx.ExecContext(ctx, "SAVEPOINT bento_mark"); err != nil {
		return fmt.Errorf("outbox: relay: recording a failed publish of %s: %w", m.ID, err)
	}
	err := exec(text)
	if err != nil {
		if _, rerr := tx.ExecContext(ctx, "ROLLBACK TO SAVEPOINT bento_mark"); rerr != nil {
			return fmt.Errorf("outbox: relay: recording a failed publish of %s: %w", m.ID, errors.Join(err, rerr))
		}
		r.cfg.Logger.Warn("bento: relay stored an event's error text escaped to ASCII", "event_id", m.ID.String(), "error", err.Error())
		if err = exec(asciiError(text)); err != nil {
			return fmt.Errorf("outbox: relay: recording a failed publish of %s: %w", m.ID, err)
		}
	}
	if _, err := tx.ExecContext(ctx, "RELEASE SAVEPOINT bento_mark"); err != nil {
		return fmt.Errorf("outbox: relay: recording a failed publish of %s: %w", m.ID, err)
	}
	return nil
}

// isPlainASCII reports whether s has only printable ASCII, tabs and
// newlines: text every character set stores.
func isPlainASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < 0x20 && c != '\t' && c != '\n') || c > 0x7e {
			return false
		}
	}
	return true
}

// backoff is the delay after the n-th failed attempt.
func (r *Relay) backoff(n int) time.Duration {
	d := r.cfg.Backoff
	for i := 1; i < n && d < r.cfg.MaxBackoff; i++ {
		d *= 2
	}
	if d > r.cfg.MaxBackoff {
		d = r.cfg.MaxBackoff
	}
	r.mu.Lock()
	j := 0.8 + 0.4*r.rng.Float64()
	r.mu.Unlock()
	return time.Duration(float64(d) * j)
}

// Cleanup deletes published rows older than the retention, at most 1000
// per statement, until none is left; it returns how many it deleted.
func (r *Relay) Cleanup(ctx context.Context) (int64, error) {
	var total int64
	if r.cfg.Retention > 0 {
		n, err := r.deleteBatches(ctx, r.q.cleanup, r.cfg.Retention)
		total += n
		if err != nil {
			return total, fmt.Errorf("outbox: relay: retention: %w", err)
		}
	}
	if r.cfg.IdempotencyRetention > 0 {
		n, err := r.deleteBatches(ctx, r.q.cleanupKeys, r.cfg.IdempotencyRetention)
		total += n
		if err != nil {
			return total, fmt.Errorf("outbox: relay: idempotency key retention: %w", err)
		}
	}
	return total, nil
}

// deleteBatches runs a DELETE of at most 1000 rows older than age until it
// deletes fewer.
func (r *Relay) deleteBatches(ctx context.Context, query string, age time.Duration) (int64, error) {
	var total int64
	for {
		res, err := r.drv.ExecContext(ctx, query, time.Now().Add(-age).UTC())
		if err != nil {
			return total, err
		}
		n, _ := res.RowsAffected()
		total += n
		if n < 1000 || ctx.Err() != nil {
			return total, nil
		}
	}
}

// Stats describe the outbox's backlog.
type Stats struct {
	Pending   int64         `json:"pending"`
	Dead      int64         `json:"dead"`
	Published int64         `json:"published"` // kept by the retention
	OldestAge time.Duration `json:"oldest_pending_age_ns"`
	Oldest    time.Time     `json:"oldest_pending_at,omitzero"`
}

// ReadStats counts the outbox rows by status and finds the oldest pending.
func ReadStats(ctx context.Context, drv *driver.Driver, names Names) (Stats, error) {
	q := newRelayQueries(drv.Dialect(), names)
	var st Stats
	// On the primary: a replica's counts can be behind.
	rows, err := drv.QueryContext(driver.UsePrimary(ctx), q.stats)
	if err != nil {
		return st, fmt.Errorf("outbox: stats: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var status string
		var n int64
		var oldest sql.NullTime
		if err := rows.Scan(&status, &n, &oldest); err != nil {
			return st, fmt.Errorf("outbox: stats: %w", err)
		}
		switch status {
		case StatusPending:
			st.Pending = n
			if oldest.Valid {
				st.Oldest = oldest.Time
				st.OldestAge = time.Since(oldest.Time)
			}
		case StatusDead:
			st.Dead = n
		case StatusPublished:
			st.Published = n
		}
	}
	return st, rows.Err()
}

// Requeue makes dead letters pending again with fresh attempts: the given
// ids, or every dead letter when ids is empty. It returns how many rows it
// requeued.
func Requeue(ctx context.Context, drv *driver.Driver, names Names, ids ...uuid.UUID) (int64, error) {
	q := newRelayQueries(drv.Dialect(), names)
	args := []any{time.Now().UnixMicro()}
	query := q.requeueAll
	if len(ids) > 0 {
		query = q.requeueIDs(len(ids))
		if drv.Dialect() == dialect.Postgres {
			s := make([]string, len(ids))
			for i, id := range ids {
				s[i] = id.String()
			}
			args = append(args, s)
		} else {
			for _, id := range ids {
				args = append(args, id.String())
			}
		}
	}
	res, err := drv.ExecContext(ctx, query, args...)
	if err != nil {
		return 0, fmt.Errorf("outbox: requeue: %w", err)
	}
	return res.RowsAffected()
}

// relayQueries are the relay's statements for one dialect.
type relayQueries struct {
	dialect, table    string
	relayed           string // the quoted <outbox>_relayed
	settings          string // PostgreSQL: PostgresSessionSettings for the transaction
	fail, cleanup     string
	cleanupKeys       string
	stats, requeueAll string
}

func newRelayQueries(d string, n Names) relayQueries {
	q := relayQueries{dialect: d}
	quote := func(s string) string { return dialects.QuoteIdent(d, s) }
	t := quote(n.Outbox)
	q.table = t
	q.relayed = quote(n.Relayed)
	p := func(i int) string { return dialects.Placeholder(d, i) }
	if d == dialect.Postgres {
		var sets []string
		for _, kv := range postgresSettings() {
			sets = append(sets, "set_config('"+kv[0]+"', '"+kv[1]+"', true)")
		}
		q.settings = "SELECT " + strings.Join(sets, ", ")
	}
	q.fail = "UPDATE " + t + " SET attempts = " + p(1) + ", next_attempt_at = " + p(2) + ", last_error = " + p(3) +
		", status = " + p(4) + " WHERE id = " + p(5)
	sub := "SELECT id FROM " + t + " WHERE status = '" + StatusPublished + "' AND published_at < " + p(1) + " LIMIT 1000"
	switch d {
	case dialect.MySQL:
		q.cleanup = "DELETE FROM " + t + " WHERE status = '" + StatusPublished + "' AND published_at < ? LIMIT 1000"
	default:
		q.cleanup = "DELETE FROM " + t + " WHERE id IN (" + sub + ")"
	}
	keys := quote(n.Idempotency)
	switch d {
	case dialect.MySQL:
		q.cleanupKeys = "DELETE FROM " + keys + " WHERE created_at < ? LIMIT 1000"
	default:
		q.cleanupKeys = "DELETE FROM " + keys + " WHERE idempotency_key IN (SELECT idempotency_key FROM " + keys +
			" WHERE created_at < " + p(1) + " LIMIT 1000)"
	}
	q.stats = "SELECT status, COUNT(*), MIN(occurred_at) FROM " + t + " GROUP BY status"
	q.requeueAll = "UPDATE " + t + " SET status = '" + StatusPending + "', attempts = 0, last_error = NULL, next_attempt_at = " + p(1) +
		" WHERE status = '" + StatusDead + "'"
	return q
}

// idList renders the id list of a statement: = ANY($n::uuid[]) on
// PostgreSQL, IN (?, ?, …) elsewhere.
func (q relayQueries) idList(first, n int) string {
	if q.dialect == dialect.Postgres {
		return fmt.Sprintf("id = ANY($%d::uuid[])", first)
	}
	return "id IN (" + strings.TrimSuffix(strings.Repeat("?, ", n), ", ") + ")"
}

func (q relayQueries) markPublished(n int) string {
	p1 := "?"
	if q.dialect == dialect.Postgres {
		p1 = "$1"
	}
	return "UPDATE " + q.table + " SET status = '" + StatusPublished + "', published_at = " + p1 + " WHERE " + q.idList(2, n)
}

// withRelayed wraps a PostgreSQL mark statement with nargs arguments into
// one that also records, in <outbox>_relayed, the last sequence published
// of each aggregate given by the three arrays that follow its arguments.
func (q relayQueries) withRelayed(mark string, nargs int) string {
	p := func(i int) string { return "$" + strconv.Itoa(nargs+i) }
	return "WITH marked AS (" + mark + ") INSERT INTO " + q.relayed + " AS x (aggregatetype, aggregateid, " + `"sequence"` +
		") SELECT * FROM unnest(" + p(1) + "::text[], " + p(2) + "::text[], " + p(3) + "::bigint[])" +
		" ON CONFLICT (aggregatetype, aggregateid) DO UPDATE SET " + `"sequence"` + " = greatest(x." + `"sequence"` + ", excluded." + `"sequence"` + ")"
}

func (q relayQueries) deletePublished(n int) string {
	return "DELETE FROM " + q.table + " WHERE " + q.idList(1, n)
}

func (q relayQueries) requeueIDs(n int) string {
	return q.requeueAll + " AND " + q.idList(2, n)
}
