package outbox

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
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

// windowFactor is the window's size in batches.
const windowFactor = 2

// claimCursor is where a relay's window starts: the oldest due rows when
// zero, or the rows after (at, id) on the due index.
type claimCursor struct {
	set bool
	at  int64
	id  string
}

// claimQueries are the statements of the claim for one dialect.
type claimQueries struct {
	dialect string
	// runs claims the runs of the window's aggregates (with and without a
	// cursor); after reads the due index's key window rows on (the end of
	// the window) to move the cursor past it.
	runs, runsAfter   statement
	windowEnd, endAft statement
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
	// Bind parameters are named here and numbered per dialect by bind.
	due := "w.status = " + pending + " AND w.next_attempt_at <= :now"
	after := ""
	switch d {
	case dialect.MySQL:
		// MariaDB's range optimizer takes the >= bound; the OR only
		// filters the rows tied on next_attempt_at.
		after = " AND w.next_attempt_at >= :at AND (w.next_attempt_at > :at OR w.id > :id)"
	default:
		after = " AND (w.next_attempt_at, w.id) > (:at, :id)"
	}
	window := func(cond string) string {
		return "SELECT w.aggregatetype, w.aggregateid FROM " + t + " w WHERE " + due + cond +
			" ORDER BY w.next_attempt_at, w.id LIMIT :window"
	}
	// "ORDER BY status, sequence" with status fixed is the order of the
	// pending index alone: with the batch's settings (no sort) it is the
	// index PostgreSQL must use, whatever the statistics say, and it never
	// reads an aggregate's published or dead rows.
	bySeq := " ORDER BY %[1]s.status, %[1]s." + seq
	head := func(col string) string {
		return "(SELECT e." + col + " FROM " + t + " e WHERE e.aggregatetype = a.aggregatetype AND e.aggregateid = a.aggregateid" +
			" AND e.status = " + pending + fmt.Sprintf(bySeq, "e") + " LIMIT 1)"
	}
	columns := "SELECT " + idText + ", r.aggregatetype, r.aggregateid, r." + typ + ", " + payloadText + ", r." + seq + ", " + headersText +
		", r.occurred_at, r.attempts"
	runs := func(cond string) string {
		if d == dialect.Postgres {
			// Laterals: each aggregate's head is one probe of the pending
			// index, and its run one range of it, parameterised by the
			// aggregate, so no plan can read the index whole.
			return columns + ", hd.head FROM (SELECT a.aggregatetype, a.aggregateid FROM (" + window(cond) + ") a" +
				" GROUP BY a.aggregatetype, a.aggregateid) g" +
				" CROSS JOIN LATERAL (SELECT e." + seq + " AS head, e.next_attempt_at AS due FROM " + t + " e" +
				" WHERE e.aggregatetype = g.aggregatetype AND e.aggregateid = g.aggregateid AND e.status = " + pending +
				fmt.Sprintf(bySeq, "e") + " LIMIT 1) hd" +
				" CROSS JOIN LATERAL (SELECT * FROM " + t + " x WHERE x.aggregatetype = g.aggregatetype AND x.aggregateid = g.aggregateid" +
				" AND x.status = " + pending + " AND x." + seq + " >= hd.head AND x." + seq + " < hd.head + :run AND x.next_attempt_at <= :now" +
				fmt.Sprintf(bySeq, "x") + " LIMIT :run) r" +
				" WHERE hd.due <= :now LIMIT :batch FOR UPDATE OF r SKIP LOCKED"
		}
		q := columns + ", h.head FROM (" +
			"SELECT a.aggregatetype, a.aggregateid, " + head(seq) + " AS head, " + head("next_attempt_at") + " AS head_due" +
			" FROM (" + window(cond) + ") a GROUP BY a.aggregatetype, a.aggregateid) h" +
			" JOIN " + t + " r ON r.aggregatetype = h.aggregatetype AND r.aggregateid = h.aggregateid AND r.status = " + pending +
			" AND r." + seq + " >= h.head AND r." + seq + " < h.head + :run AND r.next_attempt_at <= :now" +
			" WHERE h.head_due <= :now LIMIT :batch"
		if d == dialect.MySQL {
			q += " FOR UPDATE SKIP LOCKED"
		}
		return q
	}
	windowID := "w.id"
	if d == dialect.Postgres {
		windowID = "w.id::text"
	}
	end := func(cond string) string {
		return "SELECT w.next_attempt_at, " + windowID + " FROM " + t + " w WHERE " + due + cond +
			" ORDER BY w.next_attempt_at, w.id LIMIT 1 OFFSET :last"
	}
	return claimQueries{dialect: d, runs: compile(d, runs("")), runsAfter: compile(d, runs(after)),
		windowEnd: compile(d, end("")), endAft: compile(d, end(after))}
}

