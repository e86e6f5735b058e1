package bento

import (
	"context"
	"database/sql"
	sqldriver "database/sql/driver"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	"entgo.io/ent/dialect"
	"entgo.io/ent/dialect/sql/schema"

	"github.com/bento-go/bento/dialects"
)

// migrateLockKey is the advisory lock that serialises Migrate across
// processes: pg_advisory_lock takes a bigint, GET_LOCK a name.
const (
	migrateLockKey  int64 = 0x62656e746f6d6967 // "bentomig"
	migrateLockName       = "bento_migrate"
)

// Migrate creates or updates the given tables (a generated ent/migrate
// package's Tables) and Bento's own tables in one call. It runs under the
// migration lock (an advisory lock on PostgreSQL and MySQL, a lock file
// beside a SQLite database file), so several instances may start and
// migrate at once: one migrates, the others wait for it and then find
// nothing to do. Running it again on an up-to-date schema changes nothing.
// Columns and indexes are never dropped.
func (db *DB) Migrate(ctx context.Context, tables ...*schema.Table) error {
	db.migrateMu.Lock()
	defer db.migrateMu.Unlock()
	all := append(append([]*schema.Table(nil), tables...), db.tables...)
	unlock, err := db.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	m, err := schema.NewMigrate(db.drv, schema.WithForeignKeys(true))
	if err != nil {
		return fmt.Errorf("bento: migrate: %w", err)
	}
	if err := m.Create(ctx, all...); err != nil {
		return fmt.Errorf("bento: migrate %s: %w", db.db.Dialect, err)
	}
	return nil
}

// lock takes the migration lock: an advisory lock on a dedicated
// connection (PostgreSQL, MySQL), or a lock file beside a SQLite database
// file (<path>.migrate.lock). An in-memory database has only migrateMu.
func (db *DB) lock(ctx context.Context) (unlock func(), err error) {
	var lockSQL, unlockSQL string
	var arg any
	switch db.db.Dialect {
	case dialect.SQLite:
		if db.cfg.DB.URL.Memory() {
			return func() {}, nil
		}
		return lockFile(ctx, db.cfg.DB.URL.AbsPath()+".migrate.lock")
	case dialect.Postgres:
		lockSQL, unlockSQL, arg = "SELECT pg_advisory_lock($1)", "SELECT pg_advisory_unlock($1)", migrateLockKey
	case dialect.MySQL:
		// GET_LOCK waits at most its timeout (seconds); loop until ctx ends.
		lockSQL, unlockSQL, arg = "SELECT GET_LOCK(?, 10)", "SELECT RELEASE_LOCK(?)", migrateLockName
	default:
		return func() {}, nil
	}
	if db.db.MaxOpen == 1 {
		return nil, fmt.Errorf("bento: migrate: the %s pool has 1 connection (DB_POOL_SIZE + DB_MAX_OVERFLOW = 1); Migrate needs 2: one holds the migration lock while the other migrates (accepted: a pool of 2 or more)", db.db.Dialect)
	}
	release, err := db.pool.Acquire(ctx, false)
	if err != nil {
		return nil, fmt.Errorf("bento: migrate: %w", err)
	}
	conn, err := db.db.DB.Conn(ctx)
	if err != nil {
		release()
		return nil, fmt.Errorf("bento: migrate: connecting: %w", err)
	}
	for {
		var got sql.NullInt64
		if db.db.Dialect == dialect.Postgres {
			_, err = conn.ExecContext(ctx, lockSQL, arg)
			got.Int64, got.Valid = 1, err == nil
		} else {
			err = conn.QueryRowContext(ctx, lockSQL, arg).Scan(&got)
		}
		if err != nil {
			conn.Close()
			release()
			return nil, fmt.Errorf("bento: migrate: taking the migration lock: %w", err)
		}
		if got.Valid && got.Int64 == 1 {
			break
		}
		if ctx.Err() != nil {
			conn.Close()
			release()
			return nil, fmt.Errorf("bento: migrate: taking the migration lock: %w", ctx.Err())
		}
	}
	return func() {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if _, err := conn.ExecContext(uctx, unlockSQL, arg); err != nil {
			db.logger.Warn("bento: migrate: releasing the migration lock failed; it is released when the connection closes", "error", err)
			_ = conn.Raw(func(any) error { return sqldriver.ErrBadConn })
		}
		conn.Close()
		release()
	}, nil
}

