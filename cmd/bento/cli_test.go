package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	_ "github.com/ncruces/go-sqlite3/driver"

	"github.com/bento-go/bento/internal/testdb"
	"github.com/bento-go/bento/outbox"
)

// TestMain fails the run if a test created the default SQLite file
// (sqlite://bento.db) in the package directory: every test must set DB_URL
// to a file of its own.
//
// It also clears the PG* variables of the test process: pgx reads them
// (PGSSLMODE, PGCONNECT_TIMEOUT, PGPASSWORD, ...) from os.Environ, outside
// the environment the tests hand to run, so a developer's PGSSLMODE=require
// would otherwise change what the in-process tests observe.
func TestMain(m *testing.M) {
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "PG") {
			os.Unsetenv(k)
		}
	}
	_, err := os.Stat("bento.db")
	existed := err == nil
	code := m.Run()
	if !existed {
		if _, err := os.Stat("bento.db"); err == nil {
			fmt.Fprintln(os.Stderr, "cli_test: a test created bento.db in the working directory; every test must set DB_URL")
			for _, f := range []string{"bento.db", "bento.db-wal", "bento.db-shm"} {
				os.Remove(f)
			}
			code = 1
		}
	}
	os.Exit(code)
}

// result is what one run of the CLI printed and returned.
type result struct {
	code           int
	stdout, stderr string
	elapsed        time.Duration
}

func (r result) String() string {
	return fmt.Sprintf("exit %d after %s\nstdout:\n%s\nstderr:\n%s", r.code, r.elapsed.Round(time.Millisecond), r.stdout, r.stderr)
}

// runCLI runs the CLI in-process with exactly the environment given
// (KEY=value strings), never the developer's.
func runCLI(t *testing.T, environ []string, args ...string) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	envCopy := append([]string(nil), environ...)
	e := env{stdout: &stdout, stderr: &stderr, environ: func() []string { return append([]string(nil), envCopy...) }}
	start := time.Now()
	code := run(context.Background(), args, e)
	return result{code: code, stdout: stdout.String(), stderr: stderr.String(), elapsed: time.Since(start)}
}

// sqliteURL returns the URL of a new SQLite file in a temporary directory.
func sqliteURL(t *testing.T) string {
	t.Helper()
	return "sqlite://" + filepath.Join(t.TempDir(), "b.db")
}

// dialectURL returns a fresh database of the dialect; SQLite is a temporary
// file.
func dialectURL(t *testing.T, dialect string) string {
	t.Helper()
	if dialect == testdb.SQLite {
		return sqliteURL(t)
	}
	return testdb.URL(t, dialect)
}

// assertOneLine fails unless s is exactly one non-empty line ending in a
// newline.
func assertOneLine(t *testing.T, what, s string) {
	t.Helper()
	if strings.Count(s, "\n") != 1 || !strings.HasSuffix(s, "\n") || strings.TrimSpace(s) == "" {
		t.Errorf("%s: want exactly one line, got %d newline(s):\n%q", what, strings.Count(s, "\n"), s)
	}
}

func randomHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// allDialects are the dialects every per-dialect test covers. The brief is
// all three, always: a server that does not answer fails the test.
var allDialects = []string{testdb.SQLite, testdb.Postgres, testdb.MySQL}

func TestHealthHealthy(t *testing.T) {
	t.Parallel()
	for _, d := range allDialects {
		t.Run(d, func(t *testing.T) {
			t.Parallel()
			u := dialectURL(t, d)
			r := runCLI(t, []string{"DB_URL=" + u}, "health")
			if r.code != exitOK {
				t.Fatalf("want exit 0\n%s", r)
			}
			if want := "healthy: " + d + " at "; !strings.HasPrefix(r.stdout, want) {
				t.Errorf("stdout should start with %q\n%s", want, r)
			}
			assertOneLine(t, "stdout", r.stdout)
			if r.stderr != "" {
				t.Errorf("stderr should be empty\n%s", r)
			}
		})
	}
}

