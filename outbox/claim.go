package outbox

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"entgo.io/ent/dialect"
	entsql "entgo.io/ent/dialect/sql"
	"github.com/google/uuid"

	"github.com/bento-go/bento/dialects"
	"github.com/bento-go/bento/driver"
)

// The claim.
//
// A batch takes runs: for each aggregate it takes, the aggregate's first
// pending event (its head) and the pending events that follow it without a
// gap, up to the batch size. Which aggregates it looks at comes from a
// window: the oldest pending rows that are due, at most window of them
// (twice the batch size), in the order of the due index (status,
// next_attempt_at, id). The window gives aggregates, not events: for each
// of its aggregates the head is found through the pending index
// (aggregatetype, aggregateid, status, sequence), wherever it is in the
// backlog, and the run is read from the same index. Every step is an index
// range of bounded length, so the claim costs the same at 10,000 or
// 1,000,000 pending rows.
//
// Rows are locked with FOR UPDATE SKIP LOCKED (PostgreSQL, MySQL/MariaDB).
// Holding an aggregate's head is what gives a relay the aggregate: while
// the head stays pending, no other row of its aggregate is anyone's head.
// So a run is kept only if it starts at the head the statement found and
// has no gap (claim checks both): a relay that could not lock the head, or
// locked only the later part of a run another relay holds, publishes none
// of it. Rows it locked and does not publish stay pending, untouched.
//
// A window can hold no claimable aggregate at all: every one of its
// aggregates is held by another relay, or waits for a retry of its head,
// while their later events fill the window. The relay then moves its
// cursor past the window (keyset on the due index) and looks again, and
// goes back to the oldest rows once it reaches the end: a poison event with
// a long backlog behind it never hides the aggregates after it.

// maxWindowFactor bounds the window, in batches, as it doubles while the
// relay looks past windows with nothing claimable.
const maxWindowFactor = 64

// windowFactor is the window's size in batches: a batch of uniform events
// finds enough aggregates in it even when another relay holds the first
// batch's worth.
const windowFactor = 2

// claimCursor is where a relay's window starts: the oldest due rows when
// unset, or the rows due after at. The cursor sweeps: a claim whose window
// was full moves it to the window's end, so a batch does not walk again
// the front of the due index that the batches before it emptied (on PostgreSQL the
// entries of deleted rows stay in the index until VACUUM, and with a
// replica's hot_standby_feedback or a long transaction they cost a heap
// visit each). Rows due before the cursor (committed late, or left by a
// window that filled its batch) are taken once the sweep reaches the end
// and starts again from the front, in the same claim.
type claimCursor struct {
	set bool
	at  int64
}

// claimQueries are the statements of the claim for one dialect.
type claimQueries struct {
	// runs claims the runs of the window's aggregates, from the front or
	// after a cursor; window reads the window's end and size, to move the
	// cursor past a window with nothing claimable.
	runs, runsAfter     statement
	window, windowAfter statement
	// MySQL's statements that find the heads the window does not give,
	// lock the heads, then the runs, of the aggregates the first one
	// found (lockRuns); the aggregates' terms complete them.
	probeHead, lockHeads, lockRuns string
}

