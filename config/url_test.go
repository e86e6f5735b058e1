package config

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// pw is the password used throughout the tests; it must never be displayed.
const pw = "s3cr3t-PW"

// assertNoSecret fails if s contains any of the secrets.
func assertNoSecret(t *testing.T, what, s string, secrets ...string) {
	t.Helper()
	if len(secrets) == 0 {
		secrets = []string{pw}
	}
	for _, sec := range secrets {
		if strings.Contains(s, sec) {
			t.Errorf("%s leaks secret %q: %s", what, sec, s)
		}
	}
}

func TestParseURLDialect(t *testing.T) {
	tests := []struct {
		raw      string
		dialect  string
		scheme   string // Server().Scheme for server dialects
		hostname string
		port     string
		path     string // Server().Path
	}{
		{"postgres://user:" + pw + "@localhost:5432/app", Postgres, "postgres", "localhost", "5432", "/app"},
		{"postgres://localhost/app", Postgres, "postgres", "localhost", "", "/app"},
		{"postgres://db.example.com", Postgres, "postgres", "db.example.com", "", ""},
		{"postgresql://user@host/app", Postgres, "postgres", "host", "", "/app"},
		{"postgresql+asyncpg://user:" + pw + "@host:6543/app", Postgres, "postgres", "host", "6543", "/app"},
		{"postgresql+psycopg2://host/app", Postgres, "postgres", "host", "", "/app"},
		{"postgres+pgx://host/app", Postgres, "postgres", "host", "", "/app"},
		{"pgx://host/app", Postgres, "postgres", "host", "", "/app"},
		{"POSTGRES://USER@HOST/App", Postgres, "postgres", "HOST", "", "/App"},
		{"PostgreSQL+AsyncPG://host/app", Postgres, "postgres", "host", "", "/app"},
		{"postgres://user:" + pw + "@[::1]:5432/app", Postgres, "postgres", "::1", "5432", "/app"},
		{"postgres://[::1]/app", Postgres, "postgres", "::1", "", "/app"},
		{"postgres://host:1/app", Postgres, "postgres", "host", "1", "/app"},
		{"postgres://host:65535/app", Postgres, "postgres", "host", "65535", "/app"},
		{"postgres://host/app?sslmode=disable&application_name=x", Postgres, "postgres", "host", "", "/app"},
		{"  postgres://host/app  ", Postgres, "postgres", "host", "", "/app"},
		{"mysql://root:" + pw + "@localhost:3306/test", MySQL, "mysql", "localhost", "3306", "/test"},
		{"mysql://root@host/test", MySQL, "mysql", "host", "", "/test"},
		{"mysql+pymysql://root@host/test", MySQL, "mysql", "host", "", "/test"},
		{"mysql+aiomysql://root:" + pw + "@host:3307/test", MySQL, "mysql", "host", "3307", "/test"},
		{"MYSQL://root@host/test", MySQL, "mysql", "host", "", "/test"},
		{"mariadb://root:" + pw + "@host:3306/test", MySQL, "mysql", "host", "3306", "/test"},
		{"MariaDB+mariadbconnector://root@host/test", MySQL, "mysql", "host", "", "/test"},
		{"mysql://root@[::1]:3306/test", MySQL, "mysql", "::1", "3306", "/test"},
		{"mysql://root@host/test?parseTime=true", MySQL, "mysql", "host", "", "/test"},
	}
	for _, tt := range tests {
		t.Run(tt.raw, func(t *testing.T) {
			u, err := ParseURL(tt.raw)
			if err != nil {
				t.Fatalf("ParseURL: %v", err)
			}
			if got := u.Dialect(); got != tt.dialect {
				t.Errorf("Dialect() = %q, want %q", got, tt.dialect)
			}
			if u.IsZero() {
				t.Error("IsZero() = true for a parsed URL")
			}
			if got := u.Secret(); got != tt.raw {
				t.Errorf("Secret() = %q, want the input %q", got, tt.raw)
			}
			if u.Memory() || u.Path() != "" || u.AbsPath() != "" {
				t.Errorf("server URL has SQLite fields: Memory=%v Path=%q AbsPath=%q", u.Memory(), u.Path(), u.AbsPath())
			}
			s := u.Server()
			if s == nil {
				t.Fatal("Server() = nil for a server URL")
			}
			if s.Scheme != tt.scheme {
				t.Errorf("Server().Scheme = %q, want %q", s.Scheme, tt.scheme)
			}
			if got := s.Hostname(); got != tt.hostname {
				t.Errorf("Server().Hostname() = %q, want %q", got, tt.hostname)
			}
			if got := s.Port(); got != tt.port {
				t.Errorf("Server().Port() = %q, want %q", got, tt.port)
			}
			if s.Path != tt.path {
				t.Errorf("Server().Path = %q, want %q", s.Path, tt.path)
			}
			if !strings.HasPrefix(u.String(), tt.scheme+"://") {
				t.Errorf("String() = %q, want the normalised scheme %s://", u.String(), tt.scheme)
			}
			assertNoSecret(t, "String()", u.String())
		})
	}
}