func TestHealthUnreachable(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		environ []string
		args    []string
		bound   time.Duration // DB_CONNECT_TIMEOUT + 1s
	}{
		{"postgres flag default timeout", nil, []string{"health", "--db-url", "postgres://127.0.0.1:1/x"}, 11 * time.Second},
		{"postgres flag DB_CONNECT_TIMEOUT=2", []string{"DB_CONNECT_TIMEOUT=2"}, []string{"health", "--db-url", "postgres://127.0.0.1:1/x"}, 3 * time.Second},
		{"postgres env DB_CONNECT_TIMEOUT=2s", []string{"DB_URL=postgres://127.0.0.1:1/x?sslmode=disable", "DB_CONNECT_TIMEOUT=2s"}, []string{"health"}, 3 * time.Second},
		{"mysql flag default timeout", nil, []string{"health", "--db-url", "mysql://root@127.0.0.1:1/x"}, 11 * time.Second},
		{"mysql flag DB_CONNECT_TIMEOUT=2", []string{"DB_CONNECT_TIMEOUT=2"}, []string{"health", "--db-url=mysql://root@127.0.0.1:1/x"}, 3 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := runCLI(t, tc.environ, tc.args...)
			t.Logf("took %s", r.elapsed.Round(time.Microsecond))
			if r.code != exitFail {
				t.Fatalf("want exit 1\n%s", r)
			}
			if r.elapsed > tc.bound {
				t.Errorf("took %s, want at most %s\n%s", r.elapsed, tc.bound, r)
			}
			assertOneLine(t, "stderr", r.stderr)
			if !strings.HasPrefix(r.stderr, "bento health: ") || !strings.Contains(r.stderr, "127.0.0.1:1") {
				t.Errorf("stderr should start with \"bento health: \" and name 127.0.0.1:1\n%s", r)
			}
			if r.stdout != "" {
				t.Errorf("stdout should be empty\n%s", r)
			}
		})
	}
}

func TestConfigErrorsExit2(t *testing.T) {
	t.Parallel()
	schemes := []string{"postgres://", "mysql://", "sqlite://"}
	tests := []struct {
		name    string
		environ []string
		args    []string
		want    []string // substrings of the one stderr line
	}{
		{"DB_POOL_SIZE=abc", []string{"DB_POOL_SIZE=abc"}, []string{"info"}, []string{"DB_POOL_SIZE", `"abc"`, "environment", "accepted"}},
		{"--db-pool-size=-1", nil, []string{"info", "--db-pool-size=-1"}, []string{"DB_POOL_SIZE", "--db-pool-size", `"-1"`}},
		{"--db-pool-size -1 overrides a good env", []string{"DB_POOL_SIZE=3"}, []string{"info", "--db-pool-size", "-1"}, []string{"DB_POOL_SIZE", "--db-pool-size"}},
		{"DB_URL=oracle://x", []string{"DB_URL=oracle://x"}, []string{"info"}, append([]string{"DB_URL", "oracle", "accepted"}, schemes...)},
		{"--db-url=oracle://x", nil, []string{"info", "--db-url=oracle://x"}, append([]string{"DB_URL", "--db-url", "oracle"}, schemes...)},
		{"DB_POOL_TIMEOUT=soon", []string{"DB_POOL_TIMEOUT=soon"}, []string{"info"}, []string{"DB_POOL_TIMEOUT", `"soon"`, "accepted"}},
		{"DB_POOL_TIMEOUT=soon on health", []string{"DB_POOL_TIMEOUT=soon"}, []string{"health"}, []string{"bento health:", "DB_POOL_TIMEOUT"}},
		{"DB_POOL_TIMEOUT=soon on migrate", []string{"DB_POOL_TIMEOUT=soon"}, []string{"migrate"}, []string{"bento migrate:", "DB_POOL_TIMEOUT"}},
		{"DB_CONNECT_TIMEOUT=0", []string{"DB_CONNECT_TIMEOUT=0"}, []string{"health"}, []string{"DB_CONNECT_TIMEOUT", "> 0"}},
		{"DB_ECHO=maybe", []string{"DB_ECHO=maybe"}, []string{"info"}, []string{"DB_ECHO", `"maybe"`}},
		{"two bad settings on one line", []string{"DB_POOL_SIZE=abc", "DB_POOL_TIMEOUT=soon"}, []string{"info"}, []string{"DB_POOL_SIZE", "DB_POOL_TIMEOUT"}},
		{"--log-level=loud", nil, []string{"info", "--log-level=loud"}, []string{"--log-level", "loud", "accepted"}},
		{"--timeout=abc", nil, []string{"health", "--timeout=abc"}, []string{"bento health:", "timeout", "abc"}},
		{"--json=maybe", nil, []string{"info", "--json=maybe"}, []string{"bento info:", "json", "maybe"}},
		{"undefined flag", nil, []string{"info", "--bogus"}, []string{"bento info:", "bogus"}},
		{"missing config file", nil, []string{"info", "--config", "/nonexistent/bento-cli-test.yaml"}, []string{"/nonexistent/bento-cli-test.yaml"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := runCLI(t, tc.environ, tc.args...)
			if r.code != exitConfig {
				t.Fatalf("want exit 2\n%s", r)
			}
			assertOneLine(t, "stderr", r.stderr)
			for _, w := range tc.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr should contain %q\n%s", w, r)
				}
			}
			if r.stdout != "" {
				t.Errorf("stdout should be empty\n%s", r)
			}
		})
	}
}