// lockFile takes an exclusive lock on path (created if missing), waiting
// for another process to release it until ctx ends.
func lockFile(ctx context.Context, path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("bento: migrate: the migration lock %s: %w", path, err)
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("bento: migrate: the migration lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("bento: migrate: waiting for the migration lock %s (held by another process): %w", path, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

// ConfirmDropAll must be passed to DropAll; it exists so that no call drops
// tables by accident.
type ConfirmDropAll string

// IReallyWantToDropAllTables is the one accepted ConfirmDropAll value.
const IReallyWantToDropAllTables ConfirmDropAll = "I really want to drop all tables"

// DropAll drops the given tables and Bento's own. It refuses unless confirm
// is IReallyWantToDropAllTables. Tables that do not exist are skipped. On
// MySQL and SQLite the drops run with foreign key checks off on one
// connection; the checks are turned back on whether or not a drop failed,
// and a connection on which that fails is closed, never returned to the
// pool.
func (db *DB) DropAll(ctx context.Context, confirm ConfirmDropAll, tables ...*schema.Table) (err error) {
	if confirm != IReallyWantToDropAllTables {
		return fmt.Errorf("bento: DropAll refused: pass bento.IReallyWantToDropAllTables to drop every table (got %q)", string(confirm))
	}
	all := append(append([]*schema.Table(nil), tables...), db.tables...)
	// Join tables and tables with foreign keys first: drop in reverse order
	// of dependency, and let CASCADE handle the rest on PostgreSQL.
	names := make([]string, 0, len(all))
	seen := map[string]bool{}
	for i := len(all) - 1; i >= 0; i-- {
		if n := all[i].Name; !seen[n] {
			seen[n] = true
			names = append(names, n)
		}
	}
	// MySQL and SQLite drop with foreign key checks off, a session setting:
	// it is turned back on however the drops end, and a connection on which
	// that fails is discarded rather than returned to the pool with checks
	// off.
	var checksOff, checksOn string
	switch db.db.Dialect {
	case dialect.MySQL:
		checksOff, checksOn = "SET FOREIGN_KEY_CHECKS = 0", "SET FOREIGN_KEY_CHECKS = 1"
	case dialect.SQLite:
		checksOff, checksOn = "PRAGMA foreign_keys = OFF", "PRAGMA foreign_keys = ON"
	}
	quoted := make([]string, len(names))
	for i, n := range names {
		quoted[i] = dialects.QuoteIdent(db.db.Dialect, n)
	}
	var drops []string
	switch db.db.Dialect {
	case dialect.SQLite:
		for _, q := range quoted {
			drops = append(drops, "DROP TABLE IF EXISTS "+q)
		}
	case dialect.Postgres:
		drops = append(drops, "DROP TABLE IF EXISTS "+strings.Join(quoted, ", ")+" CASCADE")
	default:
		drops = append(drops, "DROP TABLE IF EXISTS "+strings.Join(quoted, ", "))
	}
	// Session settings must stay on one connection.
	release, err := db.pool.Acquire(ctx, true)
	if err != nil {
		return fmt.Errorf("bento: DropAll: %w", err)
	}
	defer release()
	conn, err := db.db.DB.Conn(ctx)
	if err != nil {
		return fmt.Errorf("bento: DropAll: connecting: %w", err)
	}
	defer conn.Close()
	if checksOff != "" {
		if _, err := conn.ExecContext(ctx, checksOff); err != nil {
			return fmt.Errorf("bento: DropAll: %s: %w", checksOff, err)
		}
		defer func() {
			// Even when ctx has ended: the connection must not go back to
			// the pool with checks off.
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), db.cfg.DB.ConnectTimeout+time.Second)
			defer cancel()
			if _, onErr := conn.ExecContext(rctx, checksOn); onErr != nil {
				// Discard the connection: database/sql closes a Conn
				// whose Raw returns driver.ErrBadConn.
				_ = conn.Raw(func(any) error { return sqldriver.ErrBadConn })
				err = errors.Join(err, fmt.Errorf("bento: DropAll: %s (connection discarded): %w", checksOn, onErr))
			}
		}()
	}
	for _, s := range drops {
		if _, err := conn.ExecContext(ctx, s); err != nil {
			return fmt.Errorf("bento: DropAll: %s: %w", s, err)
		}
	}
	return nil
}
