package config

import (
	"math"
	"strconv"
	"strings"
	"testing"
	"time"
)

// fuzzSecret is the password every FuzzParseURL input carries in its
// user:pass@ position.
const fuzzSecret = "S3CRET-xyz"

// FuzzParseURL varies a URL around a fixed password,
// scheme://user:S3CRET-xyz@host rest, and checks that ParseURL does not
// panic and that neither its error nor the parsed URL's String ever shows
// the password; and the same with the password in a ?password= or
// ?sslpassword= parameter instead. It also feeds the three parts, joined, to ParseURL and
// redactString as they are, to look for panics.
func FuzzParseURL(f *testing.F) {
	seeds := [][3]string{
		{"postgres", "localhost:5432", "/db"},
		{"postgres", "localhost", "/db?sslmode=disable&application_name=x"},
		{"postgresql", "host", "/db"},
		{"postgresql+asyncpg", "host:6543", "/db"},
		{"POSTGRES", "HOST", "/DB"},
		{"PostgreSQL+AsyncPG", "host", "/db"},
		{"pgx", "host", "/db"},
		{"postgres", "[::1]:5432", "/db"},
		{"postgres", "[::1]", "/db"},
		{"mysql", "localhost:3306", "/test"},
		{"mysql+pymysql", "host", "/test?parseTime=true"},
		{"MYSQL", "[::1]:3306", "/test"},
		{"mariadb", "host", "/test"},
		{"sqlite", "rel.db", ""},
		{"sqlite", "", "/abs/path.db"},
		{"sqlite3", "rel.db", "?_pragma=busy_timeout(5000)"},
		{"sqlite+pysqlite", "", "/abs/path.db"},
		{"sqlite", ":memory:", ""},
		{"file", "", "path.db"},
		{"file", "", "/abs/path.db?mode=memory"},
		// rejected forms
		{"", "host", "/db"},
		{"oracle", "host", "/orcl"},
		{"redis", "host:6379", "/0"},
		{"postgres", "", "/db"},
		{"mysql", "", "/test"},
		{"postgres", "host:notaport", "/db"},
		{"postgres", "host:0", "/db"},
		{"postgres", "host:65536", "/db"},
		{"mysql", "host:3306", ""},
		{"mysql", "host", "/"},
		{"postgres", "ho st", "/db"},
		{"postgres", "[::1", "/db"},
		{"postgres", "host", "/db?password=x;a=1"},
		{"postgres", "host", "/db?a=%zz&sslpassword=y"},
		{"sqlite", "x.db", "?%zz"},
		{"sqlite", "x%zz.db", ""},
		{"file", "", "?%zz"},
		{"postgres:/", "host", "/db"},
		{"postgres://a", "host", "/db"},
		{"a://b@c", "host", ""},
		{"postgres", "host?password=x", "@y"},
		{"postgres", "h", "#frag@x"},
	}
	for _, s := range seeds {
		f.Add(s[0], s[1], s[2])
	}
	f.Fuzz(func(t *testing.T, scheme, host, rest string) {
		raw := scheme + "://user:" + fuzzSecret + "@" + host + rest
		u, err := ParseURL(raw)
		if err != nil {
			if msg := err.Error(); strings.Contains(msg, fuzzSecret) {
				t.Fatalf("ParseURL(%q) error shows the password: %s", raw, msg)
			}
			if !u.IsZero() {
				t.Fatalf("ParseURL(%q) returned a URL with its error", raw)
			}
		} else {
			checkParsed(t, raw, u)
			if s := u.String(); strings.Contains(s, fuzzSecret) {
				t.Fatalf("ParseURL(%q).String() shows the password: %s", raw, s)
			}
			if b, _ := u.MarshalText(); strings.Contains(string(b), fuzzSecret) {
				t.Fatalf("ParseURL(%q).MarshalText() shows the password: %s", raw, b)
			}
		}
		if s := redactString(raw); strings.Contains(s, fuzzSecret) {
			t.Fatalf("redactString(%q) shows the password: %s", raw, s)
		}

		// The same password as a query parameter, unless a '#' before it
		// makes it part of a fragment.
		if !strings.Contains(scheme+host+rest, "#") {
			for _, key := range []string{"password", "sslpassword"} {
				raw := scheme + "://" + host + rest + "?" + key + "=" + fuzzSecret
				u, err := ParseURL(raw)
				if err != nil {
					if msg := err.Error(); strings.Contains(msg, fuzzSecret) {
						t.Fatalf("ParseURL(%q) error shows the password: %s", raw, msg)
					}
				} else if s := u.String(); strings.Contains(s, fuzzSecret) {
					t.Fatalf("ParseURL(%q).String() shows the password: %s", raw, s)
				}
			}
		}

		// Arbitrary input: no panic, and a parsed URL is consistent.
		joined := scheme + host + rest
		if u, err := ParseURL(joined); err == nil {
			checkParsed(t, joined, u)
			_ = u.String()
		}
		_ = redactString(joined)
	})
}

