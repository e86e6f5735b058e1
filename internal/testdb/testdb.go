// Package testdb gives tests a fresh, real database per dialect: a new
// PostgreSQL database, a new MariaDB/MySQL database, or a SQLite file in a
// temporary directory, dropped when the test ends.
//
// Tests run against the machine's servers (127.0.0.1:5432 and
// 127.0.0.1:3306 by default; BENTO_TEST_POSTGRES_URL and
// BENTO_TEST_MYSQL_URL override the admin URLs). A server that does not
// answer fails the test with a message saying how to start it; nothing is
// skipped. BENTO_TEST_DIALECTS (e.g. "sqlite3,postgres") narrows the
// dialects Each runs.
package testdb

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/bento-go/bento/config"
)

// Dialect names.
const (
	Postgres = config.Postgres
	MySQL    = config.MySQL
	SQLite   = config.SQLite
)

// All is every dialect, in the order Each runs them.
var All = []string{SQLite, Postgres, MySQL}

// PostgresAdminURL is the URL used to create and drop test databases.
func PostgresAdminURL() string {
	if u := os.Getenv("BENTO_TEST_POSTGRES_URL"); u != "" {
		return u
	}
	return "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
}

// MySQLAdminURL is the URL used to create and drop test databases.
func MySQLAdminURL() string {
	if u := os.Getenv("BENTO_TEST_MYSQL_URL"); u != "" {
		return u
	}
	return "mysql://root@127.0.0.1:3306/test"
}

// dialectNames maps every name BENTO_TEST_DIALECTS accepts to its dialect.
var dialectNames = map[string]string{
	"sqlite": SQLite, "sqlite3": SQLite,
	"postgres": Postgres, "postgresql": Postgres, "pg": Postgres,
	"mysql": MySQL, "mariadb": MySQL,
}

// acceptedDialects is what a BENTO_TEST_DIALECTS error says is accepted.
const acceptedDialects = "a comma-separated list of sqlite (sqlite3), postgres (postgresql, pg), mysql (mariadb)"

// ParseDialects parses a BENTO_TEST_DIALECTS value: empty is All; any
// name it does not know, or a list that names no dialect, is an error that
// names the value and the accepted names (a typo must not run zero
// subtests and pass).
func ParseDialects(v string) ([]string, error) {
	if strings.TrimSpace(v) == "" {
		return All, nil
	}
	var out []string
	seen := map[string]bool{}
	for _, part := range strings.Split(v, ",") {
		name := strings.ToLower(strings.TrimSpace(part))
		if name == "" {
			continue
		}
		d, ok := dialectNames[name]
		if !ok {
			return nil, fmt.Errorf("testdb: BENTO_TEST_DIALECTS=%q: unknown dialect %q; accepted: %s", v, part, acceptedDialects)
		}
		if !seen[d] {
			seen[d] = true
			out = append(out, d)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("testdb: BENTO_TEST_DIALECTS=%q names no dialect; accepted: %s", v, acceptedDialects)
	}
	return out, nil
}

// Dialects returns the dialects to test: BENTO_TEST_DIALECTS or All. It
// panics, naming the value and the accepted names, if the variable holds
// an unknown name; Each fails the test instead.
func Dialects() []string {
	ds, err := ParseDialects(os.Getenv("BENTO_TEST_DIALECTS"))
	if err != nil {
		panic(err)
	}
	return ds
}

// Each runs fn as a subtest per dialect, each with a fresh database. An
// unknown name in BENTO_TEST_DIALECTS fails t.
func Each(t *testing.T, fn func(t *testing.T, cfg config.Config)) {
	t.Helper()
	ds, err := ParseDialects(os.Getenv("BENTO_TEST_DIALECTS"))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range ds {
		t.Run(d, func(t *testing.T) {
			fn(t, Config(t, d))
		})
	}
}

// Config returns the default configuration pointed at a fresh database of
// the dialect, dropped when t ends.
func Config(t testing.TB, dialect string) config.Config {
	t.Helper()
	cfg := config.Default()
	raw := URL(t, dialect)
	u, err := config.ParseURL(raw)
	if err != nil {
		t.Fatalf("testdb: %v", err)
	}
	cfg.DB.URL = u
	return cfg
}

// URL creates a fresh database of the dialect and returns its URL.
func URL(t testing.TB, dialect string) string {
	t.Helper()
	name := "bt_" + randomHex(t, 6)
	switch dialect {
	case SQLite:
		return "sqlite://" + filepath.Join(t.TempDir(), name+".db")
	case Postgres:
		admin := adminDB(t, "pgx", PostgresAdminURL(), "PostgreSQL",
			"pg_ctlcluster --skip-systemctl-redirect 15 main start")
		mustExec(t, admin, "CREATE DATABASE "+name)
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if _, err := admin.ExecContext(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
				t.Logf("testdb: dropping %s: %v", name, err)
			}
			admin.Close()
		})
		u, _ := url.Parse(PostgresAdminURL())
		u.Path = "/" + name
		return u.String()
	case MySQL:
		dsn := mysqlDSN(t, MySQLAdminURL())
		admin := adminDB(t, "mysql", dsn, "MariaDB",
			"start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd")
		mustExec(t, admin, "CREATE DATABASE "+name)
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if _, err := admin.ExecContext(ctx, "DROP DATABASE IF EXISTS "+name); err != nil {
				t.Logf("testdb: dropping %s: %v", name, err)
			}
			admin.Close()
		})
		u, _ := url.Parse(MySQLAdminURL())
		u.Path = "/" + name
		return u.String()
	default:
		t.Fatalf("testdb: unknown dialect %q; accepted: %v", dialect, All)
		return ""
	}
}

