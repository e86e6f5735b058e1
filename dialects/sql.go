package dialects

import (
	"strconv"
	"strings"

	"github.com/bento-go/bento/config"
)

// QuoteIdent quotes an SQL identifier (a table or column name) for the
// dialect: backticks on MySQL, double quotes elsewhere, with the quote
// character doubled inside.
func QuoteIdent(dialect, name string) string {
	if dialect == config.MySQL {
		return "`" + strings.ReplaceAll(name, "`", "``") + "`"
	}
	return `"` + strings.ReplaceAll(name, `"`, `""`) + `"`
}

// Placeholder returns the i-th (from 1) bind parameter of a statement:
// $i on PostgreSQL, ? elsewhere.
func Placeholder(dialect string, i int) string {
	if dialect == config.Postgres {
		return "$" + strconv.Itoa(i)
	}
	return "?"
}
