package e2e

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/bento-go/bento"
	"github.com/bento-go/bento/ent"
	"github.com/bento-go/bento/ent/migrate"
	"github.com/bento-go/bento/resilience"
	"github.com/bento-go/bento/shop"
)

// liteRaw opens the SQLite file at path through Bento (the test's own
// connection, with its busy_timeout) and returns the database/sql pool
// beneath, for counting.
func liteRaw(t testing.TB, path string) *sql.DB {
	t.Helper()
	db, err := bento.Open(ctConfig(t, "DB_URL=sqlite://"+path))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db.Driver().DB()
}

// busyRefusals counts refusals whose error mentions SQLITE_BUSY or a
// locked database.
func busyRefusals(res *LoadResult) int {
	res.mu.Lock()
	defer res.mu.Unlock()
	n := 0
	for _, r := range res.Results {
		e := strings.ToLower(r.Error)
		if r.Class != Acked && (strings.Contains(e, "busy") || strings.Contains(e, "locked")) {
			n++
		}
	}
	return n
}

// TestSQLiteConcurrentWriters: bento serve on a SQLite file under 16
// concurrent HTTP clients: the driver queues writers in Go, so no
// SQLITE_BUSY may reach a caller. Then two bento serve processes on the
// same file at once (the second with OUTBOX_PUBLISHER=none: one relay per
// file): across processes only SQLite's busy_timeout arbitrates; the test
// reports whether any BUSY surfaced. Both times acknowledged = orders =
// OrderPlaced rows, every event published.
func TestSQLiteConcurrentWriters(t *testing.T) {
	busyInLog := regexp.MustCompile(`SQLITE_BUSY`)
	t.Run("one-process", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "x.db")
		svc := Serve(t, []string{"DB_URL=sqlite://" + path, "OUTBOX_RETENTION=1h"})
		ctx, cancel := context.WithTimeout(context.Background(), dur(5*time.Second, 30*time.Second))
		res := Load{URL: svc.URL(), Workers: 16, Retries: 3, Prefix: "lite"}.Run(ctx)
		cancel()
		db := liteRaw(t, path)
		summary(t, "sqlite, 16 writers", res)
		Invariants(t, db, "sqlite3", "lite", res)
		cats := checkRefusals(t, res)
		requireCallerSawNothing(t, res)
		busy := busyRefusals(res)
		if busy != 0 {
			t.Errorf("%d requests were refused with SQLITE_BUSY / locked", busy)
		}
		c := res.Count()
		if c[Acked] == 0 {
			t.Fatal("no order was acknowledged")
		}
		unpublished := waitPublished(t, db, "sqlite3", 30*time.Second)
		if unpublished != 0 {
			t.Errorf("INVARIANT: %d outbox rows unpublished 30 s after the load", unpublished)
		}
		t.Logf("FIGURE sqlite-16-writers: workers=16 acknowledged=%d refused=%d no-reply=%d busy_surfaced=%d busy_in_service_log=%d errors=%s orders_per_s=%.0f unpublished=%d %s",
			c[Acked], c[Refused], c[NoReply], busy, len(busyInLog.FindAllString(svc.Output(), -1)), fmtCounts(cats),
			float64(c[Acked])/res.End.Sub(res.Start).Seconds(), unpublished, serviceCounters(t, svc))
	})

	t.Run("two-processes", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "x.db")
		first := Serve(t, []string{"DB_URL=sqlite://" + path, "OUTBOX_RETENTION=1h"})
		second := Serve(t, []string{"DB_URL=sqlite://" + path, "OUTBOX_RETENTION=1h", "OUTBOX_PUBLISHER=none"})
		ctx, cancel := context.WithTimeout(context.Background(), dur(5*time.Second, 30*time.Second))
		results := make(chan *LoadResult, 2)
		for i, svc := range []*Process{first, second} {
			go func() {
				results <- Load{URL: svc.URL(), Workers: 8, Retries: 3, Prefix: fmt.Sprintf("lite%d", i+1)}.Run(ctx)
			}()
		}
		a, b := <-results, <-results
		cancel()
		if strings.HasPrefix(a.Results[0].Customer, "lite2") {
			a, b = b, a
		}
		db := liteRaw(t, path)
		var figures []string
		busyTotal := 0
		for i, res := range []*LoadResult{a, b} {
			prefix := fmt.Sprintf("lite%d", i+1)
			svc := []*Process{first, second}[i]
			summary(t, prefix, res)
			Invariants(t, db, "sqlite3", prefix, res)
			cats := checkRefusals(t, res)
			requireCallerSawNothing(t, res)
			busy := busyRefusals(res)
			busyTotal += busy
			c := res.Count()
			if c[Acked] == 0 {
				t.Errorf("process %d: no order was acknowledged", i+1)
			}
			figures = append(figures, fmt.Sprintf("p%d_acknowledged=%d p%d_refused=%d p%d_no-reply=%d p%d_busy_surfaced=%d p%d_busy_in_service_log=%d p%d_errors=%s",
				i+1, c[Acked], i+1, c[Refused], i+1, c[NoReply], i+1, busy, i+1, len(busyInLog.FindAllString(svc.Output(), -1)), i+1, fmtCounts(cats)))
		}
		unpublished := waitPublished(t, db, "sqlite3", 30*time.Second)
		if unpublished != 0 {
			t.Errorf("INVARIANT: %d outbox rows unpublished 30 s after the load (the first process relays both)", unpublished)
		}
		t.Logf("FIGURE sqlite-two-processes: workers=8+8 %s busy_surfaced_total=%d unpublished=%d", strings.Join(figures, " "), busyTotal, unpublished)
	})
}

