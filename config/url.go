package config

import (
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Dialect names, exactly as ent spells them (entgo.io/ent/dialect).
const (
	Postgres = "postgres"
	MySQL    = "mysql"
	SQLite   = "sqlite3"
)

// acceptedURLs is what every URL error tells the user is accepted.
const acceptedURLs = "postgres://user:pass@host:5432/db, postgresql://…, mysql://user:pass@host:3306/db, " +
	"mariadb://…, sqlite://rel.db, sqlite:///abs/path.db, file:path.db, :memory: " +
	"(a SQLAlchemy-style +driver suffix such as postgresql+asyncpg:// is accepted)"

// redacted replaces every secret shown to a user.
const redacted = "xxxxx"

// secretParams are query parameters whose values are secrets, by their
// name lowercased with "-" and "_" removed. isSecretParam also takes any
// name that contains "pass", "secret", "token" or "credential" or ends in
// "key" (sslkey, apikey, private_key, accessKey, nkey, ...).
var secretParams = map[string]bool{
	"auth": true, "authorization": true, "sig": true, "signature": true,
	"jwt": true, "seed": true, "sas": true,
}

// URL is a parsed database URL. Its String method never shows a password.
//
// The zero URL is not valid; use ParseURL.
type URL struct {
	raw     string
	dialect string
	u       *url.URL // server dialects: the URL with its scheme normalised
	path    string   // SQLite: the file path; empty for an in-memory database
	memory  bool     // SQLite: :memory:
	query   url.Values
}

// ParseURL parses a database URL and detects its dialect from the scheme.
// The error names what is wrong with the URL, shows it with its password
// redacted and lists the accepted forms.
func ParseURL(raw string) (URL, error) {
	s := strings.TrimSpace(raw)
	if s == "" {
		return URL{}, fmt.Errorf("empty URL; accepted: %s", acceptedURLs)
	}
	if s == ":memory:" {
		return URL{raw: raw, dialect: SQLite, memory: true, query: url.Values{}}, nil
	}
	if strings.HasPrefix(s, "file:") {
		return parseSQLiteFile(raw, s)
	}
	scheme, _, ok := strings.Cut(s, "://")
	if !ok {
		return URL{}, fmt.Errorf("%q has no scheme; accepted: %s", redactString(s), acceptedURLs)
	}
	base, _, _ := strings.Cut(strings.ToLower(scheme), "+")
	switch base {
	case "postgres", "postgresql", "pgx":
		return parseServer(raw, s, scheme, Postgres, "postgres")
	case "mysql", "mariadb":
		return parseServer(raw, s, scheme, MySQL, "mysql")
	case "sqlite", "sqlite3":
		return parseSQLite(raw, s, scheme)
	default:
		return URL{}, fmt.Errorf("%q has unknown scheme %q; accepted: %s", redactString(s), scheme, acceptedURLs)
	}
}

func parseServer(raw, s, scheme, dialect, normalized string) (URL, error) {
	rest := s[len(scheme):]
	// A PostgreSQL URL may list several hosts (libpq's multi-host form,
	// h1:5432,h2:5433), which net/url cannot parse: each is checked here
	// and the list put back after parsing the rest with a placeholder.
	authStart := len("://")
	authEnd := len(rest)
	if i := strings.IndexAny(rest[authStart:], "/?#"); i >= 0 {
		authEnd = authStart + i
	}
	hosts := rest[authStart:authEnd]
	if at := strings.LastIndexByte(hosts, '@'); at >= 0 {
		hosts = hosts[at+1:]
	}
	multi := strings.Contains(hosts, ",")
	if multi {
		if dialect != Postgres {
			return URL{}, fmt.Errorf("%q lists several hosts, which only PostgreSQL URLs may; accepted: mysql://user:pass@host:3306/db", redactString(s))
		}
		for i, h := range strings.Split(hosts, ",") {
			if err := checkHostPort(h); err != nil {
				return URL{}, fmt.Errorf("%q: host %d of the list %s; accepted: postgres://user:pass@host1:5432,host2:5432/db", redactString(s), i+1, err)
			}
		}
		rest = rest[:authEnd-len(hosts)] + "multi-host" + rest[authEnd:]
	}
	u, err := url.Parse(normalized + rest)
	if err != nil {
		return URL{}, fmt.Errorf("%q is not a valid URL (%v); accepted: %s", redactString(s), unwrapURLError(err), acceptedURLs)
	}
	if multi {
		u.Host = hosts
		return URL{raw: raw, dialect: dialect, u: u, query: u.Query()}, nil
	}
	if u.Hostname() == "" {
		return URL{}, fmt.Errorf("%q has no host; accepted: %s", redactURL(u), acceptedURLs)
	}
	if p := u.Port(); p != "" {
		var n int
		if _, err := fmt.Sscanf(p, "%d", &n); err != nil || n < 1 || n > 65535 {
			return URL{}, fmt.Errorf("%q has invalid port %q; accepted: 1-65535", redactURL(u), p)
		}
	}
	if dialect == MySQL && strings.Trim(u.Path, "/") == "" {
		return URL{}, fmt.Errorf("%q has no database name; accepted: mysql://user:pass@host:3306/db", redactURL(u))
	}
	return URL{raw: raw, dialect: dialect, u: u, query: u.Query()}, nil
}

// checkHostPort checks one host[:port] of a host list ([v6addr]:port
// too).
func checkHostPort(h string) error {
	host, port := h, ""
	if strings.HasPrefix(h, "[") {
		end := strings.IndexByte(h, ']')
		if end < 0 {
			return fmt.Errorf("%q has no closing ]", h)
		}
		host, port = h[1:end], h[end+1:]
		if port != "" && !strings.HasPrefix(port, ":") {
			return fmt.Errorf("%q has %q after the address", h, port)
		}
		port = strings.TrimPrefix(port, ":")
	} else if i := strings.LastIndexByte(h, ':'); i >= 0 {
		host, port = h[:i], h[i+1:]
	}
	if host == "" {
		return errors.New("is empty")
	}
	if strings.ContainsAny(host, " /?#@[]") {
		return fmt.Errorf("%q is not a host name", host)
	}
	if port != "" {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("has invalid port %q (1-65535)", port)
		}
	}
	return nil
}

