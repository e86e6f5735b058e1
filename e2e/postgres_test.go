package e2e

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bento-go/bento/internal/testdb"
)

// ---------------------------------------------------------------------
// Figures: every fault test logs what it measured as
//
//	FIGURE <fault>: key=value key=value …
//
// so that the lines can be collected for docs/reliability.md.

// logFigure logs one FIGURE line. kv alternates keys and values;
// durations are rounded to the millisecond, strings with blanks quoted.
func logFigure(t testing.TB, fault string, kv ...any) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "FIGURE %s:", fault)
	for i := 0; i+1 < len(kv); i += 2 {
		var v string
		switch x := kv[i+1].(type) {
		case time.Duration:
			v = x.Round(time.Millisecond).String()
		case float64:
			v = fmt.Sprintf("%.1f", x)
		case string:
			v = x
			if v == "" || strings.ContainsAny(v, " \t\"=") {
				v = fmt.Sprintf("%q", v)
			}
		default:
			v = fmt.Sprint(x)
		}
		fmt.Fprintf(&b, " %v=%s", kv[i], v)
	}
	t.Log(b.String())
}

// loadKV returns the figures of a load: acknowledged, refused and
// no-reply requests, requests a client had to retry, and the rate.
func loadKV(res *LoadResult) []any {
	res.mu.Lock()
	var acked, refused, noReply, retried int
	for _, r := range res.Results {
		switch r.Class {
		case Acked:
			acked++
		case Refused:
			refused++
		case NoReply:
			noReply++
		}
		if r.Attempts > 1 {
			retried++
		}
	}
	res.mu.Unlock()
	d := res.End.Sub(res.Start)
	return []any{"acked", acked, "refused", refused, "no_reply", noReply, "client_retried", retried,
		"orders_per_s", float64(acked) / d.Seconds(), "load", d}
}

// retryKV returns what the service did about the fault, from its
// metrics: retries of units of work, of BEGIN and of statements, and the
// resolutions of ambiguous COMMITs.
func retryKV(m promMetrics) []any {
	return []any{"unit_retries", m.sum("bento_retries_total", `op="unit_of_work"`),
		"begin_retries", m.sum("bento_retries_total", `op="begin"`),
		"statement_retries", m.sum("bento_retries_total", `op="exec"`) + m.sum("bento_retries_total", `op="query"`),
		"ambiguous_committed", m.sum("bento_ambiguous_commits_total", `resolution="committed"`),
		"ambiguous_aborted", m.sum("bento_ambiguous_commits_total", `resolution="aborted"`),
		"ambiguous_unknown", m.sum("bento_ambiguous_commits_total", `resolution="unknown"`)}
}

var (
	transportPrefix = regexp.MustCompile(`^Post "[^"]*": `)
	tcpPair         = regexp.MustCompile(`(read|write) tcp [0-9.:]+->[0-9.:]+: `)
	localPort       = regexp.MustCompile(`127\.0\.0\.1:\d+`)
)

// transportError returns a transport error without the URL and ports, so
// that equal errors count together.
func transportError(s string) string {
	s = transportPrefix.ReplaceAllString(s, "")
	s = tcpPair.ReplaceAllString(s, "")
	return localPort.ReplaceAllString(s, "127.0.0.1:PORT")
}

// errorKinds returns the distinct final errors of a load (refusals by
// their JSON error, transport errors without the URL) and their counts.
func errorKinds(res *LoadResult) map[string]int {
	res.mu.Lock()
	defer res.mu.Unlock()
	out := map[string]int{}
	for _, r := range res.Results {
		switch r.Class {
		case Refused:
			out[fmt.Sprintf("%d %s", r.Status, r.Error)]++
		case NoReply:
			out["no reply: "+transportError(r.Error)]++
		}
	}
	return out
}

// logErrors logs one FIGURE line per distinct error callers were left
// with.
func logErrors(t testing.TB, fault string, res *LoadResult) {
	t.Helper()
	kinds := errorKinds(res)
	keys := make([]string, 0, len(kinds))
	for k := range kinds {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		logFigure(t, fault, "error", k, "count", kinds[k])
	}
	if len(keys) == 0 {
		logFigure(t, fault, "error", "none", "count", 0)
	}
}