func TestParseURLServerKeepsPassword(t *testing.T) {
	raw := "postgresql+asyncpg://app:" + pw + "@db:5432/app?sslmode=require"
	u, err := ParseURL(raw)
	if err != nil {
		t.Fatal(err)
	}
	s := u.Server()
	if got, _ := s.User.Password(); got != pw {
		t.Errorf("Server() password = %q, want %q (the driver needs it)", got, pw)
	}
	if got := s.User.Username(); got != "app" {
		t.Errorf("Server() user = %q, want app", got)
	}
	if got := u.Query().Get("sslmode"); got != "require" {
		t.Errorf("Query().Get(sslmode) = %q, want require", got)
	}

	// Server and Query return copies: changing them must not change u.
	s.User = nil
	s.Host = "elsewhere"
	q := u.Query()
	q.Set("sslmode", "disable")
	if s2 := u.Server(); s2.User == nil || s2.Host != "db:5432" {
		t.Errorf("Server() is not a copy: after modification got %v", s2.Redacted())
	}
	if got := u.Query().Get("sslmode"); got != "require" {
		t.Errorf("Query() is not a copy: sslmode = %q", got)
	}
}

func TestParseURLSQLite(t *testing.T) {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		raw     string
		path    string
		absPath string
		memory  bool
	}{
		{"sqlite://rel.db", "rel.db", filepath.Join(wd, "rel.db"), false},
		{"sqlite://sub/dir/rel.db", "sub/dir/rel.db", filepath.Join(wd, "sub/dir/rel.db"), false},
		{"sqlite://./rel.db", "./rel.db", filepath.Join(wd, "rel.db"), false},
		{"sqlite:///abs/path.db", "/abs/path.db", "/abs/path.db", false},
		{"sqlite:////abs/path.db", "//abs/path.db", "/abs/path.db", false},
		{"sqlite3://rel.db", "rel.db", filepath.Join(wd, "rel.db"), false},
		{"SQLITE:///abs/path.db", "/abs/path.db", "/abs/path.db", false},
		{"sqlite+pysqlite:///abs/path.db", "/abs/path.db", "/abs/path.db", false},
		{"sqlite+aiosqlite://rel.db", "rel.db", filepath.Join(wd, "rel.db"), false},
		{"sqlite://my%20db.db", "my db.db", filepath.Join(wd, "my db.db"), false},
		{"sqlite://rel.db?_pragma=busy_timeout(5000)", "rel.db", filepath.Join(wd, "rel.db"), false},
		{"file:path.db", "path.db", filepath.Join(wd, "path.db"), false},
		{"file:sub/path.db?cache=shared", "sub/path.db", filepath.Join(wd, "sub/path.db"), false},
		{"file:///abs/path.db", "/abs/path.db", "/abs/path.db", false},
		{"file:/abs/path.db", "/abs/path.db", "/abs/path.db", false},
		{":memory:", "", "", true},
		{"  :memory:  ", "", "", true},
		{"sqlite://:memory:", "", "", true},
		{"sqlite:///:memory:", "", "", true},
		{"SQLITE://:memory:", "", "", true},
		{"sqlite://:memory:?cache=shared", "", "", true},
		{"file::memory:", "", "", true},
		{"file::memory:?cache=shared", "", "", true},
		{"file:shared.db?mode=memory&cache=shared", "", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.raw, func(t *testing.T) {
			u, err := ParseURL(tt.raw)
			if err != nil {
				t.Fatalf("ParseURL: %v", err)
			}
			if got := u.Dialect(); got != SQLite {
				t.Errorf("Dialect() = %q, want %q", got, SQLite)
			}
			if got := u.Path(); got != tt.path {
				t.Errorf("Path() = %q, want %q", got, tt.path)
			}
			if got := u.AbsPath(); got != tt.absPath {
				t.Errorf("AbsPath() = %q, want %q", got, tt.absPath)
			}
			if got := u.Memory(); got != tt.memory {
				t.Errorf("Memory() = %v, want %v", got, tt.memory)
			}
			if u.Server() != nil {
				t.Errorf("Server() = %v, want nil for SQLite", u.Server())
			}
			if got := u.Secret(); got != tt.raw {
				t.Errorf("Secret() = %q, want %q", got, tt.raw)
			}
			if u.String() == "" {
				t.Error("String() is empty")
			}
		})
	}
}

