// Package dialects turns Bento's configuration into driver settings, pool
// settings and capabilities, one file per database:
//
//   - PostgreSQL through pgx/v5/stdlib (postgres.go)
//   - MySQL and MariaDB through go-sql-driver/mysql (mysql.go)
//   - SQLite through ncruces/go-sqlite3, pure Go, no cgo (sqlite.go)
//
// Open returns a *Database: the database/sql pool, configured and not yet
// connected (connections open on first use), with the capabilities other
// packages branch on instead of testing the dialect name.
package dialects

import (
	"context"
	"database/sql"
	"log/slog"
	"net"
	"net/url"
	"strings"

	"github.com/bento-go/bento/config"
)

// Capabilities are the features of a database that Bento's layers use.
type Capabilities struct {
	// JSONType is the column type of JSON fields: "jsonb" or "json".
	JSONType string `json:"json_type"`
	// SkipLocked: SELECT … FOR UPDATE SKIP LOCKED (PostgreSQL; MariaDB
	// 10.6+, MySQL 8.0+).
	SkipLocked bool `json:"skip_locked"`
	// ListenNotify: LISTEN/NOTIFY (PostgreSQL).
	ListenNotify bool `json:"listen_notify"`
	// AdvisoryLocks: session-level named locks (pg_advisory_lock, GET_LOCK).
	AdvisoryLocks bool `json:"advisory_locks"`
	// Returning: INSERT … RETURNING (PostgreSQL; SQLite 3.35+; MariaDB 10.5+).
	Returning bool `json:"returning"`
	// ServerPool: pool size, overflow, recycle and pre-ping apply. False for
	// SQLite, an embedded file: a fixed pool of SQLiteMaxOpen connections kept
	// open, in place of a pool that closes each connection after use
	// (docs/architecture.md).
	ServerPool bool `json:"server_pool"`
	// TxIDStatus: a transaction's fate can be read after a lost COMMIT
	// (PostgreSQL pg_xact_status).
	TxIDStatus bool `json:"txid_status"`
	// SingleWriter: one writer at a time holds the database (SQLite); the
	// driver queues writers in Go instead of letting them sleep in the
	// busy handler.
	SingleWriter bool `json:"single_writer"`
}

// Options are what Open takes besides the configuration.
type Options struct {
	// DialContext replaces how connections to a server are dialed; tests use
	// it to cut connections at chosen moments. Nil uses the driver's dialer.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// Logger receives driver-level messages; nil discards them.
	Logger *slog.Logger
	// Settings are session settings every connection starts with
	// (PostgreSQL runtime parameters, sent at connect); they override
	// Bento's own and the URL's. Other dialects ignore them.
	Settings map[string]string
}

// Database is an opened, unconnected database/sql pool with its dialect.
type Database struct {
	// Dialect is the ent dialect name: postgres, mysql or sqlite3.
	Dialect string
	// DB is the pool, with its limits set.
	DB *sql.DB
	// MaxOpen is the pool's connection limit.
	MaxOpen int
	// KeepIdle is how many idle connections the pool keeps however long
	// they sit idle (DB_POOL_SIZE on a server; MaxOpen on SQLite). The
	// others are closed as they are returned, unless a driver.Pool with an
	// OverflowIdle keeps them for a while.
	KeepIdle int
	// Capabilities of the database.
	Capabilities Capabilities
	// VersionQuery returns the server version as one text column.
	VersionQuery string
}

// ServerVersion asks the database for its version.
func (d *Database) ServerVersion(ctx context.Context) (string, error) {
	var v string
	if err := d.DB.QueryRowContext(ctx, d.VersionQuery).Scan(&v); err != nil {
		return "", err
	}
	return v, nil
}

// Open opens the database cfg.URL names, with the pool and session settings
// of its dialect. It does not connect.
func Open(cfg config.DB, opts Options) (*Database, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	switch cfg.URL.Dialect() {
	case config.Postgres:
		return openPostgres(cfg, opts)
	case config.MySQL:
		return openMySQL(cfg, opts)
	case config.SQLite:
		return openSQLite(cfg, opts)
	default:
		return nil, urlError(cfg, "no dialect detected", "a URL that config.ParseURL accepts")
	}
}

// urlError reports a DB_URL the driver refused as a *config.Error, so that
// callers treat it as bad configuration.
func urlError(cfg config.DB, problem, accepts string) error {
	return &config.Error{Setting: "DB_URL", Source: "driver", Value: cfg.URL.String(), Problem: problem, Accepts: accepts}
}

// redactIn replaces the URL's password wherever a driver's message quotes it.
func redactIn(msg string, user *url.Userinfo) string {
	if user == nil {
		return msg
	}
	if pw, ok := user.Password(); ok && pw != "" {
		msg = strings.ReplaceAll(msg, pw, "xxxxx")
		if esc := url.QueryEscape(pw); esc != pw {
			msg = strings.ReplaceAll(msg, esc, "xxxxx")
		}
	}
	return msg
}

// serverPool applies the server pool settings: max open = pool size +
// overflow, max idle = pool size, max lifetime = recycle. It returns max
// open and max idle.
func serverPool(db *sql.DB, cfg config.DB) (maxOpen, keepIdle int) {
	maxOpen = cfg.MaxOpen()
	db.SetMaxOpenConns(maxOpen)
	db.SetMaxIdleConns(cfg.PoolSize)
	db.SetConnMaxLifetime(cfg.PoolRecycle)
	return maxOpen, cfg.PoolSize
}
