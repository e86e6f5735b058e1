package outbox

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"entgo.io/ent/dialect"

	"github.com/bento-go/bento/dialects"
	"github.com/bento-go/bento/driver"
	"github.com/bento-go/bento/resilience"
)

// Waker is told that new outbox rows committed: a relay in the same
// process, or a NOTIFY to relays in others.
type Waker interface {
	Wake()
}

// WriterOptions configure the outbox write path.
type WriterOptions struct {
	// Names of the framework's tables; zero means NamesFor("").
	Names Names
	// Dialect of the database.
	Dialect string
	// Wakers are told after each COMMIT that wrote outbox rows.
	Wakers []Waker
}

// Middleware returns the driver middleware that writes the events
// collected for a transaction (see NewContext) as outbox rows just before
// its COMMIT, in the same transaction, and wakes the relays after the
// COMMIT succeeded. On PostgreSQL the insert returns pg_current_xact_id()
// and the server's start time (resilience.PostgresTxIDExpr), recorded for
// resolving an ambiguous COMMIT without another round trip.
//
// Each aggregate's events get the next numbers of its sequence (table
// <outbox>_sequences), taken with a row lock held to COMMIT, so sequences
// have no gaps and follow commit order.
func Middleware(opts WriterOptions) driver.Middleware {
	if opts.Names.Outbox == "" {
		opts.Names = NamesFor("")
	}
	w := &writer{opts: opts, q: newQueries(opts.Dialect, opts.Names)}
	return driver.Middleware{
		Name: "outbox",
		Begin: func(next driver.BeginHandler) driver.BeginHandler {
			return func(ctx context.Context, o *sql.TxOptions) (*driver.Tx, error) {
				tx, err := next(ctx, o)
				if err == nil {
					if c := FromContext(ctx); c != nil {
						c.bind()
					}
				}
				return tx, err
			}
		},
		End: func(next driver.EndHandler) driver.EndHandler {
			return func(ctx context.Context, tx *driver.Tx, commit bool) error {
				c := FromContext(ctx)
				if c == nil {
					return next(ctx, tx, commit)
				}
				msgs := c.take()
				if !commit || len(msgs) == 0 {
					return next(ctx, tx, commit)
				}
				if err := w.write(ctx, tx, msgs); err != nil {
					return errors.Join(err, next(ctx, tx, false))
				}
				if err := next(ctx, tx, true); err != nil {
					return err
				}
				for _, wk := range w.opts.Wakers {
					wk.Wake()
				}
				return nil
			}
		},
	}
}

type writer struct {
	opts WriterOptions
	q    queries
}

// group is one aggregate's events in a transaction.
type group struct {
	aggType, aggID string
	msgs           []*Message
}

func groupByAggregate(msgs []Message) []*group {
	if len(msgs) == 1 { // the usual unit of work: no index, nothing to sort
		m := &msgs[0]
		return []*group{{aggType: m.AggregateType, aggID: m.AggregateID, msgs: []*Message{m}}}
	}
	idx := map[[2]string]*group{}
	var groups []*group
	for i := range msgs {
		m := &msgs[i]
		k := [2]string{m.AggregateType, m.AggregateID}
		g := idx[k]
		if g == nil {
			g = &group{aggType: m.AggregateType, aggID: m.AggregateID}
			idx[k] = g
			groups = append(groups, g)
		}
		g.msgs = append(g.msgs, m)
	}
	// A fixed order of sequence locks: two transactions touching the same
	// aggregates take them in the same order and cannot deadlock on them.
	sort.Slice(groups, func(i, j int) bool {
		if groups[i].aggType != groups[j].aggType {
			return groups[i].aggType < groups[j].aggType
		}
		return groups[i].aggID < groups[j].aggID
	})
	return groups
}

func (w *writer) write(ctx context.Context, tx *driver.Tx, msgs []Message) error {
	groups := groupByAggregate(msgs)
	if w.opts.Dialect == dialect.Postgres {
		return w.writePostgres(ctx, tx, groups)
	}
	for _, g := range groups {
		last, err := w.nextSequence(ctx, tx, g)
		if err != nil {
			return fmt.Errorf("outbox: sequence of %s %s: %w", g.aggType, g.aggID, err)
		}
		first := last - int64(len(g.msgs)) + 1
		for i, m := range g.msgs {
			m.Sequence = first + int64(i)
		}
	}
	query, args := w.q.insert(groups)
	if _, err := tx.ExecContext(ctx, query, args...); err != nil {
		return fmt.Errorf("outbox: writing %d events: %w", len(msgs), err)
	}
	return nil
}

// nextSequence reserves len(g.msgs) numbers of the aggregate's sequence and
// returns the last one.
func (w *writer) nextSequence(ctx context.Context, tx *driver.Tx, g *group) (int64, error) {
	n := int64(len(g.msgs))
	if w.opts.Dialect == dialect.MySQL {
		res, err := tx.ExecContext(ctx, w.q.sequenceMySQL, g.aggType, g.aggID, n)
		if err != nil {
			return 0, err
		}
		return res.LastInsertId()
	}
	rows, err := tx.QueryContext(ctx, w.q.sequenceSQLite, g.aggType, g.aggID, n)
	if err != nil {
		return 0, err
	}
	defer rows.Close()
	var last int64
	if rows.Next() {
		err = rows.Scan(&last)
	}
	return last, errors.Join(err, rows.Err())
}