// claimArgs are the values of a claim's named parameters.
type claimArgs struct {
	now                int64
	cursor             claimCursor
	window, run, batch int
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
		case "id":
			args[i] = a.cursor.id
		case "window":
			args[i] = a.window
		case "run":
			args[i] = a.run
		case "batch":
			args[i] = a.batch
		case "last":
			args[i] = a.window - 1
		default:
			panic("outbox: unknown claim parameter " + name)
		}
	}
	return args
}

// claimed is one row a claim returned.
type claimed struct {
	m        Message
	attempts int
	head     int64
}

// claim reads the claimable runs: in tx with row locks, or (SQLite)
// without a transaction. It returns them grouped by aggregate, each run
// in sequence order, and each message's attempts so far.
func (r *Relay) claim(ctx context.Context, tx *driver.Tx) ([]Message, []int, error) {
	r.mu.Lock()
	a := claimArgs{now: time.Now().UnixMicro(), cursor: r.cursor, window: windowFactor * r.cfg.BatchSize,
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
			return nil, nil, err
		}
		if len(rows) > 0 {
			msgs, attempts := runs(rows)
			if len(msgs) > 0 {
				setCursor(a.cursor)
				return msgs, attempts, nil
			}
		}
		// Nothing claimable in this window: look past it, or start again
		// from the oldest rows once past the end.
		end, ok, err := r.windowEnd(ctx, tx, a)
		if err != nil {
			return nil, nil, err
		}
		switch {
		case ok:
			a.cursor = end
		case wrapped:
			setCursor(claimCursor{})
			return nil, nil, nil
		default:
			a.cursor, wrapped = claimCursor{}, true
		}
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
	}
}

// claimRows runs the claim statement once.
func (r *Relay) claimRows(ctx context.Context, tx *driver.Tx, a claimArgs) ([]claimed, error) {
	query := r.cq.runs
	if a.cursor.set {
		query = r.cq.runsAfter
	}
	// Through ent's Query, which on PostgreSQL sends the claim in one
	// pipeline with the transaction's BEGIN (driver.PoolConfig.
	// PipelineBegin): the claim is the batch's first statement.
	var q dialect.ExecQuerier = r.drv
	if tx != nil {
		q = tx
	}
	var rows entsql.Rows
	if err := q.Query(driver.UsePrimary(ctx), query.sql, query.args(a), &rows); err != nil {
		return nil, fmt.Errorf("outbox: relay: claiming: %w", err)
	}
	defer rows.Close()
	out := make([]claimed, 0, r.cfg.BatchSize)
	for rows.Next() {
		var (
			c        claimed
			id       string
			payload  string
			headers  sql.NullString
			occurred sql.NullTime
		)
		if err := rows.Scan(&id, &c.m.AggregateType, &c.m.AggregateID, &c.m.Type, &payload, &c.m.Sequence, &headers, &occurred,
			&c.attempts, &c.head); err != nil {
			return nil, fmt.Errorf("outbox: relay: reading a claimed row: %w", err)
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

// windowEnd returns the due index's key of the window's last row, and
// false when the window was not full (it reached the end).
func (r *Relay) windowEnd(ctx context.Context, tx *driver.Tx, a claimArgs) (claimCursor, bool, error) {
	query := r.cq.windowEnd
	if a.cursor.set {
		query = r.cq.endAft
	}
	var q dialect.ExecQuerier = r.drv
	if tx != nil {
		q = tx
	}
	var rows entsql.Rows
	if err := q.Query(driver.UsePrimary(ctx), query.sql, query.args(a), &rows); err != nil {
		return claimCursor{}, false, fmt.Errorf("outbox: relay: reading the claim window: %w", err)
	}
	defer rows.Close()
	if !rows.Next() {
		return claimCursor{}, false, rows.Err()
	}
	c := claimCursor{set: true}
	if err := rows.Scan(&c.at, &c.id); err != nil {
		return claimCursor{}, false, fmt.Errorf("outbox: relay: reading the claim window: %w", err)
	}
	return c, true, rows.Err()
}

// runs keeps, of the claimed rows, each aggregate's run: the rows from
// the head the statement found, in sequence order, up to the first gap.
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
		for i, c := range g {
			if c.m.Sequence != c.head+int64(i) {
				break
			}
			msgs = append(msgs, c.m)
			attempts = append(attempts, c.attempts)
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