func TestParseURLSQLiteQuery(t *testing.T) {
	u, err := ParseURL("sqlite://rel.db?_pragma=busy_timeout(5000)&_pragma=foreign_keys(1)&_txlock=immediate")
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	if got := q["_pragma"]; len(got) != 2 || got[0] != "busy_timeout(5000)" || got[1] != "foreign_keys(1)" {
		t.Errorf("Query()[_pragma] = %q", got)
	}
	if got := q.Get("_txlock"); got != "immediate" {
		t.Errorf("Query().Get(_txlock) = %q", got)
	}
}

func TestZeroURL(t *testing.T) {
	var u URL
	if !u.IsZero() {
		t.Error("IsZero() = false for the zero URL")
	}
	if u.String() != "" || u.Dialect() != "" || u.Server() != nil || u.Path() != "" || u.AbsPath() != "" || u.Memory() {
		t.Errorf("zero URL is not empty: %q %q %v", u.String(), u.Dialect(), u.Server())
	}
	if q := u.Query(); q == nil || len(q) != 0 {
		t.Errorf("Query() of the zero URL = %v, want an empty map", q)
	}
}

func TestParseURLErrors(t *testing.T) {
	tests := []struct {
		raw  string
		want []string // substrings of the error
	}{
		{"", []string{"empty URL", "accepted:", "postgres://", "sqlite://rel.db"}},
		{"   ", []string{"empty URL", "accepted:"}},
		{"localhost/db", []string{"no scheme", "accepted:", "postgres://", "mysql://", "sqlite://", ":memory:"}},
		{"bento.db", []string{"no scheme", "accepted:"}},
		{"user:" + pw + "@host/db", []string{"no scheme", "accepted:"}},
		{"//user:" + pw + "@host/db", []string{"no scheme", "accepted:"}},
		{"postgres:user:" + pw + "@host/db", []string{"no scheme", "accepted:"}},
		{"oracle://scott:" + pw + "@host/orcl", []string{`unknown scheme "oracle"`, "accepted:", "postgres://", "postgresql://", "mysql://", "mariadb://", "sqlite://rel.db", "sqlite:///abs/path.db", "file:path.db", ":memory:", "+driver"}},
		{"redis://:" + pw + "@host:6379/0", []string{`unknown scheme "redis"`, "accepted:"}},
		{"FILE://x.db", []string{`unknown scheme "FILE"`, "accepted:"}},
		{"postgres+://u:" + pw + "@h/db", nil}, // accepted or not, it must not leak
		{"://u:" + pw + "@h/db", []string{`unknown scheme ""`, "accepted:"}},
		{"mssql://sa:" + pw + "@host?password=" + pw, []string{`unknown scheme "mssql"`}},
		{"postgres://u:" + pw + "@host:notaport/db", []string{"not a valid URL", "accepted:"}},
		{"postgres://u:" + pw + "@host:notaport/db?sslpassword=" + pw, []string{"not a valid URL"}},
		{"postgres://u:" + pw + "@ho st/db", []string{"not a valid URL"}},
		{"postgres://u:" + pw + "%zz@host/db", []string{"not a valid URL"}},
		{"mysql://root:" + pw + "@host:3306x/db", []string{"not a valid URL"}},
		{"postgres://u:" + pw + "@[::1/db", []string{"not a valid URL"}},
		{"postgres:///db", []string{"no host", "accepted:"}},
		{"postgres://", []string{"no host"}},
		{"postgres://u:" + pw + "@/db", []string{"no host"}},
		{"postgres://u:" + pw + "@/db?password=" + pw, []string{"no host"}},
		{"mysql://root@/test", []string{"no host", "accepted:"}},
		{"mysql://root:" + pw + "@/test", []string{"no host"}},
		{"mariadb://root:" + pw + "@:3306/test", []string{"no host"}},
		{"postgres://u:" + pw + "@host:0/db", []string{`invalid port "0"`, "accepted: 1-65535"}},
		{"postgres://u:" + pw + "@host:65536/db", []string{`invalid port "65536"`, "accepted: 1-65535"}},
		{"mysql://root:" + pw + "@host:99999/test", []string{`invalid port "99999"`}},
		{"postgres://u:" + pw + "@[::1]:0/db", []string{`invalid port "0"`}},
		{"mysql://root:" + pw + "@localhost:3306", []string{"no database name", "accepted: mysql://"}},
		{"mysql://root:" + pw + "@localhost:3306/", []string{"no database name"}},
		{"mariadb://root:" + pw + "@localhost/?password=" + pw, []string{"no database name"}},
		{"sqlite://", []string{"no file path", "accepted:"}},
		{"sqlite://?password=" + pw, []string{"no file path"}},
		{"sqlite://x.db?password=" + pw + "&%zz", []string{"invalid query"}},
		{"sqlite://u:" + pw + "@x.db?%zz", []string{"invalid query"}},
		{"sqlite://x%zz.db?password=" + pw, []string{"invalid path"}},
		{"file:", []string{"no file path", "accepted: file:path.db"}},
		{"file:?password=" + pw, []string{"no file path"}},
		{"file:x.db?password=" + pw + "&a=%zz", []string{"invalid query"}},
		{"file:x%zz.db?pwd=" + pw, []string{"invalid path"}},
	}
	for _, tt := range tests {
		t.Run(tt.raw, func(t *testing.T) {
			u, err := ParseURL(tt.raw)
			if tt.want == nil {
				if err != nil {
					assertNoSecret(t, "error", err.Error())
				} else {
					assertNoSecret(t, "String()", u.String())
				}
				return
			}
			if err == nil {
				t.Fatalf("ParseURL(%q) = %v, want an error", tt.raw, u)
			}
			if !u.IsZero() {
				t.Errorf("ParseURL returned a non-zero URL with its error: %v", u)
			}
			msg := err.Error()
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not contain %q", msg, w)
				}
			}
			assertNoSecret(t, "error", msg)
		})
	}
}

