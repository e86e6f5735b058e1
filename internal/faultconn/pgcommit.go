package faultconn

import (
	"bytes"
	"encoding/binary"
	"strings"
)

// PGCommits recognises COMMITs among the frontend messages of one
// PostgreSQL connection, in both protocols: a simple query ('Q') whose
// text is COMMIT, or an extended-protocol Bind ('B') of a statement that
// was parsed ('P') from COMMIT. pgx sends a transaction's COMMIT as a
// simple query, and a COMMIT pipelined with other statements (a pgx batch;
// driver.Tx.DeferExec) in the extended protocol, prepared once per
// connection and later bound by name. Use one PGCommits per connection.
type PGCommits struct {
	stmts map[string]bool // prepared statement name → its text is COMMIT
}

// IsCommit reports whether msg, one complete typed message (type byte,
// int32 length, body), starts a COMMIT. It records the statements msg
// prepares.
func (c *PGCommits) IsCommit(msg []byte) bool {
	if len(msg) < 5 {
		return false
	}
	body := msg[5:]
	switch msg[0] {
	case 'Q':
		return isCommitText(cstring(body))
	case 'P':
		name := cstring(body)
		query := cstring(body[min(len(name)+1, len(body)):])
		if c.stmts == nil {
			c.stmts = map[string]bool{}
		}
		c.stmts[name] = isCommitText(query)
	case 'B':
		portal := cstring(body)
		stmt := cstring(body[min(len(portal)+1, len(body)):])
		return c.stmts[stmt]
	}
	return false
}

// SplitPG cuts b, the bytes of one write, into typed PostgreSQL messages.
// It reports false if b is not a whole number of them (a startup message,
// say, or another protocol).
func SplitPG(b []byte) ([][]byte, bool) {
	var msgs [][]byte
	for len(b) > 0 {
		if len(b) < 5 || b[0] < 'A' || b[0] > 'z' {
			return nil, false
		}
		n := int(binary.BigEndian.Uint32(b[1:5]))
		if n < 4 || 1+n > len(b) {
			return nil, false
		}
		msgs = append(msgs, b[:1+n])
		b = b[1+n:]
	}
	return msgs, true
}

func cstring(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		return string(b[:i])
	}
	return string(b)
}

// isCommitText reports whether a statement's text is COMMIT (any case,
// surrounding blanks and one semicolon allowed; also COMMIT TRANSACTION
// and END).
func isCommitText(q string) bool {
	q = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(q), ";"))
	return strings.EqualFold(q, "commit") || strings.EqualFold(q, "commit transaction") || strings.EqualFold(q, "end")
}
