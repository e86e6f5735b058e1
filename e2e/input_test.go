package e2e

import (
	"bufio"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/bento-go/bento/internal/testdb"
)

// Expectations of a hostile request.
const (
	hostileRefuse = "refuse" // a 4xx and nothing changes
	hostileValid  = "valid"  // a 201, stored exactly as expected
	hostileEither = "either" // a 201 stored exactly as expected, or a 4xx
	hostileRead   = "read"   // a read: any status but 5xx, nothing changes
	// The router redirects a path with dot segments to its clean form (a
	// 307 keeps the method, as RFC 3986 clients would have normalized it
	// themselves): a 3xx to a path of the service, nothing changes.
	hostileRedirect = "redirect"
)

// hostileCase is one malformed or hostile request.
type hostileCase struct {
	name   string
	method string // POST by default
	path   string // /orders by default
	header map[string]string
	body   string
	chunk  bool // send the body chunked (no Content-Length)
	expect string
	// For valid requests: what must be stored (the customer after
	// trimming, the lines as sent).
	customer string
	lines    []hostileLine
}

type hostileLine struct {
	SKU            string `json:"sku"`
	Quantity       int64  `json:"quantity"`
	UnitPriceCents int64  `json:"unit_price_cents"`
}

// orderBody builds a JSON order body (json.Marshal escapes as needed).
func orderBody(customer string, lines ...hostileLine) string {
	if len(lines) == 0 {
		lines = []hostileLine{{"SKU-1", 2, 1250}}
	}
	b, _ := json.Marshal(map[string]any{"customer": customer, "lines": lines})
	return string(b)
}