func TestURLStringRedacts(t *testing.T) {
	tests := []struct {
		raw  string
		want string // exact String(), or "" to check only that no secret leaks
	}{
		{"postgres://u:" + pw + "@host:5432/db", "postgres://u:xxxxx@host:5432/db"},
		{"postgresql+asyncpg://u:" + pw + "@host/db", "postgres://u:xxxxx@host/db"},
		{"postgres://u@host/db", "postgres://u@host/db"},
		{"postgres://host/db?sslmode=disable", "postgres://host/db?sslmode=disable"},
		{"mysql://root:" + pw + "@[::1]:3306/test", "mysql://root:xxxxx@[::1]:3306/test"},
		{"mariadb://root:" + pw + "@host/test", "mysql://root:xxxxx@host/test"},
		{"postgres://u@host/db?password=" + pw, "postgres://u@host/db?password=xxxxx"},
		{"postgres://u@host/db?sslmode=require&sslpassword=" + pw, ""},
		{"postgres://u@host/db?PASSWORD=" + pw, ""},
		{"postgres://u@host/db?passwd=" + pw + "&pass=" + pw + "&pwd=" + pw, ""},
		{"postgres://u@host/db?secret=" + pw + "&token=" + pw + "&sslkey=" + pw, ""},
		{"postgres://u@host/db?pass%77ord=" + pw, ""},
		{"postgres://u@host/db?password=" + pw + "&password=" + pw + "2", ""},
		{"postgres://u@host/db?a=1;password=" + pw, ""},
		{"postgres://u@host/db?password=" + pw + ";a=1", ""},
		{"postgres://u@host/db?a=%zz&password=" + pw, ""},
		{"postgres://u:" + pw + "@host/db?password=" + pw + "#frag", ""},
		{"mysql://root:" + pw + "@host/test?tls=true&password=" + pw, ""},
		{"postgres://u:p%40ss%3A" + pw + "@host/db", ""},
		{"postgres://postgres://u:" + pw + "@host/db", ""}, // scheme pasted twice
		{"sqlite://rel.db", "sqlite://rel.db"},
		{"sqlite:///abs/path.db", "sqlite:///abs/path.db"},
		{"file:path.db", "file:path.db"},
		{":memory:", ":memory:"},
		{"sqlite://rel.db?_pragma=busy_timeout(5000)", "sqlite://rel.db?_pragma=busy_timeout(5000)"},
		{"sqlite://rel.db?password=" + pw, ""},
		{"sqlite://rel.db?_pragma=key('" + pw + "')", ""},
		{"sqlite://rel.db?_pragma=hexkey(%27" + pw + "%27)", ""},
		{"sqlite://rel.db?_pragma=textkey(%27" + pw + "%27)&_pragma=busy_timeout(1)", ""},
		{"sqlite://rel.db?_PRAGMA=KEY('" + pw + "')", ""},
		{"file:x.db?_pragma=key(%27" + pw + "%27)", ""},
		{"file:x.db?_pragma=key('" + pw + "')", ""},
		{"file:x.db?password=" + pw, ""},
		{"file::memory:?password=" + pw, ""},
		{"sqlite://:memory:?password=" + pw, ""},
	}
	for _, tt := range tests {
		t.Run(tt.raw, func(t *testing.T) {
			u, err := ParseURL(tt.raw)
			if err != nil {
				t.Fatalf("ParseURL: %v", err)
			}
			s := u.String()
			if tt.want != "" && s != tt.want {
				t.Errorf("String() = %q, want %q", s, tt.want)
			}
			assertNoSecret(t, "String()", s)
			if got, want := fmt.Sprintf("%#v", u), fmt.Sprintf("config.URL(%q)", s); got != want {
				t.Errorf("%%#v = %s, want %s", got, want)
			}
			text, err := u.MarshalText()
			if err != nil {
				t.Fatal(err)
			}
			if string(text) != s {
				t.Errorf("MarshalText() = %q, want String() %q", text, s)
			}
			j, err := json.Marshal(u)
			if err != nil {
				t.Fatal(err)
			}
			assertNoSecret(t, "json.Marshal", string(j))
			j, err = json.Marshal(struct{ DB URL }{u})
			if err != nil {
				t.Fatal(err)
			}
			assertNoSecret(t, "json.Marshal of a struct", string(j))
		})
	}
}