func (w *writer) writePostgres(ctx context.Context, tx *driver.Tx, groups []*group) error {
	query, args := w.q.postgres(groups)
	// With the transaction's id already known (read with BEGIN), or of no
	// use (the whole transaction goes with its COMMIT, which would lose
	// the id with its answer), the insert need not return it and goes to
	// the server with COMMIT: one round trip less. (A transaction that
	// already deferred a statement of its own inserts now.)
	if (resilience.TxID(tx) != "" || tx.WholeWithCommit()) && tx.DeferExec(strings.TrimSuffix(query, returningTxID), args...) == nil {
		return nil
	}
	rows, err := tx.QueryContext(ctx, query, args...)
	if err != nil {
		return fmt.Errorf("outbox: writing events: %w", err)
	}
	defer rows.Close()
	var xid string
	if rows.Next() {
		err = rows.Scan(&xid)
	}
	for rows.Next() {
	}
	if err = errors.Join(err, rows.Err()); err != nil {
		return fmt.Errorf("outbox: writing events: %w", err)
	}
	if xid != "" {
		resilience.SetTxID(tx, xid)
	}
	return nil
}

// returningTxID ends PostgreSQL's outbox inserts: they return the
// transaction's id for resolving a lost COMMIT (resilience.SetTxID).
const returningTxID = " RETURNING " + resilience.PostgresTxIDExpr

// Statements are the SQL statements the outbox writer (Middleware) sends
// to record one event of one aggregate, exactly as it sends them: for
// benchmarks and tools that write the same rows without the writer, so
// that they cannot drift from it.
type Statements struct {
	// Sequence (MySQL, SQLite; empty on PostgreSQL) reserves the next n
	// numbers of an aggregate's sequence. Arguments: aggregatetype,
	// aggregateid, n. On SQLite it returns the last number reserved
	// (RETURNING); on MySQL LAST_INSERT_ID() is the last number.
	Sequence string
	// Insert inserts the event's outbox row. On PostgreSQL it also takes
	// the next number of the aggregate's sequence, in the same statement,
	// as the writer sends it with COMMIT (in a transaction whose id is not
	// known yet, the writer adds RETURNING of the id and sends it
	// before COMMIT). Arguments on PostgreSQL:
	// aggregatetype, aggregateid, id (UUID text), type, payload (JSON),
	// headers (JSON object or nil), occurred_at, next_attempt_at (Unix
	// microseconds: occurred_at's). On MySQL and SQLite: id, aggregatetype,
	// aggregateid, type, payload, sequence, headers, occurred_at,
	// next_attempt_at.
	Insert string
}

// WriteStatements returns the writer's Statements for a dialect
// ("postgres", "mysql" or "sqlite3") and table names (zero: NamesFor("")).
func WriteStatements(dialectName string, n Names) Statements {
	if n.Outbox == "" {
		n = NamesFor("")
	}
	q := newQueries(dialectName, n)
	switch dialectName {
	case dialect.Postgres:
		return Statements{Insert: strings.TrimSuffix(q.one, returningTxID)}
	case dialect.MySQL:
		return Statements{Sequence: q.sequenceMySQL, Insert: q.insertPrefix + insertRow}
	default:
		return Statements{Sequence: q.sequenceSQLite, Insert: q.insertPrefix + insertRow}
	}
}

// queries holds the dialect's statements.
type queries struct {
	dialect        string
	names          Names
	quote          func(string) string
	sequenceMySQL  string
	sequenceSQLite string
	insertPrefix   string
	one            string // PostgreSQL, one event of one aggregate
}

func newQueries(d string, n Names) queries {
	q := queries{dialect: d, names: n, quote: func(s string) string { return dialects.QuoteIdent(d, s) }}
	seq := q.quote(n.Sequences)
	q.sequenceMySQL = "INSERT INTO " + seq + " (aggregatetype, aggregateid, last_sequence) VALUES (?, ?, LAST_INSERT_ID(?)) " +
		"ON DUPLICATE KEY UPDATE last_sequence = LAST_INSERT_ID(last_sequence + VALUES(last_sequence))"
	q.sequenceSQLite = "INSERT INTO " + seq + " (aggregatetype, aggregateid, last_sequence) VALUES (?, ?, ?) " +
		"ON CONFLICT (aggregatetype, aggregateid) DO UPDATE SET last_sequence = last_sequence + excluded.last_sequence RETURNING last_sequence"
	q.one = "WITH s AS (INSERT INTO " + seq + " (aggregatetype, aggregateid, last_sequence) VALUES ($1, $2, 1)" +
		" ON CONFLICT (aggregatetype, aggregateid) DO UPDATE SET last_sequence = " + seq + ".last_sequence + 1 RETURNING last_sequence) " +
		"INSERT INTO " + q.quote(n.Outbox) + " (id, aggregatetype, aggregateid, type, payload, sequence, headers, occurred_at, status, attempts, next_attempt_at) " +
		"SELECT $3::uuid, $1, $2, $4, $5::jsonb, s.last_sequence, $6::jsonb, $7::timestamptz, '" + StatusPending + "', 0, $8::bigint FROM s" +
		returningTxID
	q.insertPrefix = "INSERT INTO " + q.quote(n.Outbox) +
		" (id, aggregatetype, aggregateid, " + q.quote("type") + ", payload, " + q.quote("sequence") +
		", headers, occurred_at, status, attempts, next_attempt_at) VALUES "
	return q
}

