package resilience

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	bentodriver "github.com/bento-go/bento/driver"
)

// Outcome is the fate of a transaction whose COMMIT reply was lost.
type Outcome uint8

// Outcomes.
const (
	OutcomeUnknown Outcome = iota
	Committed
	Aborted
)

func (o Outcome) String() string {
	switch o {
	case Committed:
		return "committed"
	case Aborted:
		return "aborted"
	}
	return "unknown"
}

// txIDKey keys the PostgreSQL transaction id on a driver.Tx.
type txIDKey struct{}

// PostgresTxIDExpr is the SQL expression whose value SetTxID records: the
// transaction's id (pg_current_xact_id) and the start time of the server
// that assigned it, "xid@start". A transaction id identifies a transaction
// only within one life of the server: after a crash, ids whose WAL was
// never written are handed out again, so pg_xact_status of a lost
// transaction's id can report the commit of another one. ResolveCommit
// trusts the status only from the same server life.
const PostgresTxIDExpr = bentodriver.PostgresTxIDExpr

// SetTxID records the PostgreSQL transaction id of tx (the value of
// PostgresTxIDExpr; a bare pg_current_xact_id is accepted too), for
// resolving an ambiguous COMMIT. The outbox sets it from its INSERT …
// RETURNING, saving a round trip.
func SetTxID(tx *bentodriver.Tx, xid string) { tx.SetValue(txIDKey{}, xid) }

// TxID returns the transaction id recorded with SetTxID, or the one read
// with BEGIN (driver.PoolConfig.BeginTxID), or "".
func TxID(tx *bentodriver.Tx) string {
	if s, _ := tx.Value(txIDKey{}).(string); s != "" {
		return s
	}
	return tx.BeginTxID()
}

// CurrentTxID reads pg_current_xact_id() in the transaction (assigning an
// id if it has none yet) and records it on tx.
func CurrentTxID(ctx context.Context, tx *bentodriver.Tx) (string, error) {
	if xid := TxID(tx); xid != "" {
		return xid, nil
	}
	rows, err := tx.QueryContext(ctx, "SELECT "+PostgresTxIDExpr)
	if err != nil {
		return "", err
	}
	defer rows.Close()
	var xid string
	if rows.Next() {
		err = rows.Scan(&xid)
	}
	if err = errors.Join(err, rows.Err()); err != nil {
		return "", err
	}
	SetTxID(tx, xid)
	return xid, nil
}

// evidenceKey keys a transaction's CommitEvidence on a driver.Tx.
type evidenceKey struct{}

// CommitEvidence is a row that a transaction inserts and nothing else
// could: a new row whose id the code chose beforehand (ids.Blocks, which
// never hands an id out twice). It resolves an ambiguous COMMIT whose
// transaction id is not known: once the server process that ran the
// transaction has ended, the transaction has committed if and only if the
// row exists. A unit of work sent whole with its COMMIT (one round trip:
// unitofwork.DeferWrites) does not read its transaction id: read in the
// same pipeline, the id would be lost with the COMMIT's answer
// (driver.Tx.WholeWithCommit); the evidence is what resolves it. The row
// must not be deleted in the moments after the commit.
type CommitEvidence struct {
	Table, Column string // the table and its unique column, as named in SQL
	Value         any    // the value of the column in the row
}

// SetCommitEvidence records e on tx, for resolving an ambiguous COMMIT
// (PostgreSQL) when tx's transaction id is unknown.
func SetCommitEvidence(tx *bentodriver.Tx, e CommitEvidence) { tx.SetValue(evidenceKey{}, e) }