// TestURLStringKeepsNonSecrets checks that redaction does not hide what a
// user needs to recognise the URL.
func TestURLStringKeepsNonSecrets(t *testing.T) {
	u, err := ParseURL("postgres://app:" + pw + "@db.example.com:6543/orders?sslmode=require&password=" + pw)
	if err != nil {
		t.Fatal(err)
	}
	s := u.String()
	for _, want := range []string{"app", "db.example.com", "6543", "/orders", "sslmode=require", "password=xxxxx"} {
		if !strings.Contains(s, want) {
			t.Errorf("String() = %q, want it to contain %q", s, want)
		}
	}
}

func TestRedactString(t *testing.T) {
	// redactString handles strings that may not parse as URLs.
	inputs := []string{
		"postgres://u:" + pw + "@host:notaport/db",
		"postgres://u:" + pw + "@host/db?password=" + pw,
		"postgres://u:p/w" + pw + "@host/db",
		"postgres://u:p?w" + pw + "@host/db?password=" + pw,
		"postgres://u:" + pw + "?password=x@host",
		"weird://u:" + pw + "@@host",
		"user:" + pw + "@host/db",
		"//user:" + pw + "@host/db",
		"postgres:/://user:" + pw + "@host/db",
		"a://b@c://user:" + pw + "@host",
		"x?password=" + pw,
		"x?a=1&PWD=" + pw + "&b=2",
		"x?a=1;token=" + pw,
		"file:x.db?_pragma=key('a@b" + pw + "')",
	}
	for _, in := range inputs {
		t.Run(in, func(t *testing.T) {
			assertNoSecret(t, "redactString", redactString(in))
		})
	}
}

