package outbox

import (
	"context"
	"errors"
	"fmt"
	"time"

	"entgo.io/ent/dialect"
	"github.com/google/uuid"

	"github.com/bento-go/bento/dialects"
	"github.com/bento-go/bento/driver"
)

// MarkProcessed records, in the transaction of ctx (a unit of work of the
// consumer), that consumer processed event eventID. It reports duplicate
// when the event was already recorded: the caller then skips it. Because
// the mark commits with the consumer's own changes, a redelivered event is
// applied once:
//
//	err := uow.Do(ctx, func(ctx context.Context, tx *ent.Client) error {
//		dup, err := outbox.MarkProcessed(ctx, names, "billing", eventID)
//		if err != nil || dup {
//			return err
//		}
//		... apply the event ...
//	})
func MarkProcessed(ctx context.Context, names Names, consumer string, eventID uuid.UUID) (duplicate bool, err error) {
	tx := driver.TxFromContext(ctx)
	if tx == nil {
		return false, errors.New("outbox: MarkProcessed needs the context of a unit of work")
	}
	if names.Inbox == "" {
		names = NamesFor("")
	}
	var q string
	switch tx.Pool().Dialect() {
	case dialect.Postgres:
		q = "INSERT INTO " + dialects.QuoteIdent(dialect.Postgres, names.Inbox) + " (consumer, event_id, processed_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
	case dialect.MySQL:
		q = "INSERT IGNORE INTO " + dialects.QuoteIdent(dialect.MySQL, names.Inbox) + " (consumer, event_id, processed_at) VALUES (?, ?, ?)"
	default:
		q = "INSERT OR IGNORE INTO " + dialects.QuoteIdent(dialect.SQLite, names.Inbox) + " (consumer, event_id, processed_at) VALUES (?, ?, ?)"
	}
	res, err := tx.ExecContext(ctx, q, consumer, eventID.String(), time.Now().UTC())
	if err != nil {
		return false, fmt.Errorf("outbox: inbox of %s: %w", consumer, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("outbox: inbox of %s: %w", consumer, err)
	}
	return n == 0, nil
}