// decodeInfo decodes the one JSON object info --json prints.
func decodeInfo(t *testing.T, r result) map[string]any {
	t.Helper()
	assertOneLine(t, "stdout", r.stdout)
	dec := json.NewDecoder(strings.NewReader(r.stdout))
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		t.Fatalf("stdout is not a JSON object: %v\n%s", err, r)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		t.Fatalf("stdout holds more than one JSON value\n%s", r)
	}
	return m
}

func TestInfoJSON(t *testing.T) {
	t.Parallel()
	for _, d := range allDialects {
		t.Run(d, func(t *testing.T) {
			t.Parallel()
			u := dialectURL(t, d)
			r := runCLI(t, []string{"DB_URL=" + u}, "info", "--json")
			if r.code != exitOK {
				t.Fatalf("want exit 0\n%s", r)
			}
			if r.stderr != "" {
				t.Errorf("stderr should be empty\n%s", r)
			}
			m := decodeInfo(t, r)
			for _, k := range []string{"dialect", "server_version", "url", "pool"} {
				if _, ok := m[k]; !ok {
					t.Errorf("key %q missing\n%s", k, r)
				}
			}
			if m["dialect"] != d {
				t.Errorf("dialect = %v, want %q", m["dialect"], d)
			}
			if v, _ := m["server_version"].(string); v == "" {
				t.Errorf("server_version = %v, want a non-empty string", m["server_version"])
			}
			// The test URLs carry no password: the redacted URL is the URL.
			if m["url"] != u {
				t.Errorf("url = %v, want %q", m["url"], u)
			}
			pool, _ := m["pool"].(map[string]any)
			if len(pool) == 0 {
				t.Errorf("pool = %v, want a non-empty object", m["pool"])
			}
			if n, _ := pool["max_open"].(float64); n < 1 {
				t.Errorf("pool.max_open = %v, want >= 1", pool["max_open"])
			}
		})
	}
}

func TestInfoText(t *testing.T) {
	t.Parallel()
	u := sqliteURL(t)
	r := runCLI(t, []string{"DB_URL=" + u}, "info")
	if r.code != exitOK {
		t.Fatalf("want exit 0\n%s", r)
	}
	for _, w := range []string{"dialect:        sqlite3\n", "server version: 3.", "url:            " + u + "\n", "pool:           max 2,"} {
		if !strings.Contains(r.stdout, w) {
			t.Errorf("stdout should contain %q\n%s", w, r)
		}
	}
	if r.stderr != "" {
		t.Errorf("stderr should be empty\n%s", r)
	}
}