// A PostgreSQL URL may list several hosts (libpq's multi-host form, as
// used with target_session_attrs=read-write to find the primary after a
// failover): ParseURL keeps the list as given, ports or not, IPv6 too, and
// redacts the password. Other dialects refuse a list.
func TestParseURLMultiHost(t *testing.T) {
	good := []struct{ raw, hosts string }{
		{"postgres://app:" + pw + "@127.0.0.1:5432,127.0.0.1:5433/db?target_session_attrs=read-write", "127.0.0.1:5432,127.0.0.1:5433"},
		{"postgres://h1,h2/db", "h1,h2"},
		{"postgres://h1:5432,h2/db", "h1:5432,h2"},
		{"postgresql://u@[::1]:5432,h2:5433/db", "[::1]:5432,h2:5433"},
		{"postgres://u:p,w@h1,h2", "h1,h2"},
	}
	for _, tt := range good {
		u, err := ParseURL(tt.raw)
		if err != nil {
			t.Errorf("ParseURL(%q): %v", tt.raw, err)
			continue
		}
		if got := u.Server().Host; got != tt.hosts {
			t.Errorf("ParseURL(%q).Server().Host = %q, want %q", tt.raw, got, tt.hosts)
		}
		if !strings.Contains(u.String(), tt.hosts) {
			t.Errorf("ParseURL(%q).String() = %q: the host list is missing", tt.raw, u.String())
		}
		assertNoSecret(t, "String()", u.String())
		if u.Query().Get("target_session_attrs") != "" && !strings.Contains(u.Server().String(), "target_session_attrs=read-write") {
			t.Errorf("Server() lost the query: %s", u.Server().Redacted())
		}
	}
	bad := []struct{ raw, want string }{
		{"postgres://u:" + pw + "@h1:5432,:5433/db", "host 2 of the list is empty"},
		{"postgres://u:" + pw + "@h1:5432,h2:99999/db", `host 2 of the list has invalid port "99999"`},
		{"postgres://h1,h2:x/db", `host 2 of the list has invalid port "x"`},
		{"postgres://[::1,h2/db", `host 1 of the list "[::1" has no closing ]`},
		{"mysql://root:" + pw + "@h1:3306,h2:3306/db", "only PostgreSQL URLs may"},
	}
	for _, tt := range bad {
		_, err := ParseURL(tt.raw)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ParseURL(%q) = %v, want an error containing %q", tt.raw, err, tt.want)
			continue
		}
		assertNoSecret(t, "error", err.Error())
	}
}
