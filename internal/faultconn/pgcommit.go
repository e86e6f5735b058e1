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
// connection and later bound by name.
//
// It also recognises the commit of an implicit transaction: the Sync ('S')
// that ends extended-protocol statements of which one writes, bound
// outside a transaction block (no BEGIN open). PostgreSQL runs the
// statements before a Sync as one transaction and commits it there; Bento
// sends a unit of work that is one round trip that way, without BEGIN and
// COMMIT. (A single statement with its Sync is such a transaction too.)
// Use one PGCommits per connection.
type PGCommits struct {
	stmts   pgStatements
	inBlock bool // a BEGIN was bound or sent, and no COMMIT or ROLLBACK since
	wrote   bool // a statement that writes was bound outside a block since the last Sync
}

// stmtKind is what a statement does to the transaction.
type stmtKind uint8

const (
	stmtRead stmtKind = iota
	stmtWrite
	stmtBegin
	stmtCommit
	stmtRollback
)

// IsCommit reports whether msg, one complete typed message (type byte,
// int32 length, body), starts a COMMIT: an explicit one, or the Sync that
// commits an implicit transaction that wrote. It records the statements
// msg prepares and the transaction block it opens or ends.
func (c *PGCommits) IsCommit(msg []byte) bool {
	if len(msg) >= 5 && msg[0] == 'S' {
		commit := c.wrote
		c.wrote = false
		return commit
	}
	query, extended, ok := c.stmts.sent(msg)
	if !ok {
		return false
	}
	switch kindOf(query) {
	case stmtBegin:
		c.inBlock = true
	case stmtCommit:
		c.inBlock = false
		return true
	case stmtRollback:
		c.inBlock = false
	case stmtWrite:
		// Extended: bound, to run at the next Sync at the latest.
		c.wrote = c.wrote || (extended && !c.inBlock)
	}
	return false
}

// pgStatements follows the statements of one PostgreSQL connection: the
// ones prepared, by name, and the one each message sends to run.
type pgStatements struct {
	prepared map[string]string // prepared statement name → text
}

// sent records the statement msg prepares (a Parse) and returns the text
// of the statement msg sends to run: a Bind's (extended) or a simple
// query's. ok is false for any other message.
func (s *pgStatements) sent(msg []byte) (query string, extended, ok bool) {
	if len(msg) < 5 {
		return "", false, false
	}
	body := msg[5:]
	switch msg[0] {
	case 'Q':
		return cstring(body), false, true
	case 'P':
		name := cstring(body)
		if s.prepared == nil {
			s.prepared = map[string]string{}
		}
		s.prepared[name] = cstring(body[min(len(name)+1, len(body)):])
	case 'B':
		portal := cstring(body)
		return s.prepared[cstring(body[min(len(portal)+1, len(body)):])], true, true
	}
	return "", false, false
}

// PGBound records, by their text, the statements a client sends to run on
// one PostgreSQL connection: bound (extended protocol; a statement is
// named by its Parse) or sent as simple queries. Tests use it to see on
// the wire which statements a transaction sent (BEGIN and COMMIT, say).
type PGBound struct {
	stmts pgStatements
	Texts []string // the statements sent, in order
}

// Record records what one write's bytes send. A write that is not a whole
// number of typed messages (the startup message) records nothing.
func (b *PGBound) Record(p []byte) {
	msgs, ok := SplitPG(p)
	if !ok {
		return
	}
	for _, m := range msgs {
		if query, _, ok := b.stmts.sent(m); ok {
			b.Texts = append(b.Texts, query)
		}
	}
}

// Count returns how many of the statements sent are BEGIN (START
// TRANSACTION too) and how many COMMIT (END too).
func (b *PGBound) Count() (begins, commits int) {
	for _, q := range b.Texts {
		switch kindOf(q) {
		case stmtBegin:
			begins++
		case stmtCommit:
			commits++
		}
	}
	return begins, commits
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

// kindOf classifies a statement's text (any case, surrounding blanks and
// one semicolon allowed): COMMIT (also COMMIT TRANSACTION and END), BEGIN
// (also START TRANSACTION, with options), ROLLBACK (also ABORT; not
// ROLLBACK TO a savepoint), a read (SELECT, SHOW, VALUES) or, for
// anything else, a write.
func kindOf(q string) stmtKind {
	q = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(q), ";"))
	first, rest := q, ""
	if i := strings.IndexAny(q, " \t\r\n("); i >= 0 {
		first, rest = q[:i], strings.TrimSpace(q[i:])
	}
	switch strings.ToLower(first) {
	case "commit", "end":
		if rest == "" || strings.EqualFold(rest, "transaction") || strings.EqualFold(rest, "work") {
			return stmtCommit
		}
	case "begin":
		return stmtBegin
	case "start":
		if len(rest) >= 11 && strings.EqualFold(rest[:11], "transaction") {
			return stmtBegin
		}
	case "rollback", "abort":
		if !strings.Contains(strings.ToLower(rest), "to ") {
			return stmtRollback
		}
	case "select", "show", "values":
		return stmtRead
	}
	return stmtWrite
}