// TestPasswordNeverPrinted runs every command with a password in DB_URL and
// checks that it appears nowhere in the output. The server uses trust auth:
// the password is not checked, but it is in the URL the CLI is given.
func TestPasswordNeverPrinted(t *testing.T) {
	t.Parallel()
	suffix := randomHex(t, 4)
	role := "bt_pw_" + suffix
	password := "S3cret-" + suffix

	admin := testdb.Admin(t, testdb.Postgres)
	ctx := context.Background()
	if _, err := admin.ExecContext(ctx, fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD '%s'", role, password)); err != nil {
		t.Fatalf("creating role %s: %v", role, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := admin.ExecContext(ctx, "DROP ROLE IF EXISTS "+role); err != nil {
			t.Errorf("dropping role %s: %v", role, err)
		}
	})
	fresh, err := url.Parse(testdb.URL(t, testdb.Postgres)) // dropped before the role
	if err != nil {
		t.Fatal(err)
	}
	// PostgreSQL 15 grants no CREATE on schema public: let the role migrate.
	if _, err := testdb.OpenRaw(t, fresh.String()).ExecContext(ctx, "GRANT CREATE ON SCHEMA public TO "+role); err != nil {
		t.Fatalf("granting CREATE to %s: %v", role, err)
	}
	good := fmt.Sprintf("postgres://%s:%s@127.0.0.1:5432%s?sslmode=disable", role, password, fresh.Path)
	unreachable := fmt.Sprintf("postgres://%s:%s@127.0.0.1:1/x?sslmode=disable", role, password)

	noLeak := func(t *testing.T, r result) {
		t.Helper()
		for what, s := range map[string]string{"stdout": r.stdout, "stderr": r.stderr} {
			// "S3cret" alone also catches a truncated or re-encoded password.
			if strings.Contains(s, password) || strings.Contains(s, "S3cret") {
				t.Errorf("the password appears on %s\n%s", what, r)
			}
		}
	}

	t.Run("info --json", func(t *testing.T) {
		r := runCLI(t, []string{"DB_URL=" + good}, "info", "--json")
		if r.code != exitOK {
			t.Fatalf("want exit 0\n%s", r)
		}
		noLeak(t, r)
		m := decodeInfo(t, r)
		u, _ := m["url"].(string)
		if !strings.Contains(u, role+":xxxxx@") {
			t.Errorf("url = %q, want the user with a redacted password", u)
		}
		settings, _ := m["settings"].(map[string]any)
		if s, _ := settings["DB_URL"].(string); !strings.Contains(s, "xxxxx") {
			t.Errorf("settings.DB_URL = %q, want it redacted", s)
		}
	})

	tests := []struct {
		name    string
		environ []string
		args    []string
		code    int
	}{
		{"info text", []string{"DB_URL=" + good}, []string{"info"}, exitOK},
		{"health", []string{"DB_URL=" + good}, []string{"health"}, exitOK},
		{"migrate with DB_ECHO and debug logs", []string{"DB_URL=" + good, "DB_ECHO=true"}, []string{"migrate", "--log-level=debug"}, exitOK},
		{"info --db-url flag", nil, []string{"info", "--db-url", good}, exitOK},
		{"info text unreachable", []string{"DB_URL=" + unreachable}, []string{"info"}, exitFail},
		{"health unreachable", []string{"DB_URL=" + unreachable}, []string{"health"}, exitFail},
		{"health unreachable flag", nil, []string{"health", "--db-url=" + unreachable}, exitFail},
		{"migrate unreachable", []string{"DB_URL=" + unreachable}, []string{"migrate"}, exitFail},
		{"health unreachable mysql", []string{"DB_URL=mysql://" + role + ":" + password + "@127.0.0.1:1/x"}, []string{"health"}, exitFail},
		{"password in query", []string{"DB_URL=postgres://" + role + "@127.0.0.1:1/x?sslmode=disable&password=" + password}, []string{"health"}, exitFail},
		{"bad port (config error)", []string{"DB_URL=postgres://" + role + ":" + password + "@127.0.0.1:badport/x"}, []string{"health"}, exitConfig},
		{"bad setting beside the URL", []string{"DB_URL=" + good, "DB_POOL_SIZE=abc"}, []string{"info"}, exitConfig},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := runCLI(t, tc.environ, tc.args...)
			if r.code != tc.code {
				t.Fatalf("want exit %d\n%s", tc.code, r)
			}
			noLeak(t, r)
			if tc.code != exitOK {
				assertOneLine(t, "stderr", r.stderr)
			}
		})
	}
}

func TestHelp(t *testing.T) {
	t.Parallel()
	settingFlags := []string{"--db-url", "--db-pool-size", "--db-pool-timeout", "--db-connect-timeout", "--config", "--log-level"}
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"top --help", []string{"--help"}, []string{"Usage:", "migrate", "health", "info", "version", "--help"}},
		{"top -h", []string{"-h"}, []string{"Usage:", "migrate", "health", "info", "version"}},
		{"top help", []string{"help"}, []string{"Usage:", "migrate", "health", "info", "version"}},
		{"migrate --help", []string{"migrate", "--help"}, append([]string{"bento migrate"}, settingFlags...)},
		{"health --help", []string{"health", "--help"}, append([]string{"bento health", "--timeout"}, settingFlags...)},
		{"info --help", []string{"info", "--help"}, append([]string{"bento info", "--json"}, settingFlags...)},
		{"version --help", []string{"version", "--help"}, append([]string{"bento version"}, settingFlags...)},
		{"info -h", []string{"info", "-h"}, []string{"bento info", "--json", "--db-url"}},
		// --help wins over a bad environment: it must not load the config.
		{"info --help with a bad setting", []string{"info", "--help"}, []string{"--json"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := runCLI(t, []string{"DB_POOL_SIZE=abc"}, tc.args...)
			if r.code != exitOK {
				t.Fatalf("want exit 0\n%s", r)
			}
			for _, w := range tc.want {
				if !strings.Contains(r.stdout, w) {
					t.Errorf("stdout should contain %q\n%s", w, r)
				}
			}
			if r.stderr != "" {
				t.Errorf("stderr should be empty\n%s", r)
			}
		})
	}
}

