package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// environ returns a Source.Environ that yields exactly kv, so tests do not
// depend on the process environment.
func environ(kv ...string) func() []string {
	return func() []string { return append([]string(nil), kv...) }
}

// writeFile writes a YAML config file in a temporary directory.
func writeFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "bento.yaml")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// settingErrors returns every *Error in err, which Load builds with
// errors.Join. It fails the test if err holds anything else.
func settingErrors(t *testing.T, err error) []*Error {
	t.Helper()
	if err == nil {
		return nil
	}
	var parts []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		parts = j.Unwrap()
	} else {
		parts = []error{err}
	}
	var out []*Error
	for _, p := range parts {
		var e *Error
		if !errors.As(p, &e) {
			t.Fatalf("error part %T is not an *Error: %v", p, p)
		}
		out = append(out, e)
	}
	return out
}

func TestDefault(t *testing.T) {
	c := Default()
	d := c.DB
	if got := d.URL.String(); got != "sqlite://bento.db" {
		t.Errorf("DB_URL = %q, want sqlite://bento.db", got)
	}
	if d.URL.Dialect() != SQLite || d.URL.Path() != "bento.db" || d.URL.Memory() {
		t.Errorf("DB_URL: dialect %q path %q memory %v", d.URL.Dialect(), d.URL.Path(), d.URL.Memory())
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"DB_POOL_SIZE", d.PoolSize, 5},
		{"DB_MAX_OVERFLOW", d.MaxOverflow, 10},
		{"DB_POOL_TIMEOUT", d.PoolTimeout, 30 * time.Second},
		{"DB_POOL_RECYCLE", d.PoolRecycle, 3600 * time.Second},
		{"DB_POOL_PRE_PING", d.PoolPrePing, true},
		{"DB_CONNECT_TIMEOUT", d.ConnectTimeout, 10 * time.Second},
		{"DB_COMMAND_TIMEOUT", d.CommandTimeout, 60 * time.Second},
		{"DB_ECHO", d.Echo, false},
		{"DB_APPLICATION_NAME", d.ApplicationName, "bento"},
		{"MaxOpen", d.MaxOpen(), 15},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestLoadNothingSetIsDefault(t *testing.T) {
	c, err := Load(Source{Environ: environ()})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := c.String(), Default().String(); got != want {
		t.Errorf("Load with nothing set = %s, want the defaults %s", got, want)
	}
}

// documented lists the documented settings, in their order in Settings(),
// with their defaults as Settings() and Config.String() show them. Other
// settings may be added between or after them.
var documented = []struct{ name, def, shown string }{
	{"DB_URL", "sqlite://bento.db", "sqlite://bento.db"},
	{"DB_POOL_SIZE", "5", "5"},
	{"DB_MAX_OVERFLOW", "10", "10"},
	{"DB_POOL_TIMEOUT", "30s", "30s"},
	{"DB_POOL_RECYCLE", "3600s", "1h0m0s"},
	{"DB_POOL_PRE_PING", "true", "true"},
	{"DB_CONNECT_TIMEOUT", "10s", "10s"},
	{"DB_COMMAND_TIMEOUT", "60s", "1m0s"},
	{"DB_ECHO", "false", "false"},
	{"DB_APPLICATION_NAME", "bento", "bento"},
}

func TestSettingsTable(t *testing.T) {
	index := map[string]int{}
	for i, st := range Settings() {
		if _, dup := index[st.Name]; dup {
			t.Errorf("setting %s listed twice", st.Name)
		}
		index[st.Name] = i
		if st.Usage == "" || st.Accepts == "" {
			t.Errorf("%s has no usage or accepted values", st.Name)
		}
		if got, want := st.Flag(), strings.ToLower(strings.ReplaceAll(st.Name, "_", "-")); got != want {
			t.Errorf("%s Flag() = %q, want %q", st.Name, got, want)
		}
		if st.apply == nil || st.get == nil {
			t.Errorf("%s has no apply or get", st.Name)
		}
	}
	prev := -1
	for _, d := range documented {
		i, ok := index[d.name]
		if !ok {
			t.Errorf("setting %s missing", d.name)
			continue
		}
		if i < prev {
			t.Errorf("setting %s out of order", d.name)
		}
		prev = i
		if got := Settings()[i].Default; got != d.def {
			t.Errorf("%s default = %q, want %q", d.name, got, d.def)
		}
	}
	if got := Settings()[index["DB_POOL_SIZE"]].Flag(); got != "db-pool-size" {
		t.Errorf("DB_POOL_SIZE Flag() = %q, want db-pool-size", got)
	}
}

func TestLoadPrecedence(t *testing.T) {
	for _, layout := range []struct {
		name string
		yaml string
	}{
		{"flat", "DB_POOL_SIZE: 7\nDB_MAX_OVERFLOW: 3\nDB_ECHO: true\nDB_POOL_TIMEOUT: 1s\nDB_APPLICATION_NAME: from-file\n"},
		{"nested", "db:\n  pool_size: 7\n  max_overflow: 3\n  echo: true\n  pool_timeout: 1s\n  application_name: from-file\n"},
		{"lower flat", "db_pool_size: 7\ndb_max_overflow: 3\ndb_echo: true\ndb_pool_timeout: 1s\ndb_application_name: from-file\n"},
	} {
		t.Run(layout.name, func(t *testing.T) {
			path := writeFile(t, layout.yaml)

			// File only: file beats defaults.
			c, err := Load(Source{File: path, Environ: environ()})
			if err != nil {
				t.Fatal(err)
			}
			if c.DB.PoolSize != 7 || c.DB.MaxOverflow != 3 || !c.DB.Echo || c.DB.PoolTimeout != time.Second || c.DB.ApplicationName != "from-file" {
				t.Errorf("file values not applied: %s", c)
			}
			if c.DB.ConnectTimeout != 10*time.Second || !c.DB.PoolPrePing {
				t.Errorf("defaults not kept for settings absent from the file: %s", c)
			}

			// Environment beats file; flags beat environment.
			c, err = Load(Source{
				File:    path,
				Environ: environ("DB_MAX_OVERFLOW=4", "DB_POOL_TIMEOUT=2s", "DB_APPLICATION_NAME=from-env"),
				Flags:   map[string]string{"DB_POOL_TIMEOUT": "3s"},
			})
			if err != nil {
				t.Fatal(err)
			}
			if c.DB.PoolSize != 7 {
				t.Errorf("DB_POOL_SIZE = %d, want 7 from the file", c.DB.PoolSize)
			}
			if c.DB.MaxOverflow != 4 {
				t.Errorf("DB_MAX_OVERFLOW = %d, want 4 from the environment", c.DB.MaxOverflow)
			}
			if c.DB.PoolTimeout != 3*time.Second {
				t.Errorf("DB_POOL_TIMEOUT = %v, want 3s from the flag", c.DB.PoolTimeout)
			}
			if c.DB.ApplicationName != "from-env" {
				t.Errorf("DB_APPLICATION_NAME = %q, want from-env", c.DB.ApplicationName)
			}
			if !c.DB.Echo {
				t.Error("DB_ECHO = false, want true from the file")
			}
			if c.DB.CommandTimeout != 60*time.Second {
				t.Errorf("DB_COMMAND_TIMEOUT = %v, want the default 60s", c.DB.CommandTimeout)
			}
		})
	}
}

func TestLoadFlagsBeatEnvironment(t *testing.T) {
	c, err := Load(Source{
		Environ: environ("DB_URL=postgres://env@envhost/db", "DB_POOL_SIZE=2", "DB_ECHO=false"),
		Flags:   map[string]string{"DB_URL": "mysql://flag@flaghost/db", "DB_ECHO": "true"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if c.DB.URL.Dialect() != MySQL || c.DB.URL.Server().Hostname() != "flaghost" {
		t.Errorf("DB_URL = %v, want the flag's", c.DB.URL)
	}
	if !c.DB.Echo {
		t.Error("DB_ECHO = false, want true from the flag")
	}
	if c.DB.PoolSize != 2 {
		t.Errorf("DB_POOL_SIZE = %d, want 2 from the environment", c.DB.PoolSize)
	}
}

func TestLoadOSEnviron(t *testing.T) {
	t.Setenv("DB_POOL_SIZE", "9")
	t.Setenv("DB_URL", "mariadb://root@localhost/test")
	c, err := Load(Source{}) // Environ nil: os.Environ
	if err != nil {
		t.Fatal(err)
	}
	if c.DB.PoolSize != 9 || c.DB.URL.Dialect() != MySQL {
		t.Errorf("os environment not read: %s", c)
	}
}

func TestLoadIgnoresUnrelatedEnvironment(t *testing.T) {
	c, err := Load(Source{Environ: environ(
		"DB_FOO=bar", "PATH=/usr/bin:/bin", "HOME=/root", "DB=x", "DB_=y",
		"db_pool_size=abc", // not the setting's name: ignored
		"DB_POOL_SIZE_EXTRA=abc", "XDB_POOL_SIZE=abc", "DATABASE_URL=oracle://x",
		"NOEQUALS", "=weird",
	)})
	if err != nil {
		t.Fatalf("unrelated variables caused an error: %v", err)
	}
	if got, want := c.String(), Default().String(); got != want {
		t.Errorf("unrelated variables changed the config: %s", got)
	}
}

func TestLoadFileValues(t *testing.T) {
	path := writeFile(t, `
DB_URL: "postgresql+asyncpg://app:`+pw+`@db:5432/app"
DB_POOL_PRE_PING: false
DB_POOL_RECYCLE: 0
DB_POOL_TIMEOUT: 0.5
DB_CONNECT_TIMEOUT: 30
DB_COMMAND_TIMEOUT: "1m30s"
`)
	c, err := Load(Source{File: path, Environ: environ()})
	if err != nil {
		t.Fatal(err)
	}
	d := c.DB
	if d.URL.Dialect() != Postgres || d.PoolPrePing || d.PoolRecycle != 0 || d.PoolTimeout != 500*time.Millisecond ||
		d.ConnectTimeout != 30*time.Second || d.CommandTimeout != 90*time.Second {
		t.Errorf("file values not applied: %s", c)
	}
	assertNoSecret(t, "Config.String()", c.String())
}

func TestLoadFileUnknownKey(t *testing.T) {
	tests := []struct {
		yaml string
		keys []string
	}{
		{"DB_POOL_SIZE: 7\nDB_POOLSIZE: 8\n", []string{"DB_POOLSIZE"}},
		{"db:\n  pool_size: 7\n  pool_sise: 8\n", []string{"db.pool_sise"}},
		{"DB_URL: postgres://u:" + pw + "@h/db\nDB_PASSWORD: " + pw + "\nlog_level: debug\n", []string{"DB_PASSWORD", "log_level"}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.keys, ","), func(t *testing.T) {
			path := writeFile(t, tt.yaml)
			_, err := Load(Source{File: path, Environ: environ()})
			if err == nil {
				t.Fatal("Load accepted an unknown key")
			}
			msg := err.Error()
			for _, k := range tt.keys {
				if !strings.Contains(msg, k) {
					t.Errorf("error %q does not name the unknown key %q", msg, k)
				}
			}
			for _, w := range []string{path, "accepted:", "DB_POOL_SIZE"} {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not contain %q", msg, w)
				}
			}
			assertNoSecret(t, "error", msg)
		})
	}
}

func TestLoadFileErrors(t *testing.T) {
	_, err := Load(Source{File: filepath.Join(t.TempDir(), "missing.yaml"), Environ: environ()})
	if err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("missing file: err = %v, want one naming the file", err)
	}
	path := writeFile(t, "DB_POOL_SIZE: [1, 2\n")
	if _, err := Load(Source{File: path, Environ: environ()}); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("malformed YAML: err = %v, want one naming the file", err)
	}
}