// classifiedErrors are the messages of Bento's reference API for database
// trouble: a category (and code) in parentheses, an unknown commit
// outcome, a drain.
var classifiedErrors = []string{
	"the database is unavailable (",
	"the database cannot take the request (",
	"the outcome is unknown; retry with the same Idempotency-Key",
	"the service is shutting down",
}

// requireCallerSawNothing checks what docs/reliability.md states as "what
// the caller sees: nothing" for a fault: every request of the load was
// acknowledged, none refused, none left without a reply.
func requireCallerSawNothing(t testing.TB, res *LoadResult) {
	t.Helper()
	if c := res.Count(); c[Refused] != 0 || c[NoReply] != 0 {
		t.Errorf("CALLER: %d requests refused and %d without a reply (%s); docs/reliability.md says the caller sees nothing",
			c[Refused], c[NoReply], fmtCounts(errorKinds(res)))
	}
}

// requireClassified checks that every refusal is a 503 carrying one of
// the classified messages (never a 500 "internal error", never the
// category "unknown").
func requireClassified(t testing.TB, res *LoadResult) {
	t.Helper()
	res.mu.Lock()
	defer res.mu.Unlock()
	bad := 0
	for _, r := range res.Results {
		if r.Class != Refused {
			continue
		}
		ok := r.Status == http.StatusServiceUnavailable && !strings.Contains(r.Error, "(unknown")
		if ok {
			ok = false
			for _, m := range classifiedErrors {
				if strings.Contains(r.Error, m) {
					ok = true
				}
			}
		}
		if !ok {
			bad++
			if bad <= 5 {
				t.Errorf("CLASSIFIED: %s got %d %q: want a 503 with a classified error", r.Customer, r.Status, r.Error)
			}
		}
	}
}