// TestHelpShowsDefaults: every flag of bench and serve's --addr show
// their default in the help.
func TestHelpShowsDefaults(t *testing.T) {
	t.Parallel()
	for _, cmd := range []string{"bench", "serve", "relay", "outbox"} {
		r := runCLI(t, nil, cmd, "--help")
		if r.code != exitOK {
			t.Fatalf("%s --help: want exit 0\n%s", cmd, r)
		}
		_, list, ok := strings.Cut(r.stdout, "\nFlags:\n")
		if !ok {
			t.Fatalf("%s --help has no Flags section\n%s", cmd, r)
		}
		lines := strings.Split(list, "\n")
		flags := 0
		for i, l := range lines {
			if !strings.HasPrefix(l, "  --") || i+1 == len(lines) {
				continue
			}
			flags++
			if !strings.Contains(lines[i+1], "default") {
				t.Errorf("%s --help: %s shows no default: %q", cmd, strings.TrimSpace(l), lines[i+1])
			}
		}
		if flags < 10 {
			t.Errorf("%s --help lists %d flags\n%s", cmd, flags, r)
		}
	}
	for cmd, want := range map[string][]string{
		"bench": {"(default 10s)", "(default 8)", "(default 5)", "(default -1)", "(default 1m0s)", `default "sqlite://bento-bench.db"`},
		"serve": {"(default 127.0.0.1:8080)", `default "sqlite://bento.db"`},
	} {
		r := runCLI(t, nil, cmd, "--help")
		for _, w := range want {
			if !strings.Contains(r.stdout, w) {
				t.Errorf("%s --help should contain %q\n%s", cmd, w, r)
			}
		}
	}
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"unknown command", []string{"frobnicate"}, []string{"frobnicate", commandNames(commands())}},
		{"unknown command with flags", []string{"frobnicate", "--db-url", "x"}, []string{"frobnicate"}},
		{"positional after info", []string{"info", "extra"}, []string{"bento info:", `"extra"`}},
		{"positional after flags", []string{"health", "--timeout=1s", "now"}, []string{"bento health:", `"now"`}},
		{"positional after version", []string{"version", "extra"}, []string{"bento version:", `"extra"`}},
		{"positional after migrate", []string{"migrate", "up"}, []string{"bento migrate:", `"up"`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := runCLI(t, nil, tc.args...)
			if r.code != exitConfig {
				t.Fatalf("want exit 2\n%s", r)
			}
			assertOneLine(t, "stderr", r.stderr)
			for _, w := range tc.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr should contain %q\n%s", w, r)
				}
			}
			if r.stdout != "" {
				t.Errorf("stdout should be empty\n%s", r)
			}
		})
	}

	t.Run("no arguments", func(t *testing.T) {
		t.Parallel()
		r := runCLI(t, nil)
		if r.code != exitConfig {
			t.Fatalf("want exit 2\n%s", r)
		}
		if !strings.Contains(r.stdout+r.stderr, "Usage:") {
			t.Errorf("the usage should be printed\n%s", r)
		}
	})
}