func TestLoadUnknownFlag(t *testing.T) {
	_, err := Load(Source{Environ: environ(), Flags: map[string]string{"DB_NOPE": "1"}})
	if err == nil || !strings.Contains(err.Error(), "DB_NOPE") {
		t.Errorf("err = %v, want one naming DB_NOPE", err)
	}
}

func TestParseDuration(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"30s", 30 * time.Second, true},
		{"30", 30 * time.Second, true},
		{"0.5", 500 * time.Millisecond, true},
		{"1m30s", 90 * time.Second, true},
		{"500ms", 500 * time.Millisecond, true},
		{"1h", time.Hour, true},
		{"3600", time.Hour, true},
		{" 30s ", 30 * time.Second, true},
		{"\t10\n", 10 * time.Second, true},
		{"0", 0, true},
		{"0s", 0, true},
		{"1.5h", 90 * time.Minute, true},
		{"1e3", 1000 * time.Second, true},
		{"-1", -time.Second, true}, // the settings reject it; ParseDuration does not
		{"-1s", -time.Second, true},
		{"", 0, false},
		{"   ", 0, false},
		{"abc", 0, false},
		{"30x", 0, false},
		{"s", 0, false},
		{"1,5", 0, false},
		{"NaN", 0, false},
		{"nan", 0, false},
		{"Inf", 0, false},
		{"-Inf", 0, false},
		{"+Inf", 0, false},
		{"1e300", 0, false},
		{"-1e300", 0, false},
		{"9223372037", 0, false},           // just over the largest Duration in seconds
		{"9223372036.854775807", 0, false}, // rounds to 2^63 ns, which overflows
		{"-9223372036.854775808", math.MinInt64, true},
		{"9999999999h", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseDuration(tt.in)
			if tt.ok {
				if err != nil {
					t.Fatalf("ParseDuration(%q): %v", tt.in, err)
				}
				if got != tt.want {
					t.Errorf("ParseDuration(%q) = %v, want %v", tt.in, got, tt.want)
				}
				return
			}
			if err == nil {
				t.Errorf("ParseDuration(%q) = %v (%d ns), want an error", tt.in, got, int64(got))
			}
		})
	}
}