// pgConns counts the sessions of application app on the server of admin.
func pgConns(t testing.TB, admin *sql.DB, app string) int {
	t.Helper()
	var n int
	if err := admin.QueryRow(`SELECT count(*) FROM pg_stat_activity WHERE application_name = $1`, app).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// settleToZero polls f until it returns 0 or timeout passes and returns
// its last value and how long it took.
func settleToZero(timeout time.Duration, f func() int) (int, time.Duration) {
	start := time.Now()
	for {
		n := f()
		if n == 0 || time.Since(start) > timeout {
			return n, time.Since(start)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// requireNoIdleInTx checks that no session of app stays idle in a
// transaction (one may be seen for a moment while a relay publishes).
func requireNoIdleInTx(t testing.TB, admin *sql.DB, app string) {
	t.Helper()
	if n, _ := settleToZero(15*time.Second, func() int { return IdleInTransaction(t, admin, app) }); n != 0 {
		t.Errorf("INVARIANT: %d sessions of %s left idle in transaction", n, app)
	}
}

// outboxPending counts the OrderPlaced rows of the run not yet published.
func outboxPending(t testing.TB, db *sql.DB, prefix string) int {
	t.Helper()
	var n int
	err := db.QueryRow(`SELECT count(*) FROM bento_outbox o JOIN orders r ON o.aggregateid = r.id::text
		WHERE o.type = 'OrderPlaced' AND o.status <> 'published' AND r.customer LIKE $1`, prefix+"-%").Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// ---------------------------------------------------------------------
// A load whose every HTTP attempt is recorded.

// HTTPAttempt is one HTTP exchange of a recorded load.
type HTTPAttempt struct {
	Customer   string
	Start, End time.Time
	Status     int    // 0 without a reply
	Body       string // the reply
	Err        string // the transport error
	Reused     bool   // on a kept-alive connection
	Wrote      bool   // the request was written in full
	Conns      int    // connections the transport used (more than one: it retried by itself)
}

// attemptRecorder is a RoundTripper that records every attempt. Its
// requests are not replayable by the transport, so that an error on a
// kept-alive connection reaches the client instead of being retried inside
// the transport: the recording then sees every cut.
type attemptRecorder struct {
	inner    http.RoundTripper
	mu       sync.Mutex
	attempts []HTTPAttempt
}

func (r *attemptRecorder) RoundTrip(req *http.Request) (*http.Response, error) {
	a := HTTPAttempt{Customer: strings.TrimPrefix(req.Header.Get("Idempotency-Key"), "k-"), Start: time.Now()}
	var body []byte
	if req.Body != nil {
		body, _ = io.ReadAll(req.Body)
		req.Body.Close()
	}
	var conns atomic.Int32
	var reused, wrote atomic.Bool
	trace := &httptrace.ClientTrace{
		GotConn:      func(i httptrace.GotConnInfo) { conns.Add(1); reused.Store(i.Reused) },
		WroteRequest: func(w httptrace.WroteRequestInfo) { wrote.Store(w.Err == nil) },
	}
	out := req.Clone(httptrace.WithClientTrace(req.Context(), trace))
	out.Body = io.NopCloser(bytes.NewReader(body))
	out.GetBody = nil // not replayable: the transport must not retry by itself
	resp, err := r.inner.RoundTrip(out)
	if err == nil {
		data, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		resp.Body = io.NopCloser(bytes.NewReader(data))
		a.Status, a.Body = resp.StatusCode, string(data)
		if rerr != nil {
			a.Err = rerr.Error()
		}
	} else {
		a.Err = err.Error()
	}
	a.End, a.Reused, a.Wrote, a.Conns = time.Now(), reused.Load(), wrote.Load(), int(conns.Load())
	r.mu.Lock()
	r.attempts = append(r.attempts, a)
	r.mu.Unlock()
	return resp, err
}

// Attempts returns what was recorded so far.
func (r *attemptRecorder) Attempts() []HTTPAttempt {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]HTTPAttempt(nil), r.attempts...)
}

// runRecorded is Load.Run with a recording transport: the same workers,
// customers, bodies, idempotency keys and client retries (Load.place).
func runRecorded(ctx context.Context, l Load) (*LoadResult, *attemptRecorder) {
	res := &LoadResult{Start: time.Now()}
	rec := &attemptRecorder{inner: &http.Transport{MaxIdleConnsPerHost: l.Workers}}
	client := &http.Client{Timeout: 30 * time.Second, Transport: rec}
	var wg sync.WaitGroup
	for w := 0; w < l.Workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ctx.Err() == nil; n++ {
				customer := fmt.Sprintf("%s-%d-%d@example.com", l.Prefix, w, n)
				r := l.place(client, customer)
				res.add(r)
				if r.Class == NoReply && strings.Contains(r.Error, "connection refused") {
					time.Sleep(50 * time.Millisecond)
				}
			}
		}()
	}
	wg.Wait()
	res.End = time.Now()
	return res, rec
}

// ackTimes returns the end times of acknowledged attempts, sorted.
func ackTimes(as []HTTPAttempt) []time.Time {
	var out []time.Time
	for _, a := range as {
		if a.Status/100 == 2 {
			out = append(out, a.End)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Before(out[j]) })
	return out
}

// firstAckAfter returns the first acknowledgement after t0 (zero if none).
func firstAckAfter(acks []time.Time, t0 time.Time) time.Time {
	i := sort.Search(len(acks), func(i int) bool { return acks[i].After(t0) })
	if i == len(acks) {
		return time.Time{}
	}
	return acks[i]
}

// maxGap returns the longest time without an acknowledgement between from
// and to.
func maxGap(acks []time.Time, from, to time.Time) time.Duration {
	prev, gap := from, time.Duration(0)
	for _, a := range acks {
		if a.Before(from) {
			continue
		}
		if a.After(to) {
			break
		}
		gap = max(gap, a.Sub(prev))
		prev = a
	}
	return max(gap, to.Sub(prev))
}

func uniqueName(t testing.TB, base string) string {
	return fmt.Sprintf("%s-%d", base, time.Now().UnixNano()%1_000_000_000)
}

// ---------------------------------------------------------------------
// The tests.

// TestTerminateBackendStorm: pg_terminate_backend on every connection of
// the service (found by DB_APPLICATION_NAME) every 50 ms for 20 s while
// orders are placed. Units of work are retried whole; every acknowledged
// order is committed exactly once with its event; the relay catches up
// once the storm stops.
//
// The fault must have happened: at least one backend killed per two
// rounds, and units of work retried because of it. What the caller sees,
// as docs/reliability.md states it: nothing, every request acknowledged
// (none refused, none without a reply).
func TestTerminateBackendStorm(t *testing.T) {
	const fault = "terminate-storm"
	url := testdb.URL(t, testdb.Postgres)
	db := testdb.OpenRaw(t, url)
	admin := testdb.Admin(t, testdb.Postgres)
	app := uniqueName(t, "e2e-storm")
	svc := Serve(t, []string{"DB_URL=" + url, "OUTBOX_RETENTION=1h", "DB_APPLICATION_NAME=" + app})

	storm := dur(20*time.Second, 2*time.Minute)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan *LoadResult)
	go func() { done <- Load{URL: svc.URL(), Workers: 8, Retries: 3, Prefix: "storm"}.Run(ctx) }()
	time.Sleep(time.Second)

	var kills, rounds int
	start := time.Now()
	tick := time.NewTicker(50 * time.Millisecond)
	for time.Since(start) < storm {
		<-tick.C
		var n int
		err := admin.QueryRow(`SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
			WHERE application_name = $1 AND pid <> pg_backend_pid()`, app).Scan(&n)
		if err != nil {
			t.Fatalf("terminating backends: %v", err)
		}
		kills += n
		rounds++
	}
	tick.Stop()
	if kills < rounds/2 {
		t.Fatalf("only %d backends terminated in %d rounds, want at least %d (one per two rounds): the fault did not happen as intended", kills, rounds, rounds/2)
	}
	time.Sleep(dur(3*time.Second, 10*time.Second))
	cancel()
	res := <-done
	summary(t, fault, res)
	m := scrapeMetrics(t, svc.URL())

	Invariants(t, db, "postgres", "storm", res)
	requireClassified(t, res)
	requireNoIdleInTx(t, admin, app)
	pending, catchup := settleToZero(60*time.Second, func() int { return outboxPending(t, db, "storm") })
	if pending != 0 {
		t.Errorf("the relay left %d OrderPlaced events unpublished 60 s after the storm", pending)
	}
	if res.Count()[Acked] == 0 {
		t.Fatal("no order was acknowledged")
	}
	requireCallerSawNothing(t, res)
	if n := m.sum("bento_retries_total", `op="unit_of_work"`) + m.sum("bento_retries_total", `op="begin"`); n == 0 {
		t.Errorf("no unit of work or BEGIN was retried: the kills never reached the service's work")
	}
	logFigure(t, fault, append([]any{"storm", storm, "rounds", rounds, "backends_killed", kills,
		"relay_caught_up_after_load", catchup}, append(retryKV(m), loadKV(res)...)...)...)
	logErrors(t, fault, res)
}