// insertRow is one row of the multi-row insert of MySQL and SQLite.
const insertRow = "(?, ?, ?, ?, ?, ?, ?, ?, '" + StatusPending + "', 0, ?)"

// insert builds the multi-row insert of MySQL and SQLite.
func (q queries) insert(groups []*group) (string, []any) {
	var b strings.Builder
	b.WriteString(q.insertPrefix)
	var args []any
	first := true
	for _, g := range groups {
		for _, m := range g.msgs {
			if !first {
				b.WriteString(", ")
			}
			first = false
			b.WriteString(insertRow)
			args = append(args, m.ID.String(), m.AggregateType, m.AggregateID, m.Type, string(m.Payload),
				m.Sequence, headersJSON(m.Headers), m.OccurredAt, m.OccurredAt.UnixMicro())
		}
	}
	return b.String(), args
}

// postgres builds one statement that reserves every aggregate's sequence
// numbers and inserts the rows, returning the transaction id.
func (q queries) postgres(groups []*group) (string, []any) {
	if len(groups) == 1 && len(groups[0].msgs) == 1 {
		return q.postgresOne(groups[0])
	}
	var b strings.Builder
	var args []any
	arg := func(v any, cast string) {
		args = append(args, v)
		b.WriteString("$" + strconv.Itoa(len(args)) + cast)
	}
	seq := q.quote(q.names.Sequences)
	b.WriteString("WITH s AS (INSERT INTO " + seq + " (aggregatetype, aggregateid, last_sequence) VALUES ")
	for i, g := range groups {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteByte('(')
		arg(g.aggType, "")
		b.WriteString(", ")
		arg(g.aggID, "")
		b.WriteString(", ")
		arg(int64(len(g.msgs)), "::bigint")
		b.WriteByte(')')
	}
	b.WriteString(" ON CONFLICT (aggregatetype, aggregateid) DO UPDATE SET last_sequence = " + seq +
		".last_sequence + EXCLUDED.last_sequence RETURNING aggregatetype, aggregateid, last_sequence) " +
		"INSERT INTO " + q.quote(q.names.Outbox) + " (id, aggregatetype, aggregateid, type, payload, sequence, headers, occurred_at, status, attempts, next_attempt_at) " +
		"SELECT v.id, v.aggregatetype, v.aggregateid, v.type, v.payload, s.last_sequence - v.n + v.k, v.headers, v.occurred_at, '" + StatusPending + "', 0, v.next_attempt_at FROM (VALUES ")
	first := true
	for _, g := range groups {
		for k, m := range g.msgs {
			if !first {
				b.WriteString(", ")
			}
			first = false
			b.WriteByte('(')
			arg(m.ID.String(), "::uuid")
			b.WriteString(", ")
			arg(m.AggregateType, "::text")
			b.WriteString(", ")
			arg(m.AggregateID, "::text")
			b.WriteString(", ")
			arg(m.Type, "::text")
			b.WriteString(", ")
			arg(string(m.Payload), "::jsonb")
			b.WriteString(", ")
			arg(int64(k+1), "::bigint")
			b.WriteString(", ")
			arg(int64(len(g.msgs)), "::bigint")
			b.WriteString(", ")
			arg(headersJSON(m.Headers), "::jsonb")
			b.WriteString(", ")
			arg(m.OccurredAt, "::timestamptz")
			b.WriteString(", ")
			arg(m.OccurredAt.UnixMicro(), "::bigint")
			b.WriteByte(')')
		}
	}
	b.WriteString(") AS v(id, aggregatetype, aggregateid, type, payload, k, n, headers, occurred_at, next_attempt_at) " +
		"JOIN s ON s.aggregatetype = v.aggregatetype AND s.aggregateid = v.aggregateid" + returningTxID)
	return b.String(), args
}

// postgresOne is postgres for the common unit of work: one event of one
// aggregate, without the VALUES join.
func (q queries) postgresOne(g *group) (string, []any) {
	m := g.msgs[0]
	// The payload goes as json.RawMessage, which pgx sends as it is
	// (no copy into a string).
	return q.one, []any{g.aggType, g.aggID, m.ID.String(), m.Type, m.Payload, headersJSON(m.Headers), m.OccurredAt, m.OccurredAt.UnixMicro()}
}

// headersJSON encodes headers for the JSON column; nil for none.
func headersJSON(h map[string]string) any {
	if len(h) == 0 {
		return nil
	}
	b, err := json.Marshal(h) // sorted keys
	if err != nil {
		return nil
	}
	return string(b)
}