func TestParseBool(t *testing.T) {
	for _, in := range []string{"true", "TRUE", "True", "1", "yes", "YES", "on", "On", "t", "y", " true "} {
		if b, err := ParseBool(in); err != nil || !b {
			t.Errorf("ParseBool(%q) = %v, %v; want true", in, b, err)
		}
	}
	for _, in := range []string{"false", "FALSE", "0", "no", "off", "OFF", "f", "n", "\tfalse\n"} {
		if b, err := ParseBool(in); err != nil || b {
			t.Errorf("ParseBool(%q) = %v, %v; want false", in, b, err)
		}
	}
	for _, in := range []string{"", "2", "maybe", "enabled", "truee", "-1", "nope"} {
		if _, err := ParseBool(in); err == nil {
			t.Errorf("ParseBool(%q) accepted", in)
		}
	}
}

// TestLoadValues checks accepted and rejected values of every setting, as
// given in the environment.
func TestLoadValues(t *testing.T) {
	tests := []struct {
		name, value string
		ok          bool
		check       func(DB) bool
	}{
		{"DB_POOL_SIZE", "1", true, func(d DB) bool { return d.PoolSize == 1 }},
		{"DB_POOL_SIZE", " 20 ", true, func(d DB) bool { return d.PoolSize == 20 }},
		{"DB_POOL_SIZE", "0", false, nil},
		{"DB_POOL_SIZE", "-1", false, nil},
		{"DB_POOL_SIZE", "abc", false, nil},
		{"DB_POOL_SIZE", "", false, nil},
		{"DB_POOL_SIZE", "1.5", false, nil},
		{"DB_POOL_SIZE", "99999999999999999999", false, nil},
		{"DB_MAX_OVERFLOW", "0", true, func(d DB) bool { return d.MaxOverflow == 0 }},
		{"DB_MAX_OVERFLOW", "-1", false, nil},
		{"DB_POOL_TIMEOUT", "30s", true, func(d DB) bool { return d.PoolTimeout == 30*time.Second }},
		{"DB_POOL_TIMEOUT", "30", true, func(d DB) bool { return d.PoolTimeout == 30*time.Second }},
		{"DB_POOL_TIMEOUT", "0.5", true, func(d DB) bool { return d.PoolTimeout == 500*time.Millisecond }},
		{"DB_POOL_TIMEOUT", "1m30s", true, func(d DB) bool { return d.PoolTimeout == 90*time.Second }},
		{"DB_POOL_TIMEOUT", "500ms", true, func(d DB) bool { return d.PoolTimeout == 500*time.Millisecond }},
		{"DB_POOL_TIMEOUT", "0", false, nil},
		{"DB_POOL_TIMEOUT", "0s", false, nil},
		{"DB_POOL_TIMEOUT", "-1", false, nil},
		{"DB_POOL_TIMEOUT", "-1s", false, nil},
		{"DB_POOL_TIMEOUT", "abc", false, nil},
		{"DB_POOL_TIMEOUT", "", false, nil},
		{"DB_POOL_TIMEOUT", "NaN", false, nil},
		{"DB_POOL_RECYCLE", "0", true, func(d DB) bool { return d.PoolRecycle == 0 }},
		{"DB_POOL_RECYCLE", "240", true, func(d DB) bool { return d.PoolRecycle == 4*time.Minute }},
		{"DB_POOL_RECYCLE", "-1", false, nil},
		{"DB_POOL_RECYCLE", "abc", false, nil},
		{"DB_POOL_RECYCLE", "", false, nil},
		{"DB_CONNECT_TIMEOUT", "5s", true, func(d DB) bool { return d.ConnectTimeout == 5*time.Second }},
		{"DB_CONNECT_TIMEOUT", "0", false, nil},
		{"DB_CONNECT_TIMEOUT", "-1", false, nil},
		{"DB_COMMAND_TIMEOUT", "0", true, func(d DB) bool { return d.CommandTimeout == 0 }},
		{"DB_COMMAND_TIMEOUT", "2.5", true, func(d DB) bool { return d.CommandTimeout == 2500*time.Millisecond }},
		{"DB_COMMAND_TIMEOUT", "-1", false, nil},
		{"DB_COMMAND_TIMEOUT", "abc", false, nil},
		{"DB_POOL_PRE_PING", "false", true, func(d DB) bool { return !d.PoolPrePing }},
		{"DB_POOL_PRE_PING", "0", true, func(d DB) bool { return !d.PoolPrePing }},
		{"DB_POOL_PRE_PING", "off", true, func(d DB) bool { return !d.PoolPrePing }},
		{"DB_POOL_PRE_PING", "maybe", false, nil},
		{"DB_POOL_PRE_PING", "", false, nil},
		{"DB_ECHO", "true", true, func(d DB) bool { return d.Echo }},
		{"DB_ECHO", "YES", true, func(d DB) bool { return d.Echo }},
		{"DB_ECHO", "on", true, func(d DB) bool { return d.Echo }},
		{"DB_ECHO", "2", false, nil},
		{"DB_APPLICATION_NAME", "my-app 1.0", true, func(d DB) bool { return d.ApplicationName == "my-app 1.0" }},
		{"DB_APPLICATION_NAME", strings.Repeat("a", 63), true, func(d DB) bool { return len(d.ApplicationName) == 63 }},
		{"DB_APPLICATION_NAME", strings.Repeat("a", 64), false, nil},
		{"DB_APPLICATION_NAME", "", false, nil},
		{"DB_APPLICATION_NAME", "tab\there", false, nil},
		{"DB_APPLICATION_NAME", "caf\u00e9", false, nil},
		{"DB_URL", ":memory:", true, func(d DB) bool { return d.URL.Memory() }},
		{"DB_URL", "postgres://u@h/db", true, func(d DB) bool { return d.URL.Dialect() == Postgres }},
		{"DB_URL", "", false, nil},
		{"DB_URL", "oracle://h/db", false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name+"="+tt.value, func(t *testing.T) {
			c, err := Load(Source{Environ: environ(tt.name + "=" + tt.value)})
			if tt.ok {
				if err != nil {
					t.Fatalf("Load: %v", err)
				}
				if !tt.check(c.DB) {
					t.Errorf("%s=%q gave %s", tt.name, tt.value, c)
				}
				return
			}
			errs := settingErrors(t, err)
			if len(errs) != 1 {
				t.Fatalf("got %d errors, want exactly 1: %v", len(errs), err)
			}
			e := errs[0]
			if e.Setting != tt.name || e.Source != "environment" || e.Value != tt.value || e.Problem == "" || e.Accepts == "" {
				t.Errorf("error = %+v", *e)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, tt.name+"=") || !strings.Contains(msg, "(environment)") || !strings.Contains(msg, "accepted: ") {
				t.Errorf("error %q does not name %s, its source and what is accepted", msg, tt.name)
			}
			if !c.DB.URL.IsZero() || c.DB.PoolSize != 0 {
				t.Errorf("Load returned a non-zero Config with its error: %s", c)
			}
		})
	}
}

