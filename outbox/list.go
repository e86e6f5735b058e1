package outbox

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"

	"entgo.io/ent/dialect"
	"github.com/google/uuid"

	"github.com/bento-go/bento/dialects"
	"github.com/bento-go/bento/driver"
)

// Entry is one outbox row as List reports it: the event's identity and the
// relay's state, without its payload.
type Entry struct {
	ID            uuid.UUID `json:"id"`
	AggregateType string    `json:"aggregate_type"`
	AggregateID   string    `json:"aggregate_id"`
	Type          string    `json:"type"`
	Sequence      int64     `json:"sequence"`
	Status        string    `json:"status"` // StatusPending, StatusPublished or StatusDead
	Attempts      int       `json:"attempts"`
	LastError     string    `json:"last_error,omitempty"`
	OccurredAt    time.Time `json:"occurred_at"`
	// NextAttemptAt is when the relay may try a pending row next (a row
	// failed with a retryable error waits for its backoff).
	NextAttemptAt time.Time `json:"next_attempt_at"`
	// PublishedAt is when the broker acknowledged the row; zero unless it
	// is published (published rows are kept only with OUTBOX_RETENTION).
	PublishedAt time.Time `json:"published_at,omitzero"`
}

// ListOptions select the rows List returns.
type ListOptions struct {
	// Status keeps rows of this status only (StatusPending,
	// StatusPublished or StatusDead); empty keeps every row.
	Status string
	// Limit bounds the rows returned (default 100).
	Limit int
}

// List returns outbox rows, oldest first (event ids are time-ordered), so
// that an operator can see what is pending or dead without writing SQL.
// An unknown Status or a negative Limit is an error naming the accepted
// values.
func List(ctx context.Context, drv *driver.Driver, names Names, opts ListOptions) ([]Entry, error) {
	switch opts.Status {
	case "", StatusPending, StatusPublished, StatusDead:
	default:
		return nil, fmt.Errorf("outbox: list: status %q; accepted: %s, %s, %s or empty for all", opts.Status, StatusPending, StatusPublished, StatusDead)
	}
	if opts.Limit < 0 {
		return nil, fmt.Errorf("outbox: list: limit %d; accepted: a positive count, or 0 for the default of 100", opts.Limit)
	}
	if opts.Limit == 0 {
		opts.Limit = 100
	}
	d := drv.Dialect()
	quote := func(s string) string { return dialects.QuoteIdent(d, s) }
	id := "id"
	if d == dialect.Postgres {
		id = "id::text"
	}
	var b strings.Builder
	b.WriteString("SELECT " + id + ", aggregatetype, aggregateid, " + quote("type") + ", " + quote("sequence") +
		", status, attempts, last_error, occurred_at, next_attempt_at, published_at FROM " + quote(names.Outbox))
	args := []any{}
	if opts.Status != "" {
		args = append(args, opts.Status)
		b.WriteString(" WHERE status = " + dialects.Placeholder(d, len(args)))
	}
	args = append(args, opts.Limit)
	b.WriteString(" ORDER BY id LIMIT " + dialects.Placeholder(d, len(args)))
	rows, err := drv.QueryContext(ctx, b.String(), args...)
	if err != nil {
		return nil, fmt.Errorf("outbox: list: %w", err)
	}
	defer rows.Close()
	var out []Entry
	for rows.Next() {
		var (
			e         Entry
			rawID     string
			lastError sql.NullString
			occurred  sql.NullTime
			next      int64
			published sql.NullTime
			attempts  int64
		)
		if err := rows.Scan(&rawID, &e.AggregateType, &e.AggregateID, &e.Type, &e.Sequence, &e.Status, &attempts,
			&lastError, &occurred, &next, &published); err != nil {
			return nil, fmt.Errorf("outbox: list: reading a row: %w", err)
		}
		var err error
		if e.ID, err = uuid.Parse(rawID); err != nil {
			return nil, fmt.Errorf("outbox: list: row id %q: %w", rawID, err)
		}
		e.Attempts, e.LastError = int(attempts), lastError.String
		e.OccurredAt = occurred.Time
		e.NextAttemptAt = time.UnixMicro(next)
		if published.Valid {
			e.PublishedAt = published.Time
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("outbox: list: %w", err)
	}
	return out, nil
}