func newClaimQueries(d string, n Names) claimQueries {
	quote := func(s string) string { return dialects.QuoteIdent(d, s) }
	t := quote(n.Outbox)
	seq, typ := quote("sequence"), quote("type")
	pending := "'" + StatusPending + "'"
	idText, payloadText, headersText := "r.id", "r.payload", "r.headers"
	if d == dialect.Postgres {
		idText, payloadText, headersText = "r.id::text", "r.payload::text", "r.headers::text"
	}
	// Parameters are named here and numbered per dialect by compile.
	due := "w.status = " + pending + " AND w.next_attempt_at <= :now"
	window := func(after bool) string {
		cond := ""
		if after {
			cond = " AND w.next_attempt_at > :at"
		}
		return "SELECT w.aggregatetype, w.aggregateid, w.next_attempt_at, w." + seq + " FROM " + t + " w WHERE " + due + cond +
			" ORDER BY w.next_attempt_at, w.id LIMIT :window"
	}
	// "ORDER BY status, sequence" with status fixed is the order of the
	// pending index.
	bySeq := " ORDER BY %[1]s.status, %[1]s." + seq
	// On PostgreSQL the head probe starts after the last sequence a relay
	// published of the aggregate (<outbox>_relayed, kept for aggregates
	// published in runs), so it does not walk the index entries of the
	// aggregate's deleted rows, which stay until VACUUM (and, with a
	// replica's hot_standby_feedback or a long transaction, cost a heap
	// visit each: one probe after 50,000 deletes on one aggregate took
	// 146 ms). Never after the aggregate's first row in the window (wmin),
	// which is pending: a requeued dead letter shows there, and the mark
	// gives way.
	probeFrom := func(g string) string {
		if d == dialect.SQLite { // deletes leave nothing behind
			return ""
		}
		return " AND e." + seq + " > least(" + g + ".wmin - 1, coalesce((SELECT x." + seq + " FROM " + quote(n.Relayed) +
			" x WHERE x.aggregatetype = " + g + ".aggregatetype AND x.aggregateid = " + g + ".aggregateid), 0))"
	}
	head := func(col string) string {
		return "(SELECT e." + col + " FROM " + t + " e WHERE e.aggregatetype = a.aggregatetype AND e.aggregateid = a.aggregateid" +
			" AND e.status = " + pending + probeFrom("a") + fmt.Sprintf(bySeq, "e") + " LIMIT 1)"
	}
	// The window's last due time and size, on every row: a full window
	// moves the cursor to its end (a burn-down sweeps), one that is not
	// lets the next claim start from the front again, so that under a
	// steady flow an event committed late is not left behind the cursor.
	integer := "bigint"
	switch d {
	case dialect.MySQL:
		integer = "signed"
	case dialect.SQLite:
		integer = "integer"
	}
	windowEnd := "max(max(a.next_attempt_at)) OVER () AS wend, CAST(sum(count(*)) OVER () AS " + integer + ") AS wcount"
	columns := "SELECT " + idText + ", r.aggregatetype, r.aggregateid, r." + typ + ", " + payloadText + ", r." + seq + ", " + headersText +
		", r.occurred_at, r.attempts"
	runs := func(after bool) string {
		if d == dialect.Postgres {
			// Laterals: each aggregate's head is one probe of the index,
			// and its run one range of it, parameterised by the aggregate,
			// so no plan can read an index whole.
			return columns + ", hd.head, g.wend, g.wcount FROM (SELECT a.aggregatetype, a.aggregateid, " + windowEnd + ", min(a." + seq + ") AS wmin FROM (" +
				window(after) + ") a GROUP BY a.aggregatetype, a.aggregateid) g" +
				" CROSS JOIN LATERAL (SELECT e." + seq + " AS head, e.next_attempt_at AS due FROM " + t + " e" +
				" WHERE e.aggregatetype = g.aggregatetype AND e.aggregateid = g.aggregateid AND e.status = " + pending +
				probeFrom("g") +
				fmt.Sprintf(bySeq, "e") + " LIMIT 1) hd" +
				" CROSS JOIN LATERAL (SELECT * FROM " + t + " x WHERE x.aggregatetype = g.aggregatetype AND x.aggregateid = g.aggregateid" +
				" AND x.status = " + pending + " AND x." + seq + " >= hd.head AND x." + seq + " < hd.head + :run AND x.next_attempt_at <= :now" +
				fmt.Sprintf(bySeq, "x") + " LIMIT :run) r" +
				" WHERE hd.due <= :now LIMIT :batch FOR UPDATE OF r SKIP LOCKED"
		}
		if d == dialect.MySQL {
			// MariaDB reads every table of a locking statement with locks,
			// its derived tables and subqueries too: a window read inside
			// FOR UPDATE waited for (or, with SKIP LOCKED, dropped) the
			// rows other relays hold. So the window is read first without
			// locks, with each aggregate's first sequence in it and how
			// far runs of it were published; the heads are found from
			// those (lockRuns), then locked, then the runs.
			return "SELECT h.aggregatetype, h.aggregateid, h.wmin, coalesce(x." + seq + ", 0), h.wend, h.wcount, h.n FROM (" +
				"SELECT a.aggregatetype, a.aggregateid, " + windowEnd + ", count(*) AS n, min(a.next_attempt_at) AS first, min(a." + seq +
				") AS wmin FROM (" + window(after) + ") a GROUP BY a.aggregatetype, a.aggregateid) h LEFT JOIN " + quote(n.Relayed) +
				" x ON x.aggregatetype = h.aggregatetype AND x.aggregateid = h.aggregateid ORDER BY h.first"
		}
		// SQLite: one relay, no locks, so one probe per aggregate: a head
		// that is not due drops out of the run (r.next_attempt_at), and
		// claim keeps only runs that start at the head.
		return columns + ", h.head, h.wend, h.wcount FROM (" +
			"SELECT a.aggregatetype, a.aggregateid, " + windowEnd + ", " + head(seq) + " AS head" +
			" FROM (" + window(after) + ") a GROUP BY a.aggregatetype, a.aggregateid) h" +
			" JOIN " + t + " r ON r.aggregatetype = h.aggregatetype AND r.aggregateid = h.aggregateid AND r.status = " + pending +
			" AND r." + seq + " >= h.head AND r." + seq + " < h.head + :run AND r.next_attempt_at <= :now LIMIT :batch"
	}
	// The window's first and last due times and size, and how many of its
	// aggregates have a due head: those are held by other relays, which
	// make progress.
	size := func(after bool) string {
		return "SELECT min(a.wstart), max(a.wend), CAST(sum(a.n) AS " + integer + "), CAST(sum(CASE WHEN " + head("next_attempt_at") +
			" <= :now THEN 1 ELSE 0 END) AS " + integer + ") FROM (SELECT a.aggregatetype, a.aggregateid, min(a.next_attempt_at) AS wstart," +
			" max(a.next_attempt_at) AS wend, count(*) AS n, min(a." + seq + ") AS wmin FROM (" + window(after) +
			") a GROUP BY a.aggregatetype, a.aggregateid) a"
	}
	// FORCE INDEX: without it MariaDB reads the IN list's rows through the
	// due index (status alone), every pending row, locking as it goes.
	lockRuns := columns + " FROM " + t + " r FORCE INDEX (" + quote(n.Outbox+"_pending") + ") WHERE r.status = " + pending +
		" AND r.next_attempt_at <= ? AND ("
	// One probe of the pending index per aggregate whose head may come
	// before its first row in the window, between literal bounds:
	// MariaDB starts no range at a bound taken from an outer row, so a
	// correlated probe read every index entry of the aggregate's
	// published rows that purge had not removed yet.
	probeHead := "(SELECT e.aggregatetype, e.aggregateid, e." + seq + ", e.next_attempt_at FROM " + t + " e FORCE INDEX (" +
		quote(n.Outbox+"_pending") + ") WHERE e.aggregatetype = ? AND e.aggregateid = ? AND e.status = " + pending +
		" AND e." + seq + " > ? AND e." + seq + " < ?" + fmt.Sprintf(bySeq, "e") + " LIMIT 1)"
	lockHeads := "SELECT r.aggregatetype, r.aggregateid FROM " + t + " r FORCE INDEX (" + quote(n.Outbox+"_pending") + ") WHERE r.status = " +
		pending + " AND (r.aggregatetype, r.aggregateid, r." + seq + ") IN ("
	return claimQueries{probeHead: probeHead, lockHeads: lockHeads, lockRuns: lockRuns, runs: compile(d, runs(false)), runsAfter: compile(d, runs(true)),
		window: compile(d, size(false)), windowAfter: compile(d, size(true))}
}