// TestLoadBadValues covers each bad value of the issue: the error names the
// variable, shows the value with the password redacted and says what is
// accepted.
func TestLoadBadValues(t *testing.T) {
	tests := []struct {
		env     string // NAME=value
		setting string
		value   string // Error.Value: the value as shown
		want    []string
	}{
		{"DB_POOL_SIZE=-3", "DB_POOL_SIZE", "-3", []string{`DB_POOL_SIZE="-3" (environment)`, "must be >= 1", "accepted: an integer >= 1 (default 5)"}},
		{"DB_POOL_SIZE=abc", "DB_POOL_SIZE", "abc", []string{`DB_POOL_SIZE="abc" (environment)`, "not an integer", "accepted: an integer >= 1"}},
		{"DB_POOL_TIMEOUT=abc", "DB_POOL_TIMEOUT", "abc", []string{`DB_POOL_TIMEOUT="abc"`, "not a duration", "accepted: a duration > 0", "30s", "0.5"}},
		{"DB_POOL_RECYCLE=-1", "DB_POOL_RECYCLE", "-1", []string{`DB_POOL_RECYCLE="-1"`, "must be >= 0", "accepted: a duration >= 0"}},
		{"DB_ECHO=maybe", "DB_ECHO", "maybe", []string{`DB_ECHO="maybe"`, "not a boolean", "accepted: true or false"}},
		{"DB_URL=oracle://scott:" + pw + "@host/orcl", "DB_URL", "oracle://scott:xxxxx@host/orcl",
			[]string{`DB_URL="oracle://scott:xxxxx@host/orcl" (environment)`, `unknown scheme "oracle"`, "accepted: postgres://", "mysql://", "sqlite://"}},
		{"DB_URL=postgres://u:" + pw + "@host:notaport/db", "DB_URL", "postgres://u:xxxxx@host:notaport/db",
			[]string{`DB_URL="postgres://u:xxxxx@host:notaport/db"`, "not a valid URL", "accepted: postgres://"}},
		{"DB_URL=postgres://u:" + pw + "@/db", "DB_URL", "postgres://u:xxxxx@/db",
			[]string{`DB_URL="postgres://u:xxxxx@/db"`, "no host", "accepted: postgres://"}},
		{"DB_URL=mysql://root:" + pw + "@/test", "DB_URL", "mysql://root:xxxxx@/test", []string{"no host", "accepted: "}},
		{"DB_URL=mysql://root:" + pw + "@localhost:3306", "DB_URL", "mysql://root:xxxxx@localhost:3306", []string{"no database name"}},
		{"OUTBOX_STREAM_REPLICAS=7", "OUTBOX_STREAM_REPLICAS", "7", []string{`OUTBOX_STREAM_REPLICAS="7" (environment)`, "must be <= 5", "accepted: an integer from 1 to 5 (default 1)"}},
		{"OUTBOX_STREAM_REPLICAS=0", "OUTBOX_STREAM_REPLICAS", "0", []string{`OUTBOX_STREAM_REPLICAS="0" (environment)`, "must be >= 1", "accepted: an integer from 1 to 5"}},
		{"OUTBOX_STREAM_REPLICAS=three", "OUTBOX_STREAM_REPLICAS", "three", []string{"not an integer", "accepted: an integer from 1 to 5"}},
		{"DB_URL=postgres://u@host/db?sslpassword=" + pw + "&port=x", "DB_URL", "", nil}, // valid: no error expected below
	}
	for _, tt := range tests {
		t.Run(tt.env, func(t *testing.T) {
			_, err := Load(Source{Environ: environ(tt.env)})
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Load: %v", err)
				}
				return
			}
			errs := settingErrors(t, err)
			if len(errs) != 1 {
				t.Fatalf("got %d errors, want exactly 1: %v", len(errs), err)
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("errors.As(*Error) failed on %v", err)
			}
			if e.Setting != tt.setting || e.Source != "environment" || e.Value != tt.value {
				t.Errorf("error = %+v, want Setting %s, Source environment, Value %q", *e, tt.setting, tt.value)
			}
			msg := err.Error()
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not contain %q", msg, w)
				}
			}
			assertNoSecret(t, "error", msg)
			assertNoSecret(t, "Error.Value", e.Value)
			assertNoSecret(t, "Error.Problem", e.Problem)
			assertNoSecret(t, "error %+v", fmt.Sprintf("%+v", e))
		})
	}
}

