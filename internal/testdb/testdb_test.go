package testdb

import (
	"slices"
	"strings"
	"testing"
)

// TestParseDialects: known names select their dialects; a typo or a list
// naming nothing is an error naming the value and the accepted names,
// where it used to select no dialect, so that Each ran zero subtests and
// passed.
func TestParseDialects(t *testing.T) {
	for v, want := range map[string][]string{
		"":                   All,
		"sqlite3,postgres":   {SQLite, Postgres},
		" PG , mariadb ":     {Postgres, MySQL},
		"sqlite,sqlite3,pg,": {SQLite, Postgres},
	} {
		got, err := ParseDialects(v)
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("ParseDialects(%q) = %v, %v; want %v", v, got, err, want)
		}
	}
	for _, v := range []string{"postgress", "sqlite3,oracle", ",", "mysql;pg"} {
		got, err := ParseDialects(v)
		if err == nil {
			t.Errorf("ParseDialects(%q) = %v, want an error", v, got)
			continue
		}
		for _, part := range []string{"BENTO_TEST_DIALECTS=", v, "accepted: ", "sqlite", "postgres", "mysql"} {
			if !strings.Contains(err.Error(), part) {
				t.Errorf("ParseDialects(%q) error %q does not contain %q", v, err, part)
			}
		}
	}
}

// TestDialectsPanicsOnTypo: Dialects, for callers without a *testing.T
// (benchmarks), refuses a typo too.
func TestDialectsPanicsOnTypo(t *testing.T) {
	t.Setenv("BENTO_TEST_DIALECTS", "postgress")
	defer func() {
		if r := recover(); r == nil || !strings.Contains(r.(error).Error(), `"postgress"`) {
			t.Errorf("Dialects with a typo: recovered %v, want a panic naming the value", r)
		}
	}()
	Dialects()
}