// statement is a claim statement in the dialect's placeholders, with the
// names of its parameters in order.
type statement struct {
	sql    string
	params []string
}

// compile turns a statement with :name parameters into the dialect's
// placeholders (a PostgreSQL cast, ::, is left alone); on PostgreSQL a
// name used twice is one parameter.
func compile(d, query string) statement {
	var st statement
	var out []byte
	for i := 0; i < len(query); i++ {
		if query[i] == ':' && i+1 < len(query) && query[i+1] == ':' {
			out = append(out, "::"...)
			i++
			continue
		}
		if query[i] != ':' || i+1 >= len(query) || query[i+1] < 'a' || query[i+1] > 'z' {
			out = append(out, query[i])
			continue
		}
		j := i + 1
		for j < len(query) && query[j] >= 'a' && query[j] <= 'z' {
			j++
		}
		name := query[i+1 : j]
		n := slices.Index(st.params, name) + 1
		if n == 0 || d != dialect.Postgres { // ? placeholders take each use's value
			st.params = append(st.params, name)
			n = len(st.params)
		}
		out = append(out, dialects.Placeholder(d, n)...)
		i = j - 1
	}
	st.sql = string(out)
	return st
}

// args returns the statement's arguments for a.
func (st statement) args(a claimArgs) []any {
	args := make([]any, len(st.params))
	for i, name := range st.params {
		switch name {
		case "now":
			args[i] = a.now
		case "at":
			args[i] = a.cursor.at
		case "window":
			args[i] = a.window
		case "run":
			args[i] = a.run
		case "batch":
			args[i] = a.batch
		default:
			panic("outbox: unknown claim parameter " + name)
		}
	}
	return args
}