// tablesPresent returns which of names exist as tables in the database.
func tablesPresent(t *testing.T, dialect, rawURL string, names ...string) map[string]bool {
	t.Helper()
	var db *sql.DB
	var q string
	switch dialect {
	case testdb.SQLite:
		var err error
		db, err = sql.Open("sqlite3", "file:"+strings.TrimPrefix(rawURL, "sqlite://"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		q = "SELECT name FROM sqlite_master WHERE type = 'table'"
	case testdb.Postgres:
		db = testdb.OpenRaw(t, rawURL)
		q = "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
	case testdb.MySQL:
		db = testdb.OpenRaw(t, rawURL)
		q = "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rows, err := db.QueryContext(ctx, q)
	if err != nil {
		t.Fatalf("listing tables: %v", err)
	}
	defer rows.Close()
	have := map[string]bool{}
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		have[n] = true
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, n := range names {
		out[n] = have[n]
	}
	return out
}

func TestMigrate(t *testing.T) {
	t.Parallel()
	for _, d := range allDialects {
		t.Run(d, func(t *testing.T) {
			t.Parallel()
			u := dialectURL(t, d)
			before := tablesPresent(t, d, u, "orders", "order_lines")
			if before["orders"] || before["order_lines"] {
				t.Fatalf("fresh database already has tables: %v", before)
			}
			for i := 1; i <= 2; i++ {
				r := runCLI(t, []string{"DB_URL=" + u}, "migrate")
				t.Logf("migrate #%d took %s", i, r.elapsed.Round(time.Microsecond))
				if r.code != exitOK {
					t.Fatalf("migrate #%d: want exit 0\n%s", i, r)
				}
				if r.stdout != "" {
					t.Errorf("migrate #%d: stdout should be empty\n%s", i, r)
				}
				if !strings.Contains(r.stderr, "migrated") || !strings.Contains(r.stderr, "dialect="+d) {
					t.Errorf("migrate #%d: stderr should log the migration\n%s", i, r)
				}
			}
			for name, ok := range tablesPresent(t, d, u, "orders", "order_lines") {
				if !ok {
					t.Errorf("table %s does not exist after migrate", name)
				}
			}
		})
	}
}

func TestVersion(t *testing.T) {
	t.Parallel()
	r := runCLI(t, nil, "version")
	if r.code != exitOK {
		t.Fatalf("want exit 0\n%s", r)
	}
	t.Logf("version: %q", r.stdout)
	if !strings.HasPrefix(r.stdout, "bento ") {
		t.Errorf("stdout should start with \"bento \"\n%s", r)
	}
	assertOneLine(t, "stdout", r.stdout)
	if r.stderr != "" {
		t.Errorf("stderr should be empty\n%s", r)
	}
}

func TestConfigPrecedence(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	fileURL := "sqlite://" + filepath.Join(dir, "from-file.db")
	envURL := "sqlite://" + filepath.Join(dir, "from-env.db")
	flagURL := "sqlite://" + filepath.Join(dir, "from-flag.db")

	flat := filepath.Join(dir, "flat.yaml")
	nested := filepath.Join(dir, "nested.yaml")
	badFile := filepath.Join(dir, "bad.yaml")
	unknownFile := filepath.Join(dir, "unknown.yaml")
	for path, body := range map[string]string{
		flat:        fmt.Sprintf("DB_URL: %q\nDB_POOL_SIZE: 7\n", fileURL),
		nested:      fmt.Sprintf("db:\n  url: %q\n", fileURL),
		badFile:     fmt.Sprintf("DB_URL: %q\nDB_POOL_SIZE: abc\n", fileURL),
		unknownFile: fmt.Sprintf("DB_URL: %q\nDB_POLL_SIZE: 3\n", fileURL),
	} {
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	tests := []struct {
		name     string
		environ  []string
		args     []string
		wantURL  string
		wantPool string // settings.DB_POOL_SIZE, when not ""
	}{
		{"file", nil, []string{"info", "--json", "--config", flat}, fileURL, "7"},
		{"nested file keys", nil, []string{"info", "--json", "--config=" + nested}, fileURL, "5"},
		{"env overrides file", []string{"DB_URL=" + envURL}, []string{"info", "--json", "--config", flat}, envURL, "7"},
		{"env overrides file pool size", []string{"DB_POOL_SIZE=4"}, []string{"info", "--json", "--config", flat}, fileURL, "4"},
		{"flag overrides env and file", []string{"DB_URL=" + envURL}, []string{"info", "--json", "--config", flat, "--db-url", flagURL}, flagURL, "7"},
		{"flag before --config", []string{"DB_URL=" + envURL, "DB_POOL_SIZE=4"}, []string{"info", "--db-url=" + flagURL, "--db-pool-size=9", "--config", flat, "--json"}, flagURL, "9"},
		{"env alone", []string{"DB_URL=" + envURL}, []string{"info", "--json"}, envURL, "5"},
		{"unrelated env ignored", []string{"DB_URL=" + envURL, "DB_URLX=oracle://x", "db_url=oracle://y"}, []string{"info", "--json"}, envURL, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := runCLI(t, tc.environ, tc.args...)
			if r.code != exitOK {
				t.Fatalf("want exit 0\n%s", r)
			}
			m := decodeInfo(t, r)
			if m["url"] != tc.wantURL {
				t.Errorf("url = %v, want %q", m["url"], tc.wantURL)
			}
			if tc.wantPool != "" {
				settings, _ := m["settings"].(map[string]any)
				if settings["DB_POOL_SIZE"] != tc.wantPool {
					t.Errorf("DB_POOL_SIZE = %v, want %s", settings["DB_POOL_SIZE"], tc.wantPool)
				}
			}
		})
	}

	bad := []struct {
		name string
		args []string
		want []string
	}{
		{"bad value in file", []string{"info", "--config", badFile}, []string{"DB_POOL_SIZE", "file " + badFile}},
		{"unknown key in file", []string{"info", "--config", unknownFile}, []string{"DB_POLL_SIZE", unknownFile}},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			r := runCLI(t, nil, tc.args...)
			if r.code != exitConfig {
				t.Fatalf("want exit 2\n%s", r)
			}
			assertOneLine(t, "stderr", r.stderr)
			for _, w := range tc.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr should contain %q\n%s", w, r)
				}
			}
		})
	}
}

