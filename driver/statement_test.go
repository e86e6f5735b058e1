package driver

import "testing"

func TestIsDML(t *testing.T) {
	for q, want := range map[string]bool{
		"INSERT INTO t VALUES (1)":            true,
		"  /* c */ -- x\n update t set v = 1": true,
		"delete from t":                       true,
		"WITH s AS (INSERT INTO t VALUES (1) RETURNING v) INSERT INTO u SELECT v FROM s": true,
		"merge into t using u on true when matched then do nothing":                      true,
		"(insert into t values (1))":                                                     true,
		"LOCK TABLE t":                                                                   false,
		"SAVEPOINT x":                                                                    false,
		"set local x = 1":                                                                false,
		"select 1":                                                                       false,
		"inserted":                                                                       false,
		"update_t()":                                                                     false,
		"":                                                                               false,
	} {
		if got := isDML(q); got != want {
			t.Errorf("isDML(%q) = %t, want %t", q, got, want)
		}
	}
}