// TestLoadBadURLRedactsOddPasswords: passwords with characters that are
// awkward in URLs must still be redacted in the error.
func TestLoadBadURLRedactsOddPasswords(t *testing.T) {
	for _, secret := range []string{"pa,ss-" + pw, "p@ss-" + pw, "p:ss-" + pw, "p/ss-" + pw, "p ss-" + pw, "p?ss-" + pw, "p#ss-" + pw} {
		for _, raw := range []string{
			"postgres://u:" + secret + "@/db",
			"postgres://u:" + secret + "@host:notaport/db",
			"oracle://u:" + secret + "@host/db",
			"mysql://root:" + secret + "@host",
		} {
			t.Run(raw, func(t *testing.T) {
				_, err := Load(Source{Environ: environ("DB_URL=" + raw)})
				if err == nil {
					t.Skip("accepted") // e.g. '#' starts a fragment; nothing is shown
				}
				errs := settingErrors(t, err)
				if len(errs) != 1 || errs[0].Setting != "DB_URL" {
					t.Fatalf("errors = %v, want one DB_URL error", err)
				}
				assertNoSecret(t, "error", err.Error(), pw)
			})
		}
	}
}

func TestLoadMultipleBadValues(t *testing.T) {
	_, err := Load(Source{Environ: environ(
		"DB_POOL_SIZE=abc",
		"DB_MAX_OVERFLOW=-1",
		"DB_URL=postgres://u:"+pw+"@/db",
		"DB_ECHO=maybe",
		"DB_POOL_TIMEOUT=0",
	)})
	errs := settingErrors(t, err)
	got := map[string]int{}
	for _, e := range errs {
		got[e.Setting]++
	}
	want := []string{"DB_URL", "DB_POOL_SIZE", "DB_MAX_OVERFLOW", "DB_POOL_TIMEOUT", "DB_ECHO"}
	if len(errs) != len(want) {
		t.Errorf("got %d errors, want %d (one per bad setting): %v", len(errs), len(want), err)
	}
	for _, w := range want {
		if got[w] != 1 {
			t.Errorf("%d errors for %s, want 1", got[w], w)
		}
	}
	// In the order of Settings(), one per line.
	lines := strings.Split(err.Error(), "\n")
	for i, w := range want {
		if i < len(lines) && !strings.HasPrefix(lines[i], w+"=") {
			t.Errorf("line %d = %q, want it to start with %s=", i, lines[i], w)
		}
	}
	assertNoSecret(t, "error", err.Error())
}