// testRestart restarts the private cluster in mode mid-load. Figures:
// restart_took is pg_ctl restart's duration (until the server accepts
// connections again); recovery runs from the start of the restart to the
// first order acknowledged after the server is back; max_ack_gap is the
// longest time without any acknowledgement around the restart.
func testRestart(t *testing.T, mode string) {
	fault := "pg-restart-" + mode
	pg := StartPG(t)
	url := pg.CreateDB("restart")
	app := "e2e-restart-" + mode
	svc := Serve(t, []string{"DB_URL=" + url, "OUTBOX_RETENTION=1h", "DB_APPLICATION_NAME=" + app})

	ctx, cancel := context.WithCancel(context.Background())
	type out struct {
		res *LoadResult
		rec *attemptRecorder
	}
	done := make(chan out)
	go func() {
		res, rec := runRecorded(ctx, Load{URL: svc.URL(), Workers: 8, Retries: 3, Prefix: "restart"})
		done <- out{res, rec}
	}()
	time.Sleep(dur(3*time.Second, 10*time.Second))
	start := time.Now()
	took := pg.Restart(mode)
	back := time.Now()
	time.Sleep(dur(5*time.Second, 20*time.Second))
	cancel()
	o := <-done
	res := o.res
	summary(t, fault, res)
	m := scrapeMetrics(t, svc.URL())

	Invariants(t, pg.DB("restart"), "postgres", "restart", res)
	if t.Failed() {
		explainResolutions(t, pg.DB("restart"), svc.Output())
	}
	requireClassified(t, res)
	requireCallerSawNothing(t, res)
	requireNoIdleInTx(t, pg.DB("postgres"), app)
	acks := ackTimes(o.rec.Attempts())
	first := firstAckAfter(acks, back)
	if first.IsZero() {
		t.Fatalf("no order was acknowledged after the server came back (%s restart took %s)", mode, took)
	}
	recovery := first.Sub(start)
	var before int
	for _, a := range acks {
		if a.Before(start) {
			before++
		}
	}
	if before == 0 {
		t.Fatal("no order was acknowledged before the restart")
	}
	pending, catchup := settleToZero(60*time.Second, func() int { return outboxPending(t, pg.DB("restart"), "restart") })
	if pending != 0 {
		t.Errorf("the relay left %d OrderPlaced events unpublished after the restart", pending)
	}
	logFigure(t, fault, append([]any{"restart_took", took, "recovery", recovery, "max_ack_gap",
		maxGap(acks, start.Add(-time.Second), back.Add(time.Second)), "acked_before", before,
		"acked_after", len(acks) - before, "relay_caught_up_after_load", catchup}, append(retryKV(m), loadKV(res)...)...)...)
	logErrors(t, fault, res)
}