// TestBinary builds the real bento binary and runs it as a process, with an
// environment of its own.
func TestBinary(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Log("building the binary even with -short: this is the only end-to-end check of main")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to build bento: %v", err)
	}
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root not found at %s: %v", root, err)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "bento")
	build := exec.Command(goTool, "build", "-o", bin, "./cmd/bento")
	build.Dir = root
	start := time.Now()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	t.Logf("go build took %s", time.Since(start).Round(time.Millisecond))

	runBin := func(t *testing.T, environ []string, args ...string) result {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Dir = dir // the default sqlite://bento.db would land here, not in the checkout
		cmd.Env = append([]string{}, environ...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		start := time.Now()
		err := cmd.Run()
		r := result{code: cmd.ProcessState.ExitCode(), stdout: stdout.String(), stderr: stderr.String(), elapsed: time.Since(start)}
		var exitErr *exec.ExitError
		if err != nil && !errors.As(err, &exitErr) {
			t.Fatalf("running %s: %v\n%s", bin, err, r)
		}
		return r
	}

	tests := []struct {
		name     string
		environ  []string
		args     []string
		code     int
		bound    time.Duration
		stdout   string   // prefix of stdout, when not ""
		stderrIn []string // substrings of the one stderr line, for failures
	}{
		{"health sqlite", []string{"DB_URL=sqlite://" + filepath.Join(dir, "b.db")}, []string{"health"}, exitOK, 0, "healthy: sqlite3 at ", nil},
		{"info DB_POOL_SIZE=abc", []string{"DB_URL=sqlite://" + filepath.Join(dir, "b.db"), "DB_POOL_SIZE=abc"}, []string{"info"}, exitConfig, 0, "", []string{"DB_POOL_SIZE"}},
		{"health unreachable postgres", []string{"DB_URL=postgres://127.0.0.1:1/x"}, []string{"health"}, exitFail, 11 * time.Second, "", []string{"bento health:", "127.0.0.1:1"}},
		{"version", nil, []string{"version"}, exitOK, 0, "bento ", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := runBin(t, tc.environ, tc.args...)
			t.Logf("took %s", r.elapsed.Round(time.Microsecond))
			if r.code != tc.code {
				t.Fatalf("want exit %d\n%s", tc.code, r)
			}
			if tc.bound > 0 && r.elapsed > tc.bound {
				t.Errorf("took %s, want at most %s\n%s", r.elapsed, tc.bound, r)
			}
			if tc.stdout != "" && !strings.HasPrefix(r.stdout, tc.stdout) {
				t.Errorf("stdout should start with %q\n%s", tc.stdout, r)
			}
			if tc.code != exitOK {
				assertOneLine(t, "stderr", r.stderr)
				if r.stdout != "" {
					t.Errorf("stdout should be empty\n%s", r)
				}
			} else if r.stderr != "" {
				t.Errorf("stderr should be empty\n%s", r)
			}
			for _, w := range tc.stderrIn {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr should contain %q\n%s", w, r)
				}
			}
		})
	}
	if _, err := os.Stat(filepath.Join(dir, "bento.db")); err == nil {
		t.Errorf("a command created the default bento.db although DB_URL was set")
	}
}