func TestLoadErrorSource(t *testing.T) {
	path := writeFile(t, "DB_POOL_SIZE: zero\ndb:\n  url: \"postgres://u:"+pw+"@/db\"\n")
	_, err := Load(Source{File: path, Environ: environ()})
	errs := settingErrors(t, err)
	if len(errs) != 2 {
		t.Fatalf("got %d errors, want 2: %v", len(errs), err)
	}
	for _, e := range errs {
		if e.Source != "file "+path {
			t.Errorf("%s: Source = %q, want %q", e.Setting, e.Source, "file "+path)
		}
	}
	assertNoSecret(t, "error", err.Error())

	// A bad value from a flag names the flag, even if the environment set
	// the same setting to a good value.
	_, err = Load(Source{
		Environ: environ("DB_URL=sqlite://ok.db"),
		Flags:   map[string]string{"DB_URL": "postgres://u:" + pw + "@host:notaport/db"},
	})
	errs = settingErrors(t, err)
	if len(errs) != 1 {
		t.Fatalf("got %d errors, want 1: %v", len(errs), err)
	}
	if e := errs[0]; e.Setting != "DB_URL" || e.Source != "flag --db-url" {
		t.Errorf("error = %+v, want Setting DB_URL, Source flag --db-url", *e)
	}
	if msg := err.Error(); !strings.Contains(msg, "--db-url") || !strings.Contains(msg, "DB_URL") {
		t.Errorf("error %q does not name the flag --db-url", msg)
	}
	assertNoSecret(t, "error", err.Error())

	// A bad flag for a numeric setting.
	_, err = Load(Source{Environ: environ(), Flags: map[string]string{"DB_POOL_SIZE": "-3"}})
	errs = settingErrors(t, err)
	if len(errs) != 1 || errs[0].Source != "flag --db-pool-size" {
		t.Errorf("errors = %v, want one from flag --db-pool-size", err)
	}

	// A bad value in the environment overridden by a good flag is no error.
	if _, err := Load(Source{Environ: environ("DB_POOL_SIZE=abc"), Flags: map[string]string{"DB_POOL_SIZE": "4"}}); err != nil {
		t.Errorf("a flag did not override a bad environment value: %v", err)
	}
}