// Admin opens an admin connection to the dialect's server (not to a test
// database): PostgreSQL's postgres database, MySQL's test database.
func Admin(t testing.TB, dialect string) *sql.DB {
	t.Helper()
	var db *sql.DB
	switch dialect {
	case Postgres:
		db = adminDB(t, "pgx", PostgresAdminURL(), "PostgreSQL", "pg_ctlcluster --skip-systemctl-redirect 15 main start")
	case MySQL:
		db = adminDB(t, "mysql", mysqlDSN(t, MySQLAdminURL()), "MariaDB", "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd")
	default:
		t.Fatalf("testdb: Admin: %q has no server", dialect)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// OpenRaw opens a plain database/sql pool on a test database URL made by
// URL, for assertions that must not go through Bento.
func OpenRaw(t testing.TB, rawURL string) *sql.DB {
	t.Helper()
	u, err := config.ParseURL(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	var db *sql.DB
	switch u.Dialect() {
	case Postgres:
		db, err = sql.Open("pgx", rawURL)
	case MySQL:
		db, err = sql.Open("mysql", mysqlDSN(t, rawURL))
	default:
		t.Fatalf("testdb: OpenRaw: use bento for SQLite")
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func adminDB(t testing.TB, driverName, dsn, server, start string) *sql.DB {
	t.Helper()
	db, err := sql.Open(driverName, dsn)
	if err != nil {
		t.Fatalf("testdb: %s: %v", server, err)
	}
	db.SetMaxOpenConns(2)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		t.Fatalf("testdb: %s is unreachable (%v).\nStart it with: %s\nor run only some dialects with BENTO_TEST_DIALECTS=sqlite3", server, err, start)
	}
	return db
}

func mustExec(t testing.TB, db *sql.DB, q string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := db.ExecContext(ctx, q); err != nil {
		t.Fatalf("testdb: %s: %v", q, err)
	}
}

// mysqlDSN turns mysql://user:pass@host:port/db into a go-sql-driver DSN.
func mysqlDSN(t testing.TB, raw string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatalf("testdb: %v", err)
	}
	c := mysql.NewConfig()
	c.User = u.User.Username()
	c.Passwd, _ = u.User.Password()
	c.Net = "tcp"
	c.Addr = u.Host
	c.DBName = strings.TrimPrefix(u.Path, "/")
	c.ParseTime = true
	c.InterpolateParams = true
	return c.FormatDSN()
}

func randomHex(t testing.TB, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// Name returns a short label for a dialect, for messages.
func Name(dialect string) string {
	switch dialect {
	case SQLite:
		return "SQLite"
	case Postgres:
		return "PostgreSQL"
	case MySQL:
		return "MariaDB"
	}
	return fmt.Sprint(dialect)
}