var resolvedXID = regexp.MustCompile(`xid=(\d+) outcome=(\w+)`)

// explainResolutions logs the service's resolved ambiguous COMMITs and,
// for each one resolved as committed, the orders whose row was written by
// a transaction with that id (xmin): the evidence when a resolution was
// wrong.
func explainResolutions(t testing.TB, db *sql.DB, out string) {
	t.Helper()
	for _, l := range strings.Split(out, "\n") {
		if !strings.Contains(l, "ambiguous commit resolved") {
			continue
		}
		t.Logf("service: %s", tail(l, 500))
		m := resolvedXID.FindStringSubmatch(l)
		if m == nil || m[2] != "committed" {
			continue
		}
		rows, err := db.Query(`SELECT id, customer FROM orders WHERE xmin::text = (($1::bigint) % 4294967296)::text`, m[1])
		if err != nil {
			t.Logf("orders written by xid %s: %v", m[1], err)
			continue
		}
		for rows.Next() {
			var id int
			var c string
			_ = rows.Scan(&id, &c)
			t.Logf("xid %s (32-bit %d) wrote order %d of %s", m[1], mustAtoi(m[1])%4294967296, id, c)
		}
		rows.Close()
	}
}

func mustAtoi(s string) int64 {
	var n int64
	fmt.Sscan(s, &n)
	return n
}

// TestPostgresRestartFast: pg_ctl restart -m fast mid-load (sessions get
// 57P01, new connections are refused until the server is back).
func TestPostgresRestartFast(t *testing.T) { testRestart(t, "fast") }

// TestPostgresRestartImmediate: pg_ctl restart -m immediate mid-load (a
// crash: no checkpoint, recovery from WAL on start).
func TestPostgresRestartImmediate(t *testing.T) { testRestart(t, "immediate") }