func TestErrorString(t *testing.T) {
	e := &Error{Setting: "DB_POOL_SIZE", Source: "environment", Value: "abc", Problem: "not an integer", Accepts: "an integer >= 1"}
	want := `DB_POOL_SIZE="abc" (environment): not an integer; accepted: an integer >= 1`
	if got := e.Error(); got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}

func TestConfigNeverShowsPassword(t *testing.T) {
	for _, raw := range []string{
		"postgres://app:" + pw + "@db:5432/app?sslmode=require",
		"postgresql+asyncpg://app:" + pw + "@db/app?password=" + pw,
		"mysql://root:" + pw + "@[::1]:3306/test?sslpassword=" + pw,
		"mariadb://root:" + pw + "@host/test",
		"sqlite://app.db?_pragma=key('" + pw + "')",
		"file:app.db?password=" + pw,
	} {
		t.Run(raw, func(t *testing.T) {
			c, err := Load(Source{Environ: environ("DB_URL=" + raw)})
			if err != nil {
				t.Fatal(err)
			}
			if c.DB.URL.Secret() != raw {
				t.Errorf("Secret() = %q, want the input", c.DB.URL.Secret())
			}
			s := c.String()
			if !strings.Contains(s, "DB_URL=") || !strings.Contains(s, "DB_POOL_SIZE=5") {
				t.Errorf("String() = %q", s)
			}
			assertNoSecret(t, "Config.String()", s)
			assertNoSecret(t, "DB.String()", c.DB.String())
			for _, verb := range []string{"%v", "%+v", "%s", "%#v"} {
				assertNoSecret(t, "fmt "+verb+" Config", fmt.Sprintf(verb, c))
				assertNoSecret(t, "fmt "+verb+" DB", fmt.Sprintf(verb, c.DB))
				assertNoSecret(t, "fmt "+verb+" URL", fmt.Sprintf(verb, c.DB.URL))
				assertNoSecret(t, "fmt "+verb+" *Config", fmt.Sprintf(verb, &c))
			}
			assertNoSecret(t, "fmt.Sprint", fmt.Sprint(c))
			assertNoSecret(t, "fmt.Sprintln", fmt.Sprintln(c.DB.URL))

			var buf bytes.Buffer
			log := slog.New(slog.NewJSONHandler(&buf, nil))
			log.Info("x", "cfg", c)
			log.Info("x", "db", c.DB)
			log.Info("x", "url", c.DB.URL)
			assertNoSecret(t, "slog JSON", buf.String())
			var rec struct {
				Cfg map[string]string `json:"cfg"`
			}
			first, _, _ := strings.Cut(buf.String(), "\n")
			if err := json.Unmarshal([]byte(first), &rec); err != nil {
				t.Fatalf("slog output %q: %v", first, err)
			}
			if got, want := rec.Cfg["DB_URL"], c.DB.URL.String(); got != want {
				t.Errorf("slog cfg.DB_URL = %q, want %q", got, want)
			}
			if rec.Cfg["DB_POOL_SIZE"] != "5" || rec.Cfg["DB_APPLICATION_NAME"] != "bento" {
				t.Errorf("slog cfg = %v", rec.Cfg)
			}

			buf.Reset()
			slog.New(slog.NewTextHandler(&buf, nil)).Info("x", "cfg", c)
			assertNoSecret(t, "slog text", buf.String())

			for _, v := range []any{c, c.DB, c.DB.URL, &c} {
				j, err := json.Marshal(v)
				if err != nil {
					t.Fatal(err)
				}
				assertNoSecret(t, fmt.Sprintf("json.Marshal(%T)", v), string(j))
			}
		})
	}
}