// claimArgs are the values of a claim's named parameters.
type claimArgs struct {
	now                int64
	cursor             claimCursor
	window, run, batch int
}

// claimed is one row a claim returned.
type claimed struct {
	m        Message
	attempts int
	head     int64 // the head of its aggregate the statement found
	wend     int64 // the due time of the window's last row
	wcount   int   // how many rows the window had
}

// claim reads the claimable runs: in tx with row locks, or (SQLite)
// without a transaction. It returns them grouped by aggregate, each run
// in sequence order, and each message's attempts so far.
//
// A window with nothing claimable (every aggregate in it held by another
// relay or waiting for a retry) moves the cursor past it and doubles the
// next window, so a relay gets past a backlog it cannot take in a number
// of statements logarithmic in its size; at the end the sweep starts
// again from the front once. held reports that nothing was claimable
// because other relays hold the window's due aggregates.
func (r *Relay) claim(ctx context.Context, tx *driver.Tx) (msgs []Message, attempts []int, held bool, err error) {
	r.mu.Lock()
	a := claimArgs{now: time.Now().UnixMicro(), cursor: r.cursor, window: r.window(),
		run: r.cfg.BatchSize, batch: r.cfg.BatchSize}
	r.mu.Unlock()
	setCursor := func(c claimCursor) {
		r.mu.Lock()
		r.cursor = c
		r.mu.Unlock()
	}
	wrapped := !a.cursor.set
	for {
		rows, err := r.claimRows(ctx, tx, a)
		if err != nil {
			return nil, nil, false, err
		}
		if msgs, attempts := runs(rows); len(msgs) > 0 {
			next := claimCursor{}
			if rows[0].wcount >= a.window {
				next = claimCursor{set: true, at: rows[0].wend}
			}
			setCursor(next)
			return msgs, attempts, false, nil
		}
		// Nothing claimable in this window. If some of its aggregates are
		// held by other relays, they are at work: wait for the next
		// wake-up. If all wait for a retry of their head, look past the
		// window (a poison head must not hide the aggregates after its
		// backlog), or start again from the front once past the end.
		start, end, n, held, err := r.windowSize(ctx, tx, a)
		if err != nil {
			return nil, nil, false, err
		}
		switch {
		case held > 0:
			// The next claim starts at this window: the front of the
			// due index before it is what the holders drained, whose
			// deleted entries (PostgreSQL, until VACUUM) every retry
			// from the front would walk again.
			setCursor(claimCursor{set: true, at: start - 1})
			return nil, nil, true, nil
		case n > 0:
			a.cursor = claimCursor{set: true, at: end}
			a.window = min(2*a.window, maxWindowFactor*r.cfg.BatchSize)
		case wrapped:
			setCursor(claimCursor{})
			return nil, nil, false, nil
		default:
			a.cursor, a.window, wrapped = claimCursor{}, r.window(), true
		}
		if err := ctx.Err(); err != nil {
			return nil, nil, false, err
		}
	}
}

// window is the first window's size: twice the batch where other relays
// may hold part of it, the batch on SQLite, whose relay is alone.
func (r *Relay) window() int {
	if r.dialect == dialect.SQLite {
		return r.cfg.BatchSize
	}
	return windowFactor * r.cfg.BatchSize
}

