package dialects

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/bento-go/bento/config"
)

// mysqlCapabilities are MySQL 8.0+'s and MariaDB 10.6+'s.
var mysqlCapabilities = Capabilities{
	JSONType: "json", SkipLocked: true, AdvisoryLocks: true, Returning: false, ServerPool: true,
}

// MySQLMaxLifetime caps a MySQL connection's lifetime below the 5 minutes
// after which some middleboxes drop idle connections (go-sql-driver's
// README).
const MySQLMaxLifetime = 4*time.Minute + 30*time.Second

// MySQLConfig turns the configuration into go-sql-driver's: parseTime,
// interpolateParams (without it every statement with arguments costs three
// round trips), dial timeout, read/write timeouts a little above the
// command timeout, and the application name as program_name. Query
// parameters of the URL (tls=…, charset=…) are kept.
func MySQLConfig(cfg config.DB, opts Options) (*mysql.Config, error) {
	u := cfg.URL.Server()
	if u == nil {
		return nil, urlError(cfg, "not a MySQL URL", "mysql://user:pass@host:3306/db")
	}
	mc, err := mysql.ParseDSN("/?" + u.RawQuery)
	if err != nil {
		return nil, urlError(cfg, "invalid parameter: "+redactIn(err.Error(), u.User), "go-sql-driver/mysql DSN parameters such as tls=true, charset=utf8mb4")
	}
	mc.User = u.User.Username()
	mc.Passwd, _ = u.User.Password()
	mc.Net = "tcp"
	port := u.Port()
	if port == "" {
		port = "3306"
	}
	mc.Addr = net.JoinHostPort(u.Hostname(), port)
	mc.DBName = strings.TrimPrefix(u.Path, "/")
	mc.ParseTime = true
	mc.InterpolateParams = true
	mc.Timeout = cfg.ConnectTimeout
	if cfg.CommandTimeout > 0 {
		mc.ReadTimeout = cfg.CommandTimeout + 5*time.Second
		mc.WriteTimeout = cfg.CommandTimeout + 5*time.Second
	}
	attr := "program_name:" + cfg.ApplicationName
	if mc.ConnectionAttributes != "" {
		attr = mc.ConnectionAttributes + "," + attr
	}
	mc.ConnectionAttributes = attr
	if opts.DialContext != nil {
		mc.DialFunc = opts.DialContext
	}
	return mc, nil
}

func openMySQL(cfg config.DB, opts Options) (*Database, error) {
	mc, err := MySQLConfig(cfg, opts)
	if err != nil {
		return nil, err
	}
	conn, err := mysql.NewConnector(mc)
	if err != nil {
		u := cfg.URL.Server()
		return nil, urlError(cfg, redactIn(err.Error(), u.User), "mysql://user:pass@host:3306/db")
	}
	db := sql.OpenDB(&mysqlConnector{Connector: conn, timeout: cfg.CommandTimeout})
	maxOpen, keepIdle := serverPool(db, cfg)
	life := cfg.PoolRecycle
	if life <= 0 || life > MySQLMaxLifetime {
		life = MySQLMaxLifetime
	}
	db.SetConnMaxLifetime(life)
	return &Database{
		Dialect: config.MySQL, DB: db, MaxOpen: maxOpen, KeepIdle: keepIdle,
		Capabilities: mysqlCapabilities,
		VersionQuery: "SELECT VERSION()",
	}, nil
}

// mysqlConnector sets the server-side statement timeout on each new
// connection: max_statement_time (seconds) on MariaDB, max_execution_time
// (milliseconds, SELECT only) on MySQL. It learns the flavour from the first
// connection.
type mysqlConnector struct {
	driver.Connector
	timeout time.Duration
	flavour atomic.Int32 // 0 unknown, 1 MariaDB, 2 MySQL, 3 neither works
}

func (c *mysqlConnector) Connect(ctx context.Context) (driver.Conn, error) {
	conn, err := c.Connector.Connect(ctx)
	if err != nil || c.timeout <= 0 {
		return conn, err
	}
	ex, ok := conn.(driver.ExecerContext)
	if !ok {
		return conn, nil
	}
	stmts := []struct {
		flavour int32
		sql     string
	}{
		{1, fmt.Sprintf("SET SESSION max_statement_time = %g", c.timeout.Seconds())},
		{2, fmt.Sprintf("SET SESSION max_execution_time = %d", c.timeout.Milliseconds())},
	}
	known := c.flavour.Load()
	for _, s := range stmts {
		if known != 0 && known != s.flavour {
			continue
		}
		_, err := ex.ExecContext(ctx, s.sql, nil)
		if err == nil {
			c.flavour.Store(s.flavour)
			return conn, nil
		}
		var me *mysql.MySQLError
		if !errors.As(err, &me) || me.Number != 1193 { // 1193: unknown system variable
			conn.Close()
			return nil, err
		}
	}
	c.flavour.Store(3)
	return conn, nil
}
