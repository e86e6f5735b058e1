package e2e

import (
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	_ "github.com/go-sql-driver/mysql"
	_ "github.com/jackc/pgx/v5/stdlib"
)

// pgBin is the directory of PostgreSQL's server programs.
func pgBin() string {
	if b := os.Getenv("PGBIN"); b != "" {
		return b
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	if len(matches) > 0 {
		return matches[len(matches)-1]
	}
	return "/usr/lib/postgresql/15/bin"
}

// PG is a private PostgreSQL cluster this test may stop, restart and
// crash: initdb into a temporary directory, run as the postgres user on a
// free port.
type PG struct {
	t    testing.TB
	Port int
	dir  string
}

// StartPG creates and starts a private cluster; it is removed at the end
// of the test.
func StartPG(t testing.TB) *PG {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "bento-e2e-pg-")
	if err != nil {
		t.Fatal(err)
	}
	pg := &PG{t: t, Port: freePort(t), dir: dir}
	run(t, "chown", "postgres:postgres", dir)
	runAs(t, "postgres", filepath.Join(pgBin(), "initdb"), "-D", pg.data(), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
	conf := fmt.Sprintf(`
listen_addresses = '127.0.0.1'
port = %d
unix_socket_directories = '%s'
max_connections = 100
shared_buffers = 64MB
fsync = off
synchronous_commit = on
full_page_writes = off
log_min_messages = warning
`, pg.Port, dir)
	f, err := os.OpenFile(filepath.Join(pg.data(), "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(conf)
	f.Close()
	pg.Start()
	t.Cleanup(func() {
		pg.ctl("stop", "-m", "immediate")
		os.RemoveAll(dir)
	})
	return pg
}

func (pg *PG) data() string { return filepath.Join(pg.dir, "data") }

func (pg *PG) ctl(args ...string) error {
	full := append([]string{"-u", "postgres", "--", filepath.Join(pgBin(), "pg_ctl"), "-D", pg.data(), "-l", filepath.Join(pg.dir, "log")}, args...)
	out, err := exec.Command("runuser", full...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("pg_ctl %v: %v: %s", args, err, out)
	}
	return nil
}

// Start starts the cluster and waits for it.
func (pg *PG) Start() {
	pg.t.Helper()
	if err := pg.ctl("start", "-w", "-t", "60"); err != nil {
		pg.t.Fatal(err)
	}
}

// Stop stops it in mode (fast, immediate, smart).
func (pg *PG) Stop(mode string) {
	pg.t.Helper()
	if err := pg.ctl("stop", "-m", mode, "-w", "-t", "60"); err != nil {
		pg.t.Fatal(err)
	}
}

// Restart restarts it in mode and returns how long the server was gone
// (until it accepts connections again).
func (pg *PG) Restart(mode string) time.Duration {
	pg.t.Helper()
	start := time.Now()
	if err := pg.ctl("restart", "-m", mode, "-w", "-t", "60"); err != nil {
		pg.t.Fatal(err)
	}
	return time.Since(start)
}

// URL returns the URL of database db on the cluster.
func (pg *PG) URL(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", pg.Port, db)
}

// DB opens database db on the cluster.
func (pg *PG) DB(db string) *sql.DB {
	pg.t.Helper()
	c, err := sql.Open("pgx", pg.URL(db))
	if err != nil {
		pg.t.Fatal(err)
	}
	pg.t.Cleanup(func() { c.Close() })
	return c
}

// CreateDB creates a database and returns its URL.
func (pg *PG) CreateDB(name string) string {
	pg.t.Helper()
	if _, err := pg.DB("postgres").Exec("CREATE DATABASE " + name); err != nil {
		pg.t.Fatal(err)
	}
	return pg.URL(name)
}

// MariaDB is a private MariaDB server this test may restart and kill.
type MariaDB struct {
	t    testing.TB
	Port int
	dir  string
	cmd  *exec.Cmd
	done chan struct{}
}

// StartMariaDB installs and starts a private server (root, no password).
func StartMariaDB(t testing.TB) *MariaDB {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "bento-e2e-mdb-")
	if err != nil {
		t.Fatal(err)
	}
	m := &MariaDB{t: t, Port: freePort(t), dir: dir}
	run(t, "mariadb-install-db", "--no-defaults", "--datadir="+filepath.Join(dir, "data"), "--user=root",
		"--auth-root-authentication-method=normal", "--skip-test-db")
	m.Start()
	t.Cleanup(func() {
		m.Kill9()
		os.RemoveAll(dir)
	})
	return m
}

// Start starts the server and waits until it answers.
func (m *MariaDB) Start() {
	m.t.Helper()
	m.cmd = exec.Command("/usr/sbin/mariadbd", "--no-defaults", "--datadir="+filepath.Join(m.dir, "data"),
		"--port="+strconv.Itoa(m.Port), "--bind-address=127.0.0.1", "--socket="+filepath.Join(m.dir, "sock"),
		"--user=root", "--log-error="+filepath.Join(m.dir, "err.log"), "--innodb-buffer-pool-size=64M",
		"--max-connections=200")
	if err := m.cmd.Start(); err != nil {
		m.t.Fatal(err)
	}
	m.done = make(chan struct{})
	go func(c *exec.Cmd, done chan struct{}) { c.Wait(); close(done) }(m.cmd, m.done)
	deadline := time.Now().Add(60 * time.Second)
	for {
		db, err := sql.Open("mysql", fmt.Sprintf("root@tcp(127.0.0.1:%d)/", m.Port))
		if err == nil {
			err = db.Ping()
			db.Close()
		}
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(m.dir, "err.log"))
			m.t.Fatalf("e2e: private MariaDB did not start: %v\n%s", err, log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Stop shuts the server down cleanly (SIGTERM) and waits.
func (m *MariaDB) Stop() {
	if m.cmd == nil {
		return
	}
	_ = m.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-m.done:
	case <-time.After(60 * time.Second):
		_ = m.cmd.Process.Kill()
		<-m.done
	}
	m.cmd = nil
}

// Kill9 kills the server (a crash).
func (m *MariaDB) Kill9() {
	if m.cmd == nil {
		return
	}
	_ = m.cmd.Process.Kill()
	<-m.done
	m.cmd = nil
}

// Restart stops (or, with crash, kills) and starts the server again and
// returns how long it was gone.
func (m *MariaDB) Restart(crash bool) time.Duration {
	m.t.Helper()
	start := time.Now()
	if crash {
		m.Kill9()
	} else {
		m.Stop()
	}
	m.Start()
	return time.Since(start)
}

// URL returns the URL of database db (created if missing).
func (m *MariaDB) URL(db string) string {
	m.t.Helper()
	c, err := sql.Open("mysql", fmt.Sprintf("root@tcp(127.0.0.1:%d)/", m.Port))
	if err != nil {
		m.t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Exec("CREATE DATABASE IF NOT EXISTS " + db); err != nil {
		m.t.Fatal(err)
	}
	return fmt.Sprintf("mysql://root@127.0.0.1:%d/%s", m.Port, db)
}

// DB opens database db with go-sql-driver.
func (m *MariaDB) DB(db string) *sql.DB {
	m.t.Helper()
	c, err := sql.Open("mysql", fmt.Sprintf("root@tcp(127.0.0.1:%d)/%s?parseTime=true", m.Port, db))
	if err != nil {
		m.t.Fatal(err)
	}
	m.t.Cleanup(func() { c.Close() })
	return c
}

func run(t testing.TB, name string, args ...string) {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("e2e: %s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

func runAs(t testing.TB, user, name string, args ...string) {
	t.Helper()
	run(t, "runuser", append([]string{"-u", user, "--", name}, args...)...)
}