// query runs a claim statement in tx, or outside a transaction (SQLite).
// Through ent's Query, which on PostgreSQL sends the batch's first
// statement in one pipeline with its BEGIN (driver.PoolConfig.
// PipelineBegin).
func (r *Relay) query(ctx context.Context, tx *driver.Tx, st statement, a claimArgs, rows *entsql.Rows) error {
	var q dialect.ExecQuerier = r.drv
	if tx != nil {
		q = tx
	}
	return q.Query(driver.UsePrimary(ctx), st.sql, st.args(a), rows)
}

// claimRows runs the claim statement once.
func (r *Relay) claimRows(ctx context.Context, tx *driver.Tx, a claimArgs) ([]claimed, error) {
	st := r.cq.runs
	if a.cursor.set {
		st = r.cq.runsAfter
	}
	if r.dialect == dialect.MySQL {
		return r.lockRuns(ctx, tx, st, a)
	}
	var rows entsql.Rows
	if err := r.query(ctx, tx, st, a, &rows); err != nil {
		return nil, fmt.Errorf("outbox: relay: claiming: %w", err)
	}
	defer rows.Close()
	return r.scanClaimed(&rows, nil)
}

// windowGroup is an aggregate of the window, with its head.
type windowGroup struct {
	typ, id    string
	head, wend int64
	from       int64 // MySQL: the last sequence runs of it were published up to
	wcount, n  int   // the window's rows, and this aggregate's among them
}

// lockRuns is MySQL's claim: the window's aggregates and their heads,
// read without locks by st; then their heads locked with SKIP LOCKED; then
// the runs of the aggregates whose head this relay got, by one statement
// over the pending index, (aggregatetype, aggregateid) IN those. No row of
// theirs before the head is pending, so each aggregate's rows come from
// its head in sequence order, and the statement stops at the batch size.
// (Without the heads first, a relay locked the rows after another relay's
// run, which that relay then skipped; one range per aggregate with its own
// sequence bounds, OR'ed, kept MariaDB's range optimizer busy for seconds
// at 100 aggregates.)
func (r *Relay) lockRuns(ctx context.Context, tx *driver.Tx, st statement, a claimArgs) ([]claimed, error) {
	var rows entsql.Rows
	if err := r.query(ctx, tx, st, a, &rows); err != nil {
		return nil, fmt.Errorf("outbox: relay: claiming: %w", err)
	}
	var groups []windowGroup
	for rows.Next() {
		var g windowGroup
		if err := rows.Scan(&g.typ, &g.id, &g.head, &g.from, &g.wend, &g.wcount, &g.n); err != nil {
			rows.Close()
			return nil, fmt.Errorf("outbox: relay: reading the claim window: %w", err)
		}
		groups = append(groups, g)
	}
	rows.Close()
	if err := rows.Err(); err != nil || len(groups) == 0 {
		return nil, err
	}
	groups, err := r.findHeads(ctx, tx, groups, a.now)
	if err != nil || len(groups) == 0 {
		return nil, err
	}
	// Heads first, oldest aggregates first, as many as the window says
	// the batch needs: holding the head is holding the aggregate, so the
	// runs below only take rows of aggregates this relay holds.
	var b strings.Builder
	b.WriteString(r.cq.lockHeads)
	args := make([]any, 0, 3*len(groups))
	want := 0
	for i, g := range groups {
		if want >= a.batch {
			break
		}
		want += g.n
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("(?, ?, ?)")
		args = append(args, g.typ, g.id, g.head)
	}
	b.WriteString(") FOR UPDATE SKIP LOCKED")
	var heads entsql.Rows
	if err := tx.Query(ctx, b.String(), args, &heads); err != nil {
		return nil, fmt.Errorf("outbox: relay: claiming: %w", err)
	}
	held := map[[2]string]bool{}
	for heads.Next() {
		var k [2]string
		if err := heads.Scan(&k[0], &k[1]); err != nil {
			heads.Close()
			return nil, fmt.Errorf("outbox: relay: claiming: %w", err)
		}
		held[k] = true
	}
	heads.Close()
	if err := heads.Err(); err != nil || len(held) == 0 {
		return nil, err
	}
	byKey := make(map[[2]string]windowGroup, len(held))
	var order []windowGroup
	for _, g := range groups {
		if k := [2]string{g.typ, g.id}; held[k] {
			byKey[k] = g
			order = append(order, g)
		}
	}
	// A few aggregates (a skewed backlog): a range of the pending index
	// from each head, so the statement never reads the entries of an
	// aggregate's rows deleted before its head (InnoDB keeps them until
	// purge catches up: reading them made a 100,000-event backlog on 20
	// aggregates drain at 800 events/s). More: by aggregate alone.
	ranges := len(order) <= maxRangeAggregates
	b.Reset()
	b.WriteString(r.cq.lockRuns)
	if !ranges {
		b.WriteString("(r.aggregatetype, r.aggregateid) IN (")
	}
	args = append(args[:0], a.now)
	for i, g := range order {
		switch {
		case ranges && i > 0:
			b.WriteString(" OR ")
		case i > 0:
			b.WriteString(", ")
		}
		if ranges {
			b.WriteString("(r.aggregatetype = ? AND r.aggregateid = ? AND r.`sequence` >= ? AND r.`sequence` < ?)")
			args = append(args, g.typ, g.id, g.head, g.head+int64(a.run))
		} else {
			b.WriteString("(?, ?)")
			args = append(args, g.typ, g.id)
		}
	}
	if !ranges {
		b.WriteString(")")
	}
	b.WriteString(") LIMIT ? FOR UPDATE SKIP LOCKED")
	args = append(args, a.batch)
	var locked entsql.Rows
	if err := tx.Query(ctx, b.String(), args, &locked); err != nil {
		return nil, fmt.Errorf("outbox: relay: claiming: %w", err)
	}
	defer locked.Close()
	return r.scanClaimed(&locked, byKey)
}