// checkParsed checks the invariants of a URL that ParseURL accepted.
func checkParsed(t *testing.T, raw string, u URL) {
	t.Helper()
	if u.Secret() != raw {
		t.Fatalf("ParseURL(%q).Secret() = %q", raw, u.Secret())
	}
	switch u.Dialect() {
	case Postgres, MySQL:
		if u.Server() == nil || u.Server().Hostname() == "" {
			t.Fatalf("ParseURL(%q): server URL without a host", raw)
		}
		if u.Memory() || u.Path() != "" {
			t.Fatalf("ParseURL(%q): server URL with SQLite fields", raw)
		}
	case SQLite:
		if u.Server() != nil {
			t.Fatalf("ParseURL(%q): SQLite URL with a server", raw)
		}
		if u.Memory() == (u.Path() != "") {
			t.Fatalf("ParseURL(%q): Memory() = %v with Path() = %q", raw, u.Memory(), u.Path())
		}
	default:
		t.Fatalf("ParseURL(%q): dialect %q", raw, u.Dialect())
	}
}

// FuzzDuration checks that ParseDuration does not panic, that what it
// accepts is a number (plain seconds, neither NaN nor infinite) or Go
// duration syntax with the value either means, and that the duration
// settings accept only what they document.
func FuzzDuration(f *testing.F) {
	for _, s := range []string{
		"30s", "30", "0.5", "1m30s", "500ms", "1h", "3600", "0", "0s", " 30s ", "-1", "-1s", "",
		"abc", "NaN", "Inf", "-Inf", "1e300", "9223372036", "9223372037", "9223372036.854775807",
		"-9223372036.854775808", "9999999999h", "1e-12", "0x1p4", "1_000", ".5", "5.", "+5", "1.5h",
	} {
		f.Add(s)
	}
	var timeout, recycle Setting
	for _, s := range Settings() {
		switch s.Name {
		case "DB_POOL_TIMEOUT":
			timeout = s
		case "DB_POOL_RECYCLE":
			recycle = s
		}
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseDuration(s)
		if err == nil {
			v := strings.TrimSpace(s)
			if fl, ferr := strconv.ParseFloat(v, 64); ferr == nil {
				if math.IsNaN(fl) || math.IsInf(fl, 0) {
					t.Fatalf("ParseDuration(%q) accepted %v", s, fl)
				}
				ns := fl * float64(time.Second)
				if (ns > 0 && d < 0) || (ns < 0 && d > 0) {
					t.Fatalf("ParseDuration(%q) = %v: wrong sign", s, d)
				}
				if diff := math.Abs(float64(d) - ns); diff > math.Max(1, math.Abs(ns)*1e-12) {
					t.Fatalf("ParseDuration(%q) = %d ns, want about %g", s, int64(d), ns)
				}
			} else if want, terr := time.ParseDuration(v); terr != nil || d != want {
				t.Fatalf("ParseDuration(%q) = %v, want time.ParseDuration's %v (%v)", s, d, want, terr)
			}
		}

		var c Config
		if err := timeout.apply(&c, s); err == nil && c.DB.PoolTimeout <= 0 {
			t.Fatalf("DB_POOL_TIMEOUT=%q accepted as %v; documented > 0", s, c.DB.PoolTimeout)
		} else if err == nil && c.DB.PoolTimeout != d {
			t.Fatalf("DB_POOL_TIMEOUT=%q = %v, ParseDuration = %v", s, c.DB.PoolTimeout, d)
		}
		if err := recycle.apply(&c, s); err == nil && c.DB.PoolRecycle < 0 {
			t.Fatalf("DB_POOL_RECYCLE=%q accepted as %v; documented >= 0", s, c.DB.PoolRecycle)
		}
	})
}