func hostileCases() []hostileCase {
	line := []hostileLine{{"SKU-1", 2, 1250}}
	valid := func(name, customer string, lines ...hostileLine) hostileCase {
		if len(lines) == 0 {
			lines = line
		}
		return hostileCase{name: name, body: orderBody(customer, lines...), expect: hostileValid,
			customer: strings.TrimSpace(customer), lines: lines}
	}
	either := func(name, customer string, lines ...hostileLine) hostileCase {
		c := valid(name, customer, lines...)
		c.expect = hostileEither
		return c
	}
	refuse := func(name, body string) hostileCase { return hostileCase{name: name, body: body, expect: hostileRefuse} }
	nested := func(n int) string { return strings.Repeat("[", n) + strings.Repeat("]", n) }
	many := make([]hostileLine, 101)
	for i := range many {
		many[i] = hostileLine{"S", 1, 1}
	}
	tooLong := strings.Repeat("a", 310) + "@example.com" + strings.Repeat("b", 10)

	cases := []hostileCase{
		// Bodies.
		{name: "huge body (2 MiB)", body: orderBody("huge@example.com", hostileLine{strings.Repeat("x", 2<<20), 1, 1}), expect: hostileRefuse},
		{name: "huge body chunked (2 MiB)", body: orderBody("huge@example.com", hostileLine{strings.Repeat("x", 2<<20), 1, 1}), chunk: true, expect: hostileRefuse},
		refuse("huge number of lines (30000, under 1 MiB)", orderBody("many@example.com", func() []hostileLine {
			l := make([]hostileLine, 30000)
			for i := range l {
				l[i] = hostileLine{"S", 1, 1}
			}
			return l
		}()...)),
		refuse("deeply nested JSON in customer", `{"customer": `+nested(100000)+`, "lines": []}`),
		refuse("deeply nested JSON in lines", `{"customer": "a@example.com", "lines": `+nested(100000)+`}`),
		refuse("deeply nested objects", strings.Repeat(`{"a":`, 50000)+"1"+strings.Repeat("}", 50000)),
		refuse("empty body", ""),
		refuse("only whitespace", " \n\t "),
		refuse("truncated JSON", `{"customer": "a@example.com", "lines": [{"sku": "SKU-1"`),
		refuse("null", "null"),
		refuse("array", `[]`),
		refuse("empty object", `{}`),
		refuse("string", `"a@example.com"`),
		refuse("two objects", orderBody("two@example.com")+orderBody("two@example.com")),
		refuse("trailing garbage", orderBody("trail@example.com")+" garbage"),
		refuse("byte order mark", "\ufeff"+orderBody("bom@example.com")),
		refuse("unknown field", `{"customer": "a@example.com", "lines": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 1}], "admin": true}`),
		refuse("unknown field in a line", `{"customer": "a@example.com", "lines": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 1, "discount": 100}]}`),
		refuse("status smuggled in", `{"customer": "a@example.com", "lines": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 1}], "status": "paid"}`),
		refuse("id smuggled in", `{"id": 1, "customer": "a@example.com", "lines": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 1}]}`),
		refuse("customer a number", `{"customer": 12, "lines": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 1}]}`),
		refuse("customer an object", `{"customer": {"$ne": null}, "lines": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 1}]}`),
		refuse("lines a string", `{"customer": "a@example.com", "lines": "SKU-1"}`),
		refuse("quantity a string", `{"customer": "a@example.com", "lines": [{"sku": "SKU-1", "quantity": "2", "unit_price_cents": 1}]}`),
		refuse("quantity a float", `{"customer": "a@example.com", "lines": [{"sku": "SKU-1", "quantity": 2.5, "unit_price_cents": 1}]}`),
		refuse("quantity in exponent form", `{"customer": "a@example.com", "lines": [{"sku": "SKU-1", "quantity": 1e2, "unit_price_cents": 1}]}`),
		refuse("quantity null", `{"customer": "a@example.com", "lines": [{"sku": "SKU-1", "quantity": null, "unit_price_cents": 1}]}`),
		refuse("quantity 0", `{"customer": "a@example.com", "lines": [{"sku": "SKU-1", "quantity": 0, "unit_price_cents": 1}]}`),
		refuse("quantity -1", `{"customer": "a@example.com", "lines": [{"sku": "SKU-1", "quantity": -1, "unit_price_cents": 1}]}`),
		refuse("quantity max int64", `{"customer": "a@example.com", "lines": [{"sku": "SKU-1", "quantity": 9223372036854775807, "unit_price_cents": 1}]}`),
		refuse("quantity max int64 + 1", `{"customer": "a@example.com", "lines": [{"sku": "SKU-1", "quantity": 9223372036854775808, "unit_price_cents": 1}]}`),
		refuse("quantity min int64", `{"customer": "a@example.com", "lines": [{"sku": "SKU-1", "quantity": -9223372036854775808, "unit_price_cents": 1}]}`),
		refuse("quantity 1e400", `{"customer": "a@example.com", "lines": [{"sku": "SKU-1", "quantity": 1e400, "unit_price_cents": 1}]}`),
		refuse("price max int64", `{"customer": "a@example.com", "lines": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 9223372036854775807}]}`),
		refuse("price -1", `{"customer": "a@example.com", "lines": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": -1}]}`),
		refuse("no lines", `{"customer": "a@example.com", "lines": []}`),
		refuse("101 lines", orderBody("a@example.com", many...)),
		refuse("empty customer", orderBody("")),
		refuse("blank customer", orderBody(" \t ")),
		refuse("customer not an address", orderBody("not-an-address")),
		refuse("customer with a display name", orderBody("Eve <eve@example.com>")),
		refuse("customer longer than 320 bytes", orderBody(tooLong)),
		refuse("customer with a NUL", orderBody("a\x00b@example.com")),
		refuse("customer with CRLF", orderBody("a@example.com\r\nBcc: victim@example.com")),
		refuse("customer SQL injection (unquoted)", orderBody("robert'); DROP TABLE orders;--@example.com")),
		refuse("empty sku", orderBody("a@example.com", hostileLine{"", 1, 1})),
		refuse("blank sku", orderBody("a@example.com", hostileLine{"   ", 1, 1})),
		refuse("sku longer than 64 bytes", orderBody("a@example.com", hostileLine{strings.Repeat("é", 33), 1, 1})),

		// Valid, however odd: stored byte for byte.
		valid("plain", "plain@example.com"),
		valid("customer with an apostrophe", "o'reilly+1@example.com"),
		valid("customer padded with spaces (trimmed)", "  padded@example.com  "),
		valid("sku SQL injection", "inject1@example.com", hostileLine{"'; DROP TABLE orders; --", 1, 1}),
		valid("sku tautology", "inject2@example.com", hostileLine{"1' OR '1'='1", 1, 1}),
		valid("sku LIKE wildcards and backslashes", "inject3@example.com", hostileLine{`%_\%\_\\`, 1, 1}),
		valid("sku markup", "inject4@example.com", hostileLine{`<script>alert(1)</script>`, 1, 1}),
		valid("sku quotes", "inject5@example.com", hostileLine{`"double" 'single' ` + "`back`", 1, 1}),
		valid("sku 64 bytes of 2-byte runes", "wide@example.com", hostileLine{strings.Repeat("é", 32), 1, 1}),
		valid("sku emoji", "emoji@example.com", hostileLine{"📦🚚", 3, 499}),
		valid("sku right-to-left override", "rtl@example.com", hostileLine{"SKU\u202e1-UKS", 1, 1}),
		valid("sku zero-width characters", "zw@example.com", hostileLine{"SKU\u200b\u200d\ufeff-1", 1, 1}),
		valid("largest valid line", "max@example.com", hostileLine{"MAX", 10000, 100000000}),
		valid("free line", "free@example.com", hostileLine{"FREE", 1, 0}),
		valid("two largest lines", "max2@example.com", hostileLine{"MAX", 10000, 100000000}, hostileLine{"MAX", 10000, 100000000}),
		either("sku with a NUL", "nul@example.com", hostileLine{"SKU\x00-1", 1, 1}),
		either("sku with control characters", "ctl@example.com", hostileLine{"SKU\x01\x1b[31m\x7f", 1, 1}),
		either("customer SQL injection (quoted local part)", `"robert'); DROP TABLE orders;--"@example.com`),
		either("customer homoglyph (Cyrillic a)", "\u0430dmin@example.com"),
		either("customer right-to-left override", "evil\u202emoc.elpmaxe@example.com"),
		either("customer zero-width joiner", "a\u200db@example.com"),
		either("customer decomposed accent", "jose\u0301@example.com"),
		either("customer emoji", "🙂@example.com"),
		either("customer IDN domain", "a@b\u00fccher.example"),
		either("customer 320 bytes", strings.Repeat("a", 64)+"@"+strings.Repeat("b", 63)+"."+strings.Repeat("c", 63)+"."+strings.Repeat("d", 63)+"."+strings.Repeat("e", 61)+".com"),
	}

	// Invalid UTF-8 (raw bytes in a JSON string: the decoder replaces them
	// with U+FFFD).
	cases = append(cases,
		hostileCase{name: "invalid UTF-8 in customer", body: `{"customer": "bad\xff\xfe@example.com", "lines": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 1}]}`,
			expect: hostileEither, customer: "bad\ufffd\ufffd@example.com", lines: []hostileLine{{"SKU-1", 1, 1}}},
		hostileCase{name: "invalid UTF-8 in sku", body: `{"customer": "badsku@example.com", "lines": [{"sku": "SKU-\xc3\x28", "quantity": 1, "unit_price_cents": 1}]}`,
			expect: hostileEither, customer: "badsku@example.com", lines: []hostileLine{{"SKU-\ufffd(", 1, 1}}},
		hostileCase{name: "overlong UTF-8 slash in sku", body: `{"customer": "overlong@example.com", "lines": [{"sku": "SKU\xc0\xaf1", "quantity": 1, "unit_price_cents": 1}]}`,
			expect: hostileEither, customer: "overlong@example.com", lines: []hostileLine{{"SKU\ufffd\ufffd1", 1, 1}}},
		hostileCase{name: "lone surrogate escape in sku", body: `{"customer": "surrogate@example.com", "lines": [{"sku": "SKU-\ud800", "quantity": 1, "unit_price_cents": 1}]}`,
			expect: hostileEither, customer: "surrogate@example.com", lines: []hostileLine{{"SKU-\ufffd", 1, 1}}},
	)

	// Idempotency keys.
	cases = append(cases,
		hostileCase{name: "Idempotency-Key of 10 KiB", header: map[string]string{"Idempotency-Key": strings.Repeat("k", 10<<10)},
			body: orderBody("longkey@example.com"), expect: hostileRefuse},
		hostileCase{name: "Idempotency-Key of 201 bytes", header: map[string]string{"Idempotency-Key": strings.Repeat("k", 201)},
			body: orderBody("longkey@example.com"), expect: hostileRefuse},
		hostileCase{name: "Idempotency-Key not ASCII", header: map[string]string{"Idempotency-Key": "ключ"},
			body: orderBody("key8@example.com"), expect: hostileRefuse},
		hostileCase{name: "Idempotency-Key of 200 bytes", header: map[string]string{"Idempotency-Key": strings.Repeat("k", 200)},
			body: orderBody("key200@example.com"), expect: hostileValid, customer: "key200@example.com", lines: line},
		hostileCase{name: "Idempotency-Key SQL injection", header: map[string]string{"Idempotency-Key": "x' OR '1'='1"},
			body: orderBody("keyinject@example.com"), expect: hostileValid, customer: "keyinject@example.com", lines: line},
		hostileCase{name: "Idempotency-Key replayed", header: map[string]string{"Idempotency-Key": "x' OR '1'='1"},
			body: orderBody("keyinject@example.com"), expect: hostileValid, customer: "keyinject@example.com", lines: line},
		// The key's fingerprint is the order: another order under it is
		// refused (422) and applies nothing.
		hostileCase{name: "Idempotency-Key reused with another body", header: map[string]string{"Idempotency-Key": "x' OR '1'='1"},
			body: orderBody("other-body@example.com"), expect: hostileRefuse},
	)

	// Headers and content types.
	cases = append(cases,
		hostileCase{name: "headers of 2 MiB", header: map[string]string{"X-Pad": strings.Repeat("p", 2<<20)}, body: orderBody("hdr@example.com"), expect: hostileRefuse},
		hostileCase{name: "X-Request-Id of 10 KiB", header: map[string]string{"X-Request-Id": strings.Repeat("r", 10<<10)},
			body: orderBody("reqid@example.com"), expect: hostileValid, customer: "reqid@example.com", lines: line},
		hostileCase{name: "form-encoded body", header: map[string]string{"Content-Type": "application/x-www-form-urlencoded"},
			body: "customer=a%40example.com&lines[0][sku]=SKU-1&lines[0][quantity]=1&lines[0][unit_price_cents]=1", expect: hostileRefuse},
		hostileCase{name: "XML body", header: map[string]string{"Content-Type": "application/xml"},
			body: `<?xml version="1.0"?><!DOCTYPE o [<!ENTITY x SYSTEM "file:///etc/passwd">]><order><customer>&x;</customer></order>`, expect: hostileRefuse},
		hostileCase{name: "multipart body", header: map[string]string{"Content-Type": "multipart/form-data; boundary=b"},
			body: "--b\r\nContent-Disposition: form-data; name=\"customer\"\r\n\r\na@example.com\r\n--b--\r\n", expect: hostileRefuse},
		hostileCase{name: "UTF-16 body", header: map[string]string{"Content-Type": "application/json; charset=utf-16"},
			body: utf16le(orderBody("utf16@example.com")), expect: hostileRefuse},
		// The service reads JSON whatever the Content-Type says (README's
		// curl -d sends form-encoded): a valid JSON order is placed.
		hostileCase{name: "valid JSON as text/plain", header: map[string]string{"Content-Type": "text/plain"},
			body: orderBody("textplain@example.com"), expect: hostileValid, customer: "textplain@example.com", lines: line},
		hostileCase{name: "duplicate keys (the last wins)", body: `{"customer": "first@example.com", "customer": "last@example.com", "lines": [{"sku": "SKU-1", "quantity": 2, "unit_price_cents": 1250}]}`,
			expect: hostileValid, customer: "last@example.com", lines: line},
	)

	// Methods and paths.
	for _, c := range []struct{ method, path, expect string }{
		{"PUT", "/orders", hostileRefuse},
		{"DELETE", "/orders", hostileRefuse},
		{"PATCH", "/orders", hostileRefuse},
		{"GET", "/orders", hostileRefuse},
		{"DELETE", "/orders/1", hostileRefuse},
		{"PUT", "/orders/1", hostileRefuse},
		{"GET", "/orders/1/pay", hostileRefuse},
		{"PATCH", "/orders/1/cancel", hostileRefuse},
		{"POST", "/orders/1", hostileRefuse},
		{"TRACE", "/orders", hostileRefuse},
		{"POST", "/orders/", hostileRefuse},
		{"POST", "/orders/..%2f1/pay", hostileRefuse},
		{"GET", "/orders/..%2f1", hostileRefuse},
		{"GET", "/orders/..%2F..%2Fetc%2Fpasswd", hostileRefuse},
		{"GET", "/orders/%2e%2e/%2e%2e/etc/passwd", hostileRefuse},
		{"POST", "/orders/1/pay/../../2/cancel", hostileRedirect},
		{"GET", "/orders/../../../etc/passwd", hostileRedirect},
		{"GET", "/orders/0", hostileRefuse},
		{"GET", "/orders/-1", hostileRefuse},
		{"GET", "/orders/99999999999", hostileRefuse},
		{"GET", "/orders/0x10", hostileRefuse},
		{"GET", "/orders/1.0", hostileRefuse},
		{"GET", "/orders/1%00", hostileRefuse},
		{"GET", "/orders/1%20OR%201=1", hostileRefuse},
		{"GET", "/orders/" + strings.Repeat("9", 5000), hostileRefuse},
		{"POST", "/orders/2147483647/pay", hostileRefuse},
		{"POST", "/orders/999999/cancel", hostileRefuse},
		{"GET", "/orders/999999", hostileRefuse},
		{"GET", "/orders/+1", hostileRead},
	} {
		cases = append(cases, hostileCase{name: c.method + " " + c.path, method: c.method, path: c.path, expect: c.expect})
	}
	return cases
}