// findHeads completes the heads of MySQL's window groups, which hold the
// aggregate's first sequence in the window (head) and the last one runs
// of it were published up to (from). Every pending row of the aggregate
// is after from, and the first in the window is pending and due, so the
// head is that one unless a pending row lies between the two (a retry
// waiting for its backoff, a requeued dead letter, a row outside the
// window): one probe each, between literal bounds, finds those. In a
// burn-down, runs left from where the last one ended and no probe is
// sent. Aggregates whose head is not due are dropped.
func (r *Relay) findHeads(ctx context.Context, tx *driver.Tx, groups []windowGroup, now int64) ([]windowGroup, error) {
	var b strings.Builder
	var args []any
	for _, g := range groups {
		if g.from >= g.head-1 {
			continue
		}
		if len(args) > 0 {
			b.WriteString(" UNION ALL ")
		}
		b.WriteString(r.cq.probeHead)
		args = append(args, g.typ, g.id, g.from, g.head)
	}
	if len(args) == 0 {
		return groups, nil
	}
	var rows entsql.Rows
	if err := tx.Query(ctx, b.String(), args, &rows); err != nil {
		return nil, fmt.Errorf("outbox: relay: finding the heads: %w", err)
	}
	type head struct{ seq, due int64 }
	found := map[[2]string]head{}
	for rows.Next() {
		var k [2]string
		var h head
		if err := rows.Scan(&k[0], &k[1], &h.seq, &h.due); err != nil {
			rows.Close()
			return nil, fmt.Errorf("outbox: relay: finding the heads: %w", err)
		}
		found[k] = h
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("outbox: relay: finding the heads: %w", err)
	}
	kept := groups[:0]
	for _, g := range groups {
		if h, ok := found[[2]string{g.typ, g.id}]; ok {
			if h.due > now {
				continue
			}
			g.head = h.seq
		}
		kept = append(kept, g)
	}
	return kept, nil
}

// maxRangeAggregates is how many held aggregates MySQL locks the runs of
// by one range each (OR'ed); with more, ranges by aggregate alone (IN): at
// 100 aggregates the OR'ed ranges kept MariaDB's range optimizer busy for
// seconds, and that many aggregates in a batch have few rows each.
const maxRangeAggregates = 16