// TestSQLiteDiskFull: disk full (PRAGMA max_page_count) gives a clear,
// classified error and the file stays intact. A migrated SQLite file is
// reopened with DB_URL ?_pragma=max_page_count(N), N a few dozen pages
// above its size, and orders are placed through the shop service until
// the database is full. The refusal must be permanent SQLITE_FULL (not
// retried, not unknown) and the HTTP answer a JSON 5xx naming it; then
// PRAGMA integrity_check says ok, every acknowledged order is there with its
// OrderPlaced row and no refused one is; after max_page_count is raised on
// the live connections, orders are placed again.
func TestSQLiteDiskFull(t *testing.T) {
	path := filepath.Join(t.TempDir(), "full.db")
	ctx := context.Background()
	{
		db, err := bento.Open(ctConfig(t, "DB_URL=sqlite://"+path))
		if err != nil {
			t.Fatal(err)
		}
		if err := db.Migrate(ctx, migrate.Tables...); err != nil {
			t.Fatal(err)
		}
		db.Close()
	}
	var pages int
	{
		raw := liteRaw(t, path)
		if err := raw.QueryRow("PRAGMA page_count").Scan(&pages); err != nil {
			t.Fatal(err)
		}
	}
	limit := pages + 40
	db, err := bento.Open(ctConfig(t, fmt.Sprintf("DB_URL=sqlite://%s?_pragma=max_page_count(%d)", path, limit)))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	raw := db.Driver().DB()
	var got int
	if err := raw.QueryRow("PRAGMA max_page_count").Scan(&got); err != nil || got != limit {
		t.Fatalf("max_page_count = %d (%v), want %d from DB_URL", got, err, limit)
	}
	client := ent.NewClient(ent.Driver(db.Driver()))
	svc := shop.NewService(ent.NewUnitOfWork(client), client)

	order := func(i int) shop.PlaceOrder {
		cmd := shop.PlaceOrder{Customer: fmt.Sprintf("full-%d@example.com", i)}
		for l := range 5 {
			cmd.Lines = append(cmd.Lines, shop.Line{SKU: fmt.Sprintf("SKU-%d-%s", l, strings.Repeat("x", 50)), Quantity: 1 + l, UnitPriceCents: 999})
		}
		return cmd
	}
	acked := map[string]bool{}
	var refused []string
	var firstErr error
	start := time.Now()
	for i := 0; len(refused) < 5 && i < 10000; i++ {
		cmd := order(i)
		_, err := svc.Place(ctx, cmd, "full-"+fmt.Sprint(i))
		if err == nil {
			if len(refused) > 0 {
				t.Errorf("order %d was placed after the database was full", i)
			}
			acked[cmd.Customer] = true
			continue
		}
		if firstErr == nil {
			firstErr = err
		}
		refused = append(refused, cmd.Customer)
		if c, code := resilience.Classify(err), resilience.Code(err); c != resilience.Permanent || code != "SQLITE_FULL" {
			t.Errorf("order %d: category %s code %q, want permanent SQLITE_FULL: %v", i, c, code, err)
		}
	}
	fillTook := time.Since(start)
	if len(acked) == 0 || firstErr == nil {
		t.Fatalf("%d orders placed, error %v: the limit of %d pages was not reached", len(acked), firstErr, limit)
	}
	if !strings.Contains(strings.ToLower(firstErr.Error()), "full") {
		t.Errorf("the error does not say the database is full: %v", firstErr)
	}

	// What an HTTP caller sees.
	h := httptest.NewServer(shop.NewHandler(svc, shop.HTTPOptions{}))
	defer h.Close()
	big := order(-1) // as large as the orders that no longer fit
	big.Customer = "full-http@example.com"
	body, _ := json.Marshal(big)
	req, _ := http.NewRequest("POST", h.URL+"/orders", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", "full-http") // like the orders that no longer fit
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	httpAnswer := fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(string(body)))
	if resp.StatusCode/100 != 5 || !strings.HasPrefix(string(body), `{"error":`) || strings.Contains(string(body), "internal error") {
		t.Errorf("HTTP answer when full: %s; want a JSON 5xx naming the category", httpAnswer)
	}

	// The file is intact and holds exactly the acknowledged orders.
	var check string
	if err := raw.QueryRow("PRAGMA integrity_check").Scan(&check); err != nil || check != "ok" {
		t.Errorf("PRAGMA integrity_check = %q (%v)", check, err)
	}
	countLike := func(q string) int {
		var n int
		if err := raw.QueryRow(q).Scan(&n); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		return n
	}
	if n := countLike("SELECT COUNT(*) FROM orders WHERE customer LIKE 'full-%'"); n != len(acked) {
		t.Errorf("INVARIANT: %d orders, %d acknowledged", n, len(acked))
	}
	if n := countLike("SELECT COUNT(*) FROM bento_outbox o JOIN orders r ON o.aggregateid = CAST(r.id AS TEXT) WHERE o.type = 'OrderPlaced' AND r.customer LIKE 'full-%'"); n != len(acked) {
		t.Errorf("INVARIANT: %d OrderPlaced rows, %d acknowledged orders", n, len(acked))
	}
	for _, c := range refused {
		var n int
		if err := raw.QueryRow("SELECT COUNT(*) FROM orders WHERE customer = ?", c).Scan(&n); err != nil || n != 0 {
			t.Errorf("INVARIANT: refused %s has %d orders (%v)", c, n, err)
		}
	}

	// Raise the limit on every live connection of the pool: writes resume.
	conns := make([]*sql.Conn, 0, 2)
	for range 2 { // dialects.SQLiteMaxOpen
		c, err := raw.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.ExecContext(ctx, "PRAGMA max_page_count = 1000000"); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	for _, c := range conns {
		c.Close()
	}
	resumed := 0
	for i := 20000; i < 20010; i++ {
		if _, err := svc.Place(ctx, order(i), "full-"+fmt.Sprint(i)); err != nil {
			t.Errorf("after raising max_page_count: %v", err)
			continue
		}
		resumed++
	}
	if err := raw.QueryRow("PRAGMA integrity_check").Scan(&check); err != nil || check != "ok" {
		t.Errorf("PRAGMA integrity_check after resuming = %q (%v)", check, err)
	}
	t.Logf("FIGURE sqlite-disk-full: max_page_count=%d acknowledged=%d refused=%d category=%s code=%s fill_took=%s integrity=%s resumed=%d/10 http=%q",
		limit, len(acked), len(refused), resilience.Classify(firstErr), resilience.Code(firstErr), fillTook.Round(time.Millisecond), check, resumed, httpAnswer)
	t.Logf("error: %v", firstErr)
}