// utf16le encodes an ASCII string as UTF-16LE with a BOM.
func utf16le(s string) string {
	var b strings.Builder
	b.WriteString("\xff\xfe")
	for _, r := range s {
		b.WriteByte(byte(r))
		b.WriteByte(0)
	}
	return b.String()
}

// TestHostileRequests sends malformed and hostile requests to a real bento
// serve, on SQLite and on PostgreSQL: each gets a 4xx — never a 5xx —
// except the valid ones, whose data must be stored byte for byte; the
// database changes by exactly the valid orders (orders, lines, outbox
// rows, idempotency keys counted before and after). Slow clients (a body
// that stops mid-way, headers that never end) neither change data nor
// stop the service from serving others.
func TestHostileRequests(t *testing.T) {
	for _, dialect := range []string{testdb.SQLite, testdb.Postgres} {
		t.Run(dialect, func(t *testing.T) {
			var url string
			var raw *sql.DB
			if dialect == testdb.SQLite {
				path := filepath.Join(t.TempDir(), "hostile.db")
				url = "sqlite://" + path
				svc := Serve(t, []string{"DB_URL=" + url, "OUTBOX_RETENTION=1h"})
				raw = liteRaw(t, path)
				hostileRun(t, svc, raw, dialect)
			} else {
				url = testdb.URL(t, testdb.Postgres)
				svc := Serve(t, []string{"DB_URL=" + url, "OUTBOX_RETENTION=1h", "DB_APPLICATION_NAME=e2e-hostile"})
				raw = testdb.OpenRaw(t, url)
				hostileRun(t, svc, raw, dialect)
			}
		})
	}
}

