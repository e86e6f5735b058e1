package faultconn

import (
	"encoding/binary"
	"testing"
)

// msg builds a typed PostgreSQL message from its type and its body's
// fields, each ended by a zero byte.
func msg(typ byte, fields ...string) []byte {
	var body []byte
	for _, f := range fields {
		body = append(append(body, f...), 0)
	}
	b := []byte{typ, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], uint32(4+len(body)))
	return append(b, body...)
}

// TestPGCommits: which messages start a commit. Explicit COMMITs, simple
// or bound; the Sync that ends an implicit transaction that wrote; never
// a Sync inside a transaction block, after reads only, or after nothing.
func TestPGCommits(t *testing.T) {
	parse := func(name, query string) []byte { return msg('P', name, query) }
	bind := func(name string) []byte { return msg('B', "", name) }
	sync := msg('S')
	steps := []struct {
		what   string
		msg    []byte
		commit bool
	}{
		{"prepare BEGIN", parse("b", "begin"), false},
		{"prepare COMMIT", parse("c", "COMMIT;"), false},
		{"prepare an insert", parse("i", "INSERT INTO t VALUES ($1)"), false},
		{"prepare a read", parse("s", " SELECT\n\tnextval('s')"), false},
		{"prepare ROLLBACK TO", parse("r", "ROLLBACK TO SAVEPOINT x"), false},

		{"a read", bind("s"), false},
		{"its Sync: a read commits nothing", sync, false},
		{"a Sync with nothing before", sync, false},

		{"BEGIN", bind("b"), false},
		{"an insert in the block", bind("i"), false},
		{"ROLLBACK TO keeps the block", bind("r"), false},
		{"COMMIT", bind("c"), true},
		{"the Sync after COMMIT", sync, false},

		{"an insert, no block", bind("i"), false},
		{"another", bind("i"), false},
		{"the Sync commits the implicit transaction", sync, true},

		{"BEGIN again", msg('Q', "BEGIN ISOLATION LEVEL SERIALIZABLE"), false},
		{"an insert", bind("i"), false},
		{"a Sync inside the block", sync, false},
		{"a simple COMMIT", msg('Q', "commit"), true},
		{"a simple insert (autocommitted, not a pipeline)", msg('Q', "insert into t values (1)"), false},
		{"an unnamed statement", parse("", "UPDATE t SET v = 1"), false},
		{"bound", bind(""), false},
		{"its Sync", sync, true},
	}
	var c PGCommits
	for _, s := range steps {
		if got := c.IsCommit(s.msg); got != s.commit {
			t.Errorf("%s: IsCommit = %t, want %t", s.what, got, s.commit)
		}
	}
}