// TestConnectionExhaustion: the server refuses connections beyond a role's
// CONNECTION LIMIT (53300) while the service's pool wants more; and the
// service's own pool is too small for its callers (pool timeouts). Callers
// either succeed or get a clear 503; the invariants hold.
func TestConnectionExhaustion(t *testing.T) {
	t.Run("role-connection-limit", func(t *testing.T) {
		const fault = "connection-limit"
		pg := StartPG(t)
		admin := pg.DB("postgres")
		for _, q := range []string{
			"CREATE ROLE bento_e2e LOGIN CONNECTION LIMIT 3",
			"CREATE DATABASE exhaust OWNER bento_e2e",
		} {
			if _, err := admin.Exec(q); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
		}
		url := fmt.Sprintf("postgres://bento_e2e@127.0.0.1:%d/exhaust?sslmode=disable", pg.Port)
		app := "e2e-connlimit"
		svc := Serve(t, []string{"DB_URL=" + url, "OUTBOX_RETENTION=1h", "DB_APPLICATION_NAME=" + app,
			"DB_POOL_SIZE=5", "DB_MAX_OVERFLOW=5", "DB_POOL_TIMEOUT=2s"})
		ctx, cancel := context.WithTimeout(context.Background(), dur(8*time.Second, 45*time.Second))
		var peak atomic.Int64
		go func() {
			for ctx.Err() == nil {
				if n := int64(pgConns(t, admin, app)); n > peak.Load() {
					peak.Store(n)
				}
				time.Sleep(100 * time.Millisecond)
			}
		}()
		res := Load{URL: svc.URL(), Workers: 16, Retries: 3, Prefix: "connlimit"}.Run(ctx)
		cancel()
		summary(t, fault, res)
		Invariants(t, pg.DB("exhaust"), "postgres", "connlimit", res)
		requireClassified(t, res)
		requireCallerSawNothing(t, res)
		requireNoIdleInTx(t, admin, app)
		refusals := strings.Count(svc.Output(), "53300")
		if refusals == 0 {
			t.Errorf("the server never refused a connection (53300): the fault was not injected\n%s", tail(svc.Output(), 3000))
		}
		if res.Count()[Acked] == 0 {
			t.Fatal("no order was acknowledged")
		}
		if p := peak.Load(); p > 3 {
			t.Errorf("the role had %d sessions, above its CONNECTION LIMIT 3", p)
		}
		logFigure(t, fault, append([]any{"role_limit", 3, "pool_max", 10, "workers", 16, "server_refusals_logged", refusals,
			"peak_sessions", peak.Load()}, loadKV(res)...)...)
		logErrors(t, fault, res)
	})

	// The pool of 2 connections is held by slow transactions (a session
	// holds a SHARE lock on orders for 2 s, twice) while 32 workers want
	// one: every other caller waits DB_POOL_TIMEOUT and gets a 503
	// (timeout) instead of queueing for the length of the lock. (Without
	// the lock, 32 workers on 2 connections wait ~100 ms on this machine:
	// the pool timeout is rarely reached.)
	t.Run("pool-timeout", func(t *testing.T) {
		const fault = "pool-exhausted"
		url := testdb.URL(t, testdb.Postgres)
		db := testdb.OpenRaw(t, url)
		app := uniqueName(t, "e2e-pool")
		svc := Serve(t, []string{"DB_URL=" + url, "OUTBOX_RETENTION=1h", "DB_APPLICATION_NAME=" + app,
			"DB_POOL_SIZE=2", "DB_MAX_OVERFLOW=0", "DB_POOL_TIMEOUT=300ms"})
		ctx, cancel := context.WithCancel(context.Background())
		type out struct {
			res *LoadResult
			rec *attemptRecorder
		}
		done := make(chan out)
		go func() {
			res, rec := runRecorded(ctx, Load{URL: svc.URL(), Workers: 32, Retries: 3, Prefix: "pool"})
			done <- out{res, rec}
		}()
		hold := 2 * time.Second
		for i := 0; i < 2; i++ {
			time.Sleep(2 * time.Second)
			tx, err := db.Begin()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec("LOCK TABLE orders IN SHARE MODE"); err != nil {
				t.Fatal(err)
			}
			time.Sleep(hold)
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(2 * time.Second)
		cancel()
		o := <-done
		res := o.res
		summary(t, fault, res)
		metrics := scrapeMetrics(t, svc.URL())
		Invariants(t, db, "postgres", "pool", res)
		requireClassified(t, res)
		requireNoIdleInTx(t, testdb.Admin(t, testdb.Postgres), app)
		timeouts := metrics.sum("bento_pool_timeouts_total")
		if timeouts == 0 {
			t.Errorf("no pool timeout happened: the fault was not injected")
		}
		if res.Count()[Acked] == 0 {
			t.Fatal("no order was acknowledged")
		}
		var seen503, seenTimeout int
		var slowest503 time.Duration
		for _, a := range o.rec.Attempts() {
			if a.Status != 503 {
				continue
			}
			seen503++
			slowest503 = max(slowest503, a.End.Sub(a.Start))
			if strings.Contains(a.Body, "the database is unavailable (timeout") {
				seenTimeout++
			} else {
				t.Errorf("a 503 while the pool was exhausted is not a timeout: %s", a.Body)
			}
		}
		if seenTimeout == 0 {
			t.Errorf("no caller saw a pool-timeout 503 (%d pool timeouts)", timeouts)
		}
		// The wait is bounded by the pool timeout (and any retries), not by
		// the length of the queue or of the lock.
		if slowest503 > 2*time.Second {
			t.Errorf("a caller waited %s for its 503 (DB_POOL_TIMEOUT=300ms; bound 2 s)", slowest503)
		}
		logFigure(t, fault, append([]any{"pool_max", 2, "pool_timeout", 300 * time.Millisecond, "workers", 32, "lock_held", fmt.Sprintf("2x%s", hold), "pool_timeouts", timeouts,
			"unit_retries_timeout", metrics.sum("bento_retries_total", `op="unit_of_work"`, `category="timeout"`),
			"attempts_503_timeout", seenTimeout, "slowest_503", slowest503}, loadKV(res)...)...)
		logErrors(t, fault, res)
	})
}