func TestConfigString(t *testing.T) {
	c := Default()
	s := c.String()
	if !strings.HasPrefix(s, "DB_URL=sqlite://bento.db DB_POOL_SIZE=5 ") {
		t.Errorf("String() = %q, want it to start with DB_URL and DB_POOL_SIZE", s)
	}
	fields := map[string]bool{}
	for _, f := range strings.Fields(s) {
		fields[f] = true
	}
	if len(fields) != len(Settings()) {
		t.Errorf("String() has %d fields, want one per setting (%d): %s", len(fields), len(Settings()), s)
	}
	for _, d := range documented {
		if f := d.name + "=" + d.shown; !fields[f] {
			t.Errorf("String() = %q, want it to contain %q", s, f)
		}
	}
	if got := fmt.Sprint(c); got != s {
		t.Errorf("fmt.Sprint = %s, want String() %s", got, s)
	}
	// DB.String() renders the DB_* settings of the DB alone.
	ds := c.DB.String()
	for _, d := range documented {
		if f := d.name + "=" + d.shown; !strings.Contains(" "+ds+" ", " "+f+" ") {
			t.Errorf("DB.String() = %q, want it to contain %q", ds, f)
		}
	}
	v := c.LogValue()
	if v.Kind() != slog.KindGroup || len(v.Group()) != len(Settings()) {
		t.Fatalf("LogValue() = %v, want a group of %d settings", v, len(Settings()))
	}
	if a := v.Group()[0]; a.Key != "DB_URL" || a.Value.String() != "sqlite://bento.db" {
		t.Errorf("LogValue()[0] = %v", a)
	}
}

// OUTBOX_STREAM_REPLICAS defaults to 1 (a single server) and takes 1 to 5.
func TestOutboxStreamReplicas(t *testing.T) {
	if got := Default().Outbox.StreamReplicas; got != 1 {
		t.Errorf("default OUTBOX_STREAM_REPLICAS = %d, want 1", got)
	}
	for _, v := range []int{1, 3, 5} {
		c, err := Load(Source{Environ: environ(fmt.Sprintf("OUTBOX_STREAM_REPLICAS=%d", v))})
		if err != nil {
			t.Fatalf("OUTBOX_STREAM_REPLICAS=%d: %v", v, err)
		}
		if c.Outbox.StreamReplicas != v {
			t.Errorf("OUTBOX_STREAM_REPLICAS=%d gave %d", v, c.Outbox.StreamReplicas)
		}
	}
}