func parseSQLite(raw, s, scheme string) (URL, error) {
	rest := s[len(scheme)+len("://"):]
	path, rawQuery, _ := strings.Cut(rest, "?")
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		return URL{}, fmt.Errorf("%q has an invalid query (%v); accepted: %s", redactString(s), unwrapURLError(err), acceptedURLs)
	}
	if path, err = url.PathUnescape(path); err != nil {
		return URL{}, fmt.Errorf("%q has an invalid path (%v); accepted: %s", redactString(s), err, acceptedURLs)
	}
	switch path {
	case "":
		return URL{}, fmt.Errorf("%q has no file path; accepted: sqlite://rel.db, sqlite:///abs/path.db, sqlite://:memory:", redactString(s))
	case ":memory:", "/:memory:":
		return URL{raw: raw, dialect: SQLite, memory: true, query: q}, nil
	}
	return URL{raw: raw, dialect: SQLite, path: path, query: q}, nil
}

func parseSQLiteFile(raw, s string) (URL, error) {
	rest := strings.TrimPrefix(s, "file:")
	path, rawQuery, _ := strings.Cut(rest, "?")
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		return URL{}, fmt.Errorf("%q has an invalid query (%v); accepted: %s", redactString(s), unwrapURLError(err), acceptedURLs)
	}
	path = strings.TrimPrefix(path, "//") // file://abs form
	if path, err = url.PathUnescape(path); err != nil {
		return URL{}, fmt.Errorf("%q has an invalid path (%v); accepted: %s", redactString(s), err, acceptedURLs)
	}
	if path == "" {
		return URL{}, fmt.Errorf("%q has no file path; accepted: file:path.db", redactString(s))
	}
	if path == ":memory:" || q.Get("mode") == "memory" {
		return URL{raw: raw, dialect: SQLite, memory: true, query: q}, nil
	}
	return URL{raw: raw, dialect: SQLite, path: path, query: q}, nil
}

func unwrapURLError(err error) error {
	if ue, ok := err.(*url.Error); ok {
		return ue.Err
	}
	return err
}