type hostileCounts struct{ orders, lines, outbox, keys int }

func hostileCount(t testing.TB, raw *sql.DB) hostileCounts {
	t.Helper()
	var c hostileCounts
	for q, dst := range map[string]*int{
		"SELECT COUNT(*) FROM orders": &c.orders, "SELECT COUNT(*) FROM order_lines": &c.lines,
		"SELECT COUNT(*) FROM bento_outbox": &c.outbox, "SELECT COUNT(*) FROM bento_outbox_idempotency": &c.keys,
	} {
		if err := raw.QueryRow(q).Scan(dst); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	return c
}

func hostileRun(t *testing.T, svc *Process, raw *sql.DB, dialect string) {
	// Slow clients start first and stay connected while the table runs.
	slowBodies := hostileStall(t, svc.Addr, 8, "POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"+`{"customer": "slow@example.com", "li`)
	slowHeaders := hostileStall(t, svc.Addr, 8, "POST /orders HTTP/1.1\r\nHost: x\r\nContent-Le")
	stallStart := time.Now()

	// An order to pay / cancel / read exists.
	place := hostileRequest(t, svc, hostileCase{body: orderBody("existing@example.com")})
	if place.status != 201 {
		t.Fatalf("placing the first order: %d %s", place.status, place.body)
	}

	before := hostileCount(t, raw)
	placed := map[int]bool{}
	newLines := 0
	byStatus := map[string]int{}
	accepted := []string{}
	var nonJSON, redirects []string
	for _, c := range hostileCases() {
		r := hostileRequest(t, svc, c)
		byStatus[strconv.Itoa(r.status)]++
		if r.err != nil {
			byStatus[strconv.Itoa(r.status)]--
			byStatus["no-reply"]++
		}
		if r.status >= 500 {
			t.Errorf("%s: %d %s", c.name, r.status, tail(r.body, 300))
			continue
		}
		if r.status >= 400 && r.status < 500 && !strings.HasPrefix(r.body, `{"error":`) {
			nonJSON = append(nonJSON, fmt.Sprintf("%s→%d", c.name, r.status))
		}
		switch c.expect {
		case hostileRefuse:
			if r.status < 400 || r.status >= 500 {
				t.Errorf("%s: got %d (%v) %s, want a 4xx", c.name, r.status, r.err, tail(r.body, 200))
			}
		case hostileRead:
			if r.err != nil {
				t.Errorf("%s: %v", c.name, r.err)
			}
		case hostileRedirect:
			if r.status/100 != 3 || !strings.HasPrefix(r.location, "/") || strings.HasPrefix(r.location, "//") {
				t.Errorf("%s: got %d Location %q (%v), want a redirect within the service", c.name, r.status, r.location, r.err)
			} else {
				redirects = append(redirects, fmt.Sprintf("%s→%d %s", c.name, r.status, r.location))
			}
		case hostileValid, hostileEither:
			if r.status == 201 {
				if c.expect == hostileEither {
					accepted = append(accepted, c.name)
				}
				var o struct {
					ID       int    `json:"id"`
					Customer string `json:"customer"`
				}
				if err := json.Unmarshal([]byte(r.body), &o); err != nil || o.ID == 0 {
					t.Errorf("%s: 201 with body %s", c.name, tail(r.body, 200))
					continue
				}
				if !placed[o.ID] {
					placed[o.ID] = true
					newLines += len(c.lines)
				}
				hostileStored(t, svc, raw, dialect, c, o.ID)
				continue
			}
			if c.expect == hostileValid || r.status < 400 || r.status >= 500 {
				t.Errorf("%s: got %d (%v) %s, want 201", c.name, r.status, r.err, tail(r.body, 200))
			}
		}
	}
	after := hostileCount(t, raw)
	want := hostileCounts{before.orders + len(placed), before.lines + newLines, before.outbox + len(placed), before.keys + len(placed)} // every request carries a key
	if after != want {
		t.Errorf("INVARIANT: database changed from %+v to %+v; the %d valid orders account for %+v", before, after, len(placed), want)
	}

	// Slow clients: a stalled body half-closed by its client gets a 4xx;
	// the service kept serving meanwhile (the table above ran); report
	// whether the server itself dropped the stalled connections.
	bodyAnswers := hostileFinish(slowBodies, true, 2*time.Second)
	for _, a := range bodyAnswers {
		if !strings.HasPrefix(a, "HTTP/1.1 4") {
			t.Errorf("stalled body, then the client half-closed: %q, want a 4xx", a)
		}
	}
	wait := 11*time.Second - time.Since(stallStart) // ReadHeaderTimeout 10 s in bento serve
	headerAnswers := hostileFinish(slowHeaders, false, max(wait, time.Second))
	dropped := 0
	for _, a := range headerAnswers {
		if a == "closed" || strings.HasPrefix(a, "HTTP/1.1 4") {
			dropped++
		}
	}
	if dropped != len(headerAnswers) {
		t.Errorf("stalled headers: %d of %d connections dropped by the server 11 s after they stalled: %v", dropped, len(headerAnswers), headerAnswers)
	}
	final := hostileCount(t, raw)
	if final != after {
		t.Errorf("INVARIANT: slow clients changed the database from %+v to %+v", after, final)
	}
	if r := hostileRequest(t, svc, hostileCase{body: orderBody("still-serving@example.com")}); r.status != 201 {
		t.Errorf("after the slow clients the service does not take orders: %d %s", r.status, r.body)
	}
	t.Logf("FIGURE hostile-requests-%s: cases=%d statuses=%s placed=%d accepted_either=%d non_json_4xx=%d stalled_bodies_answered=%s stalled_headers_dropped=%d/%d",
		dialect, len(hostileCases()), fmtCounts(byStatus), len(placed), len(accepted), len(nonJSON), hostileSummary(bodyAnswers), dropped, len(headerAnswers))
	t.Logf("accepted (either): %s", strings.Join(accepted, "; "))
	t.Logf("4xx without a JSON body: %s", strings.Join(nonJSON, "; "))
	t.Logf("redirects (not followed): %s", strings.Join(redirects, "; "))
}

type hostileResult struct {
	status   int
	body     string
	location string
	err      error
}

// hostileRequest sends one case. Requests without an Idempotency-Key of
// their own get a unique one, so that each new order adds one key row.
func hostileRequest(t testing.TB, svc *Process, c hostileCase) hostileResult {
	t.Helper()
	method := c.method
	if method == "" {
		method = "POST"
	}
	path := c.path
	if path == "" {
		path = "/orders"
	}
	var body io.Reader = strings.NewReader(c.body)
	if c.chunk {
		body = io.MultiReader(strings.NewReader(c.body)) // unknown length: chunked
	}
	if c.body == "" && c.method != "" {
		body = nil
	}
	req, err := http.NewRequest(method, svc.URL()+path, body)
	if err != nil {
		t.Fatalf("%s: %v", c.name, err)
	}
	if strings.Contains(path, "%") {
		req.URL.RawPath = path // keep the escapes as sent
		req.URL.Opaque = "//" + svc.Addr + path
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", fmt.Sprintf("hostile-%d", hostileSeq.Add(1)))
	for k, v := range c.header {
		req.Header.Set(k, v)
	}
	client := &http.Client{Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Do(req)
	if err != nil {
		return hostileResult{err: err}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return hostileResult{status: resp.StatusCode, body: string(b), location: resp.Header.Get("Location")}
}

// hostileStored checks that the order of a valid case is stored exactly
// as expected, in the database and through GET /orders/{id}.
func hostileStored(t testing.TB, svc *Process, raw *sql.DB, dialect string, c hostileCase, id int) {
	t.Helper()
	ph := "?"
	if dialect == testdb.Postgres {
		ph = "$1"
	}
	var customer string
	if err := raw.QueryRow("SELECT customer FROM orders WHERE id = "+ph, id).Scan(&customer); err != nil {
		t.Errorf("%s: reading order %d: %v", c.name, id, err)
		return
	}
	if customer != c.customer {
		t.Errorf("%s: stored customer %q, want %q", c.name, customer, c.customer)
	}
	if !utf8.ValidString(customer) {
		t.Errorf("%s: stored customer is not valid UTF-8: %q", c.name, customer)
	}
	rows, err := raw.Query("SELECT sku, quantity, unit_price_cents FROM order_lines WHERE order_lines = "+ph+" ORDER BY id", id)
	if err != nil {
		t.Errorf("%s: reading lines: %v", c.name, err)
		return
	}
	defer rows.Close()
	var lines []hostileLine
	for rows.Next() {
		var l hostileLine
		if err := rows.Scan(&l.SKU, &l.Quantity, &l.UnitPriceCents); err != nil {
			t.Fatal(err)
		}
		lines = append(lines, l)
	}
	if fmt.Sprint(lines) != fmt.Sprint(c.lines) {
		t.Errorf("%s: stored lines %+q, want %+q", c.name, fmt.Sprint(lines), fmt.Sprint(c.lines))
	}
	resp, err := http.Get(fmt.Sprintf("%s/orders/%d", svc.URL(), id))
	if err != nil {
		t.Errorf("%s: GET: %v", c.name, err)
		return
	}
	defer resp.Body.Close()
	var o struct {
		Customer string        `json:"customer"`
		Lines    []hostileLine `json:"lines"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&o); err != nil || o.Customer != c.customer || fmt.Sprint(o.Lines) != fmt.Sprint(c.lines) {
		t.Errorf("%s: GET /orders/%d = %q %q (%v), want %q %q", c.name, id, o.Customer, fmt.Sprint(o.Lines), err, c.customer, fmt.Sprint(c.lines))
	}
}

// hostileStall opens n connections that send prefix and then stall.
func hostileStall(t testing.TB, addr string, n int, prefix string) []net.Conn {
	t.Helper()
	conns := make([]net.Conn, 0, n)
	for range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if _, err := c.Write([]byte(prefix)); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	return conns
}

// hostileFinish half-closes each stalled connection (if halfClose) and
// reads what the server answers within timeout: its status line, "closed"
// when the server closed the connection without an answer, or "open" when
// it still waits.
func hostileFinish(conns []net.Conn, halfClose bool, timeout time.Duration) []string {
	out := make([]string, len(conns))
	deadline := time.Now().Add(timeout)
	for i, c := range conns {
		if halfClose {
			_ = c.(*net.TCPConn).CloseWrite()
		}
		_ = c.SetReadDeadline(deadline)
		line, err := bufio.NewReader(c).ReadString('\n')
		switch {
		case line != "":
			out[i] = strings.TrimSpace(line)
		case err != nil && isTimeout(err):
			out[i] = "open"
		default:
			out[i] = "closed"
		}
		c.Close()
	}
	return out
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// hostileSummary counts the answers of stalled connections.
func hostileSummary(answers []string) string {
	m := map[string]int{}
	for _, a := range answers {
		if f := strings.Fields(a); len(f) >= 2 && strings.HasPrefix(a, "HTTP/") {
			a = f[1]
		}
		m[a]++
	}
	return fmtCounts(m)
}

var hostileSeq atomic.Int64
