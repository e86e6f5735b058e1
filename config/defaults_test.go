package config

import (
	"strings"
	"testing"
)

// Source.Defaults replaces a setting's default and nothing else: the file,
// the environment and the flags still win over it.
func TestLoadSourceDefaults(t *testing.T) {
	def := map[string]string{"DB_URL": "sqlite://bento-bench.db"}
	url := func(src Source) string {
		t.Helper()
		src.Defaults = def
		c, err := Load(src)
		if err != nil {
			t.Fatal(err)
		}
		return c.DB.URL.String()
	}
	if got := url(Source{Environ: environ()}); got != "sqlite://bento-bench.db" {
		t.Errorf("nothing set: DB_URL = %s, want the command's default", got)
	}
	if got := url(Source{Environ: environ("DB_URL=sqlite://bento.db")}); got != "sqlite://bento.db" {
		t.Errorf("set in the environment to the usual default: DB_URL = %s, want the environment's", got)
	}
	if got := url(Source{Environ: environ(), File: writeFile(t, "DB_URL: sqlite://file.db\n")}); got != "sqlite://file.db" {
		t.Errorf("set in the file: DB_URL = %s, want the file's", got)
	}
	if got := url(Source{Environ: environ(), Flags: map[string]string{"DB_URL": "sqlite://flag.db"}}); got != "sqlite://flag.db" {
		t.Errorf("set by a flag: DB_URL = %s, want the flag's", got)
	}
	_, err := Load(Source{Environ: environ(), Defaults: map[string]string{"DB_NOPE": "1"}})
	if err == nil || !strings.Contains(err.Error(), "DB_NOPE") {
		t.Errorf("an unknown setting in Defaults: %v, want an error naming it", err)
	}
}