// Dialect returns the ent dialect name: "postgres", "mysql" or "sqlite3".
func (u URL) Dialect() string { return u.dialect }

// IsZero reports whether u was never parsed.
func (u URL) IsZero() bool { return u.dialect == "" }

// Secret returns the URL exactly as it was given, password included. Use it
// only to connect; never log it.
func (u URL) Secret() string { return u.raw }

// Server returns a copy of the parsed URL of a PostgreSQL or MySQL server,
// with its scheme normalised to postgres:// or mysql:// and the password in
// it. It returns nil for SQLite.
func (u URL) Server() *url.URL {
	if u.u == nil {
		return nil
	}
	c := *u.u
	if u.u.User != nil {
		user := *u.u.User
		c.User = &user
	}
	return &c
}

// Path returns the SQLite file path ("" for an in-memory database).
func (u URL) Path() string { return u.path }

// AbsPath returns the SQLite file path made absolute, or "" for memory.
func (u URL) AbsPath() string {
	if u.path == "" {
		return ""
	}
	if abs, err := filepath.Abs(u.path); err == nil {
		return abs
	}
	return u.path
}

// Memory reports whether u names an in-memory SQLite database.
func (u URL) Memory() bool { return u.memory }

// Query returns a copy of the URL's query parameters (secrets included).
func (u URL) Query() url.Values {
	q := url.Values{}
	for k, v := range u.query {
		q[k] = append([]string(nil), v...)
	}
	return q
}

// String returns the URL with its password and secret parameters redacted.
func (u URL) String() string {
	switch {
	case u.dialect == "":
		return ""
	case u.u != nil:
		return redactURL(u.u)
	default:
		return redactString(u.raw)
	}
}

// GoString renders the redacted URL for %#v, which would otherwise print
// the fields, the password among them.
func (u URL) GoString() string { return fmt.Sprintf("config.URL(%q)", u.String()) }

// MarshalText renders the redacted URL, so that encoding a Config never
// leaks a password.
func (u URL) MarshalText() ([]byte, error) { return []byte(u.String()), nil }

// Redact returns s, a URL or a list of URLs given as text, with its
// secrets replaced: the password of a user:password@, the whole of a
// userinfo without a password (nats://TOKEN@host, where the name is the
// token), and the values of secret query parameters (password, token,
// secret, sslkey, ...). It is for messages about URLs that are not database
// URLs (a NATS server, say) and for text that may not parse as a URL.
func Redact(s string) string { return redactString(s) }

// RedactIn returns text with every secret that urls (as given to Redact)
// holds replaced wherever it appears, as written, unescaped or quoted as %q
// quotes it: for error messages from libraries that quote the URL they were
// given. It errs on the side of hiding: a very short secret is replaced in
// words that merely contain it too.
func RedactIn(text, urls string) string {
	var secrets []string
	for _, sp := range secretSpans(urls) {
		sec := urls[sp[0]:sp[1]]
		if sec == "" {
			continue
		}
		// As given, unescaped, and as %q (or strconv.Quote) shows it.
		forms := []string{sec}
		if u, err := url.PathUnescape(sec); err == nil {
			forms = append(forms, u)
		}
		for _, f := range forms {
			q := strconv.Quote(f)
			secrets = append(secrets, f, q[1:len(q)-1])
		}
	}
	// Longest first, so that a secret containing another is replaced whole.
	slices.SortFunc(secrets, func(a, b string) int { return len(b) - len(a) })
	for _, sec := range secrets {
		if sec == "" {
			continue
		}
		text = strings.ReplaceAll(text, sec, redacted)
	}
	return text
}

// redactURL renders u with its password and secret query values replaced.
func redactURL(u *url.URL) string {
	c := *u
	if c.User != nil {
		if _, has := c.User.Password(); has {
			c.User = url.UserPassword(c.User.Username(), redacted)
		}
	}
	c.RawQuery = redactQuery(c.RawQuery)
	s := c.String()
	// A user:pass@ that the parser did not take for userinfo, as in a
	// scheme pasted twice (postgres://postgres://u:pass@host/db), is still a
	// password to the reader.
	if strings.Contains(c.Opaque+c.Path+c.Fragment, "@") {
		s = redactString(s)
	}
	return s
}