// ResolveByEvidence finds out what became of a transaction from the row
// it inserted (e), on a connection of db other than the one that was lost:
// a row that exists is a commit; once the server process pid that ran the
// transaction is gone, a row that does not is an abort. It waits for that
// process (it ends when it notices its client is gone) until timeout.
// The process is looked at before the row, each time: a transaction that
// commits and ends between the two looks is then seen committed.
func ResolveByEvidence(ctx context.Context, db *sql.DB, e CommitEvidence, pid uint32, timeout time.Duration) (Outcome, error) {
	if pid == 0 {
		return OutcomeUnknown, errors.New("resilience: no server process to wait for")
	}
	exists := "SELECT EXISTS (SELECT 1 FROM " + pgx.Identifier{e.Table}.Sanitize() + " WHERE " + pgx.Identifier{e.Column}.Sanitize() + " = $1)"
	return poll(ctx, timeout, "by "+e.Table+"."+e.Column, fmt.Sprintf("server process %d still running", pid),
		func(ctx context.Context) (Outcome, bool, error) {
			var running, found bool
			err := db.QueryRowContext(ctx, "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)", int64(pid)).Scan(&running)
			if err == nil {
				err = db.QueryRowContext(ctx, exists, e.Value).Scan(&found)
			}
			switch {
			case err == nil && found:
				return Committed, true, nil
			case err == nil && !running:
				return Aborted, true, nil
			}
			return OutcomeUnknown, false, err // still running, or a connection error
		})
}

// poll asks look until it settles the outcome (done: its outcome and
// error are returned), fails with an error that is not worth retrying, or
// timeout passes, waiting 5 ms doubling to 200 ms between looks. what
// names the subject in the errors; pending says why nothing was settled
// when the time ran out without an error.
func poll(ctx context.Context, timeout time.Duration, what, pending string, look func(ctx context.Context) (Outcome, bool, error)) (Outcome, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	delay := 5 * time.Millisecond
	for {
		outcome, done, err := look(ctx)
		if done {
			return outcome, err
		}
		if err != nil && !IsRetryable(err) && Classify(err) != Unknown {
			return OutcomeUnknown, fmt.Errorf("resilience: resolving %s: %w", what, err)
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			if err == nil {
				err = errors.New(pending)
			}
			return OutcomeUnknown, fmt.Errorf("resilience: resolving %s: %w: %w", what, ctx.Err(), err)
		case <-t.C:
		}
		if delay < 200*time.Millisecond {
			delay *= 2
		}
	}
}

// ResolveCommit asks PostgreSQL what became of transaction xid, on a
// connection of db other than the one that was lost, until the answer is
// committed or aborted or timeout passes. While the old backend has not yet
// noticed its client is gone the transaction is "in progress"; ResolveCommit
// polls through that. Connection errors on the way are retried.
func ResolveCommit(ctx context.Context, db *sql.DB, xid string, timeout time.Duration) (Outcome, error) {
	if xid == "" {
		return OutcomeUnknown, errors.New("resilience: no transaction id to resolve")
	}
	xid, born, _ := strings.Cut(xid, "@")
	return poll(ctx, timeout, "transaction "+xid, fmt.Sprintf("transaction %s still in progress", xid),
		func(ctx context.Context) (Outcome, bool, error) {
			var status, started sql.NullString
			err := db.QueryRowContext(ctx, "SELECT pg_xact_status($1::xid8), extract(epoch from pg_postmaster_start_time())::text", xid).Scan(&status, &started)
			switch {
			case err == nil && born != "" && started.String != born:
				// The server restarted since the transaction ran: its id
				// may belong to another transaction now.
				return OutcomeUnknown, true, fmt.Errorf("resilience: the server restarted after transaction %s ran (started at %s, now %s): its id may have been reused, so its outcome cannot be read", xid, born, started.String)
			case err == nil && status.String == "committed":
				return Committed, true, nil
			case err == nil && status.String == "aborted":
				return Aborted, true, nil
			case err == nil && !status.Valid:
				return OutcomeUnknown, true, fmt.Errorf("resilience: transaction %s is too old for pg_xact_status", xid)
			}
			return OutcomeUnknown, false, err // "in progress", or a connection error
		})
}
