package driver

import "strings"

// IsReadOnly reports whether query only reads: it starts (after blanks and
// comments) with SELECT, SHOW or VALUES and does not lock rows (FOR UPDATE,
// FOR SHARE, FOR NO KEY UPDATE, FOR KEY SHARE, LOCK IN SHARE MODE).
// Anything else, including WITH (a CTE may write) and INSERT … RETURNING
// sent through Query, is a write. A SELECT of a function with side effects
// still counts as a read: such statements are safe to repeat only if the
// function is.
func IsReadOnly(query string) bool {
	q := skipBlanks(query)
	if !hasPrefixFold(q, "select") && !hasPrefixFold(q, "show") && !hasPrefixFold(q, "values") {
		return false
	}
	return !locksRows(q)
}

// isDML reports whether query starts (after blanks and comments) with
// INSERT, UPDATE, DELETE, MERGE or WITH: a statement that reads and writes
// rows and nothing else, which PostgreSQL runs alike in an explicit
// transaction block and in the implicit transaction of a pipeline.
func isDML(query string) bool {
	q := skipBlanks(query)
	for _, kw := range [...]string{"insert", "update", "delete", "merge", "with"} {
		if hasPrefixFold(q, kw) && (len(q) == len(kw) || !isWordByte(q[len(kw)])) {
			return true
		}
	}
	return false
}

func isWordByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c >= 0x80
}

// locksRows reports whether a SELECT takes row locks.
func locksRows(q string) bool {
	// Fast path: no " FOR " / "LOCK IN" anywhere.
	for i := 0; i+3 <= len(q); i++ {
		c := q[i] | 0x20
		if c == 'f' && i > 0 && isSpace(q[i-1]) && hasPrefixFold(q[i:], "for") && i+3 < len(q) && isSpace(q[i+3]) {
			rest := skipBlanks(q[i+3:])
			if hasPrefixFold(rest, "update") || hasPrefixFold(rest, "share") || hasPrefixFold(rest, "no key update") || hasPrefixFold(rest, "key share") {
				return true
			}
		}
		if c == 'l' && i > 0 && isSpace(q[i-1]) && hasPrefixFold(q[i:], "lock in share mode") {
			return true
		}
	}
	return false
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '(' || c == ')'
}

// skipBlanks drops leading whitespace, -- comments and /* */ comments.
func skipBlanks(q string) string {
	for {
		q = strings.TrimLeft(q, " \t\r\n\f(")
		switch {
		case strings.HasPrefix(q, "--"):
			i := strings.IndexByte(q, '\n')
			if i < 0 {
				return ""
			}
			q = q[i+1:]
		case strings.HasPrefix(q, "/*"):
			i := strings.Index(q, "*/")
			if i < 0 {
				return ""
			}
			q = q[i+2:]
		default:
			return q
		}
	}
}

func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}