// redactString redacts a URL-like string that may not parse, without
// trusting a parser to find the secrets: see secretSpans.
func redactString(s string) string { return redactSpans(s, secretSpans(s)) }

// secretSpans returns the byte ranges of the secrets of s, a URL-like
// string that may not parse: the userinfo is what lies between the start
// of the authority (after "://", or from the start if there is no scheme)
// and its last "@"; if it starts with a user name (no "@", "/", "?" or
// "#") and a ":", what follows that ":" is a password, and otherwise all
// of it is secret (a NATS token is given as nats://TOKEN@host). The values
// of secret query parameters are secrets too.
func secretSpans(s string) [][2]int {
	var spans [][2]int
	start := 0
	if i := strings.Index(s, "://"); i >= 0 {
		start = i + len("://")
	} else if strings.HasPrefix(s, "//") {
		start = len("//")
	}
	if at := strings.LastIndex(s[start:], "@"); at > 0 {
		userinfo := s[start : start+at]
		if colon := strings.Index(userinfo, ":"); colon >= 0 && !strings.ContainsAny(userinfo[:colon], "@/?#") {
			spans = append(spans, [2]int{start + colon + 1, start + at})
		} else {
			spans = append(spans, [2]int{start, start + at})
		}
	}
	if q := strings.Index(s, "?"); q >= 0 {
		spans = append(spans, querySpans(s[q+1:], q+1)...)
	}
	return spans
}

// redactQuery replaces the values of secret parameters in a raw query,
// keeping the rest as it was written.
func redactQuery(q string) string { return redactSpans(q, querySpans(q, 0)) }

// querySpans returns the byte ranges, offset by off, of the values of the
// secret parameters of the raw query q. Parameters are separated by &, or
// by ; (which url.ParseQuery rejects, dropping the parameter, so it must not
// be what decides) or ? (so that a "?" in a password that did not parse does
// not hide the real query).
func querySpans(q string, off int) [][2]int {
	var spans [][2]int
	for i := 0; i <= len(q); {
		end := len(q)
		if j := strings.IndexAny(q[i:], "&;?"); j >= 0 {
			end = i + j
		}
		if k, v, ok := strings.Cut(q[i:end], "="); ok && isSecretParam(k, v) {
			spans = append(spans, [2]int{off + i + len(k) + 1, off + end})
		}
		i = end + 1
	}
	return spans
}

// isSecretParam reports whether the query parameter k=v (both raw) holds a
// secret.
func isSecretParam(k, v string) bool {
	if uk, err := url.QueryUnescape(k); err == nil {
		k = uk
	}
	k = strings.ToLower(strings.TrimSpace(k))
	if k == "_pragma" {
		return isKeyPragma(v)
	}
	k = strings.NewReplacer("-", "", "_", "").Replace(k)
	switch {
	case secretParams[k], strings.HasSuffix(k, "key"):
		return true
	}
	for _, part := range []string{"pass", "pwd", "secret", "token", "credential"} {
		if strings.Contains(k, part) {
			return true
		}
	}
	return false
}

// isKeyPragma reports whether the raw value of a _pragma parameter sets an
// encryption key.
func isKeyPragma(v string) bool {
	if uv, err := url.QueryUnescape(v); err == nil {
		v = uv
	}
	v = strings.ToLower(strings.TrimSpace(v))
	return strings.HasPrefix(v, "key") || strings.HasPrefix(v, "hexkey") || strings.HasPrefix(v, "textkey")
}

// redactSpans replaces each byte range of s in spans, merged where they
// overlap, by the redaction marker.
func redactSpans(s string, spans [][2]int) string {
	if len(spans) == 0 {
		return s
	}
	slices.SortFunc(spans, func(a, b [2]int) int { return a[0] - b[0] })
	var b strings.Builder
	last := 0
	for i, sp := range spans {
		if i > 0 && sp[0] <= last {
			last = max(last, sp[1])
			continue
		}
		b.WriteString(s[last:sp[0]])
		b.WriteString(redacted)
		last = sp[1]
	}
	b.WriteString(s[last:])
	return b.String()
}