// scanClaimed reads claimed rows: with their head and window columns, or
// (byKey set) without, taking them from the aggregate's group.
func (r *Relay) scanClaimed(rows *entsql.Rows, byKey map[[2]string]windowGroup) ([]claimed, error) {
	out := make([]claimed, 0, r.cfg.BatchSize)
	for rows.Next() {
		var (
			c        claimed
			id       string
			payload  string
			headers  sql.NullString
			occurred sql.NullTime
		)
		dest := []any{&id, &c.m.AggregateType, &c.m.AggregateID, &c.m.Type, &payload, &c.m.Sequence, &headers, &occurred, &c.attempts}
		if byKey == nil {
			dest = append(dest, &c.head, &c.wend, &c.wcount)
		}
		if err := rows.Scan(dest...); err != nil {
			return nil, fmt.Errorf("outbox: relay: reading a claimed row: %w", err)
		}
		if byKey != nil {
			g := byKey[[2]string{c.m.AggregateType, c.m.AggregateID}]
			c.head, c.wend, c.wcount = g.head, g.wend, g.wcount
		}
		var err error
		if c.m.ID, err = uuid.Parse(id); err != nil {
			return nil, fmt.Errorf("outbox: relay: row id %q: %w", id, err)
		}
		c.m.Payload = json.RawMessage(payload)
		c.m.OccurredAt = occurred.Time
		if headers.Valid && headers.String != "" && headers.String != "null" {
			if err := json.Unmarshal([]byte(headers.String), &c.m.Headers); err != nil {
				return nil, fmt.Errorf("outbox: relay: row %s headers: %w", id, err)
			}
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// windowSize returns the due times of the window's first and last rows,
// how many rows it has, and how many of its aggregates have a due head.
func (r *Relay) windowSize(ctx context.Context, tx *driver.Tx, a claimArgs) (start, end int64, n, held int, err error) {
	st := r.cq.window
	if a.cursor.set {
		st = r.cq.windowAfter
	}
	var rows entsql.Rows
	if err := r.query(ctx, tx, st, a, &rows); err != nil {
		return 0, 0, 0, 0, fmt.Errorf("outbox: relay: reading the claim window: %w", err)
	}
	defer rows.Close()
	var s, e, cnt, h sql.NullInt64
	if rows.Next() {
		if err := rows.Scan(&s, &e, &cnt, &h); err != nil {
			return 0, 0, 0, 0, fmt.Errorf("outbox: relay: reading the claim window: %w", err)
		}
	}
	return s.Int64, e.Int64, int(cnt.Int64), int(h.Int64), rows.Err()
}

// runs keeps, of the claimed rows, each aggregate's run: the rows from
// the head the statement found, in sequence order, up to the first gap;
// rows before the head are left out.
// Rows outside a run (another relay holds the head, or a row before them)
// are dropped: they stay pending.
func runs(rows []claimed) ([]Message, []int) {
	type key struct{ typ, id string }
	groups := map[key][]claimed{}
	var order []key
	for _, c := range rows {
		k := key{c.m.AggregateType, c.m.AggregateID}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], c)
	}
	msgs := make([]Message, 0, len(rows))
	attempts := make([]int, 0, len(rows))
	for _, k := range order {
		g := groups[k]
		sort.Slice(g, func(i, j int) bool { return g[i].m.Sequence < g[j].m.Sequence })
		want := g[0].head
		for _, c := range g {
			if c.m.Sequence < want {
				// Before the head: a requeued dead letter that runs
				// published past, which MySQL's lock by aggregate alone
				// returns too. It waits for a window of its own.
				continue
			}
			if c.m.Sequence != want {
				break
			}
			msgs = append(msgs, c.m)
			attempts = append(attempts, c.attempts)
			want++
		}
	}
	return msgs, attempts
}

// ErrSkipped is the result a Publisher gives an event it did not send
// because an earlier event of the same aggregate in the call failed: the
// event stays pending, with no attempt counted, and waits for its
// predecessor. Publishers wrap or return it as is.
var ErrSkipped = errors.New("outbox: not sent: an earlier event of its aggregate failed")

// RunGuard helps a Publisher keep per-aggregate order within one call:
// once an event of an aggregate failed, the aggregate's later events in
// the call must not be sent. The zero value is ready; it is not safe for
// concurrent use.
type RunGuard struct {
	failed map[[2]string]bool
}

// Blocked reports whether an earlier event of m's aggregate failed.
func (g *RunGuard) Blocked(m Message) bool {
	return g.failed[[2]string{m.AggregateType, m.AggregateID}]
}

// Fail records that m failed: the later events of its aggregate are
// blocked.
func (g *RunGuard) Fail(m Message) {
	if g.failed == nil {
		g.failed = map[[2]string]bool{}
	}
	g.failed[[2]string{m.AggregateType, m.AggregateID}] = true
}
