package dialects

import (
	"context"
	"strconv"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/bento-go/bento/config"
)

// postgresCapabilities are PostgreSQL's.
var postgresCapabilities = Capabilities{
	JSONType: "jsonb", SkipLocked: true, ListenNotify: true, AdvisoryLocks: true,
	Returning: true, ServerPool: true, TxIDStatus: true,
}

// PostgresConnConfig turns the configuration into pgx's: application_name,
// connect timeout, statement_timeout from DB_COMMAND_TIMEOUT, jit=off.
// These settings override the same parameters given in the URL's query.
func PostgresConnConfig(cfg config.DB, opts Options) (*pgx.ConnConfig, error) {
	u := cfg.URL.Server()
	if u == nil {
		return nil, urlError(cfg, "not a PostgreSQL URL", "postgres://user:pass@host:5432/db")
	}
	cc, err := pgx.ParseConfig(u.String())
	if err != nil {
		// pgx reads libpq's PG* environment variables too; its error may
		// quote the DSN, so only its redacted text is shown.
		return nil, urlError(cfg, "pgx refused the connection settings (DB_URL and any PG* environment variables): "+redactIn(err.Error(), u.User),
			"postgres://user:pass@host:5432/db?sslmode=disable with libpq parameters")
	}
	cc.ConnectTimeout = cfg.ConnectTimeout
	if cc.RuntimeParams == nil {
		cc.RuntimeParams = map[string]string{}
	}
	cc.RuntimeParams["application_name"] = cfg.ApplicationName
	cc.RuntimeParams["statement_timeout"] = strconv.FormatInt(cfg.CommandTimeout.Milliseconds(), 10)
	cc.RuntimeParams["jit"] = "off"
	for k, v := range opts.Settings {
		cc.RuntimeParams[k] = v
	}
	if opts.DialContext != nil {
		cc.DialFunc = opts.DialContext
	}
	return cc, nil
}

func openPostgres(cfg config.DB, opts Options) (*Database, error) {
	cc, err := PostgresConnConfig(cfg, opts)
	if err != nil {
		return nil, err
	}
	var dbOpts []stdlib.OptionOpenDB
	if !cfg.PoolPrePing {
		dbOpts = append(dbOpts, stdlib.OptionShouldPing(func(context.Context, stdlib.ShouldPingParams) bool { return false }))
	}
	// With pre-ping on, pgx's default applies: a connection idle for more
	// than 1 s is pinged when it is taken from the pool. Never a second
	// ping per call.
	db := stdlib.OpenDB(*cc, dbOpts...)
	maxOpen, keepIdle := serverPool(db, cfg)
	return &Database{
		Dialect: config.Postgres, DB: db, MaxOpen: maxOpen, KeepIdle: keepIdle,
		Capabilities: postgresCapabilities,
		VersionQuery: "SHOW server_version",
	}, nil
}