// TestOutboxListAndWait: bento outbox list shows the events a bench left
// pending, by status and limit; bento outbox wait fails naming them until
// a relay published them, then succeeds.
func TestOutboxListAndWait(t *testing.T) {
	t.Parallel()
	for _, d := range allDialects {
		t.Run(d, func(t *testing.T) {
			t.Parallel()
			env := []string{"DB_URL=" + dialectURL(t, d), "OUTBOX_PUBLISHER=log"}
			if r := runCLI(t, env, "bench", "--orders", "5", "--workers", "1", "--json"); r.code != exitOK {
				t.Fatalf("bench\n%s", r)
			}
			list := func(args ...string) []outbox.Entry {
				t.Helper()
				r := runCLI(t, env, append([]string{"outbox", "list", "--json"}, args...)...)
				var es []outbox.Entry
				if r.code != exitOK || json.Unmarshal([]byte(r.stdout), &es) != nil || es == nil {
					t.Fatalf("outbox list %v: want exit 0 and a JSON array\n%s", args, r)
				}
				return es
			}
			es := list()
			if len(es) != 5 {
				t.Fatalf("want 5 events, got %+v", es)
			}
			for _, e := range es {
				if e.Status != outbox.StatusPending || e.Type != "OrderPlaced" || e.AggregateType != "Order" || e.Sequence != 1 || e.OccurredAt.IsZero() {
					t.Errorf("event %+v", e)
				}
			}
			if dead := list("--status", "dead"); len(dead) != 0 {
				t.Errorf("dead letters: %+v, want none", dead)
			}
			r := runCLI(t, env, "outbox", "list", "--limit", "2")
			if r.code != exitOK || strings.Count(r.stdout, "\n") != 3 || !strings.Contains(r.stdout, "OrderPlaced") ||
				!strings.Contains(r.stdout, es[0].ID.String()) || !strings.Contains(r.stderr, "there are more") {
				t.Errorf("list --limit 2: want a header, the 2 oldest and a note that there are more\n%s", r)
			}
			r = runCLI(t, env, "outbox", "wait", "--timeout", "0.3")
			if r.code != exitFail || !strings.Contains(r.stderr, "5 events still pending") {
				t.Fatalf("wait without a relay: want exit 1 naming 5 pending events\n%s", r)
			}
			assertOneLine(t, "stderr", r.stderr)
			if r := runCLI(t, env, "relay", "--once"); r.code != exitOK || !strings.Contains(r.stdout, "published 5") {
				t.Fatalf("relay --once\n%s", r)
			}
			r = runCLI(t, env, "outbox", "wait", "--timeout", "10")
			if r.code != exitOK || !strings.Contains(r.stdout, "drained") {
				t.Fatalf("wait after the relay: want exit 0\n%s", r)
			}
			if pending := list("--status", "pending"); len(pending) != 0 {
				t.Errorf("pending after the relay: %+v", pending)
			}
			for _, args := range [][]string{{"list", "--status", "done"}, {"list", "--limit", "0"}, {"wait", "--timeout", "0"}, {"frob"}} {
				r := runCLI(t, env, append([]string{"outbox"}, args...)...)
				if r.code != exitConfig || !strings.Contains(r.stderr, "accepted") && args[0] != "frob" {
					t.Errorf("outbox %v: want exit 2 saying what is accepted\n%s", args, r)
				}
				assertOneLine(t, "stderr", r.stderr)
			}
		})
	}
}

// TestRelayLogSummarises: a backlog relayed with the log publisher (the
// flood a bench's events once caused in serve's log) yields at most 10
// per-event info lines, one line saying the rest is summarised and one
// summary counting every event, printed before the relay exits.
func TestRelayLogSummarises(t *testing.T) {
	t.Parallel()
	env := []string{"DB_URL=" + sqliteURL(t), "OUTBOX_PUBLISHER=log"}
	if r := runCLI(t, env, "bench", "--orders", "300", "--workers", "2", "--json"); r.code != exitOK {
		t.Fatalf("bench\n%s", r)
	}
	r := runCLI(t, env, "relay", "--once")
	if r.code != exitOK || !strings.Contains(r.stdout, "published 300") {
		t.Fatalf("relay --once\n%s", r)
	}
	if n := strings.Count(r.stderr, `msg="bento: event published"`); n != 10 {
		t.Errorf("%d per-event info lines, want 10\n%s", n, r)
	}
	if n := strings.Count(r.stderr, `msg="bento: event log summarised"`); n != 1 {
		t.Errorf("%d lines saying the log is summarised, want 1\n%s", n, r)
	}
	if n := strings.Count(r.stderr, `msg="bento: events published" count=300 logged=10`); n != 1 {
		t.Errorf("want one summary counting the 300 events\n%s", r)
	}
	// At debug level every event has its line.
	if r := runCLI(t, env, "bench", "--orders", "30", "--workers", "1", "--json"); r.code != exitOK {
		t.Fatalf("bench\n%s", r)
	}
	r = runCLI(t, env, "relay", "--once", "--log-level", "debug")
	if n := strings.Count(r.stderr, `msg="bento: event published"`); r.code != exitOK || n != 30 {
		t.Errorf("--log-level debug: %d event lines, want 30\n%s", n, r)
	}
}
