package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/bento-go/bento/internal/testdb"
)

// TestServe runs `bento serve` as a real process: the binary is built
// once, each subtest starts it with an environment of its own, drives it
// over HTTP and signals it.
//
// The subtests run one after the other and the test is not parallel: its
// bounds are on wall-clock time (exit within the drain timeout), which
// other tests compiling or loading the CPU at the same time would blur.
func TestServe(t *testing.T) {
	bin := buildBinary(t)
	t.Run("starts bento serve as a real process on PostgreSQL, sends orders from many concurrent clients, sends SIGTERM mid-load", func(t *testing.T) {
		testServeSIGTERMMidLoad(t, bin)
	})
	t.Run("the same load and invariants in force mode, without pre-stop delay", func(t *testing.T) {
		testServeSIGTERMMidLoadMode(t, bin, "force", 0)
	})
	t.Run("force mode ends within its deadline even with a transaction blocked on a lock", func(t *testing.T) {
		testServeForceBlockedOnLock(t, bin)
	})
	t.Run("graceful default on SQLite with zero configuration", func(t *testing.T) {
		testServeSQLiteZeroConfig(t, bin)
	})
	t.Run("SIGTERM while starting is not lost", func(t *testing.T) {
		testServeSIGTERMWhileStarting(t, bin)
	})
}

// buildBinary builds cmd/bento into a temporary directory.
func buildBinary(t *testing.T) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to build bento: %v", err)
	}
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "bento")
	build := exec.Command(goTool, "build", "-o", bin, "./cmd/bento")
	build.Dir = root
	start := time.Now()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	t.Logf("go build took %s", time.Since(start).Round(time.Millisecond))
	return bin
}

// lockedBuffer is a bytes.Buffer safe for the process's writes and the
// test's reads.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// server is one `bento serve` process.
type server struct {
	t      *testing.T
	cmd    *exec.Cmd
	addr   string
	base   string // http://addr
	stdout lockedBuffer
	stderr lockedBuffer
	exited chan struct{}
	code   int
	end    time.Time
	signal time.Time // when SIGTERM was sent
}

// freeAddr returns a 127.0.0.1 address with a port free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startServe starts `bento serve --addr <free port>` in dir with exactly
// the environment given.
func startServe(t *testing.T, bin, dir string, environ []string, args ...string) *server {
	t.Helper()
	addr := freeAddr(t)
	s := &server{t: t, addr: addr, base: "http://" + addr, exited: make(chan struct{})}
	s.cmd = exec.Command(bin, append([]string{"serve", "--addr", addr}, args...)...)
	s.cmd.Dir = dir
	s.cmd.Env = append([]string{}, environ...)
	s.cmd.Stdout, s.cmd.Stderr = &s.stdout, &s.stderr
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", bin, err)
	}
	go func() {
		err := s.cmd.Wait()
		s.end = time.Now()
		s.code = s.cmd.ProcessState.ExitCode()
		var exitErr *exec.ExitError
		if err != nil && !errors.As(err, &exitErr) {
			s.code = -2
		}
		close(s.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-s.exited:
		default:
			s.cmd.Process.Kill()
			<-s.exited
			t.Logf("killed the server still running at the end of the test\nstderr:\n%s", tail(s.stderr.String(), 40))
		}
	})
	return s
}

func tail(s string, lines int) string {
	parts := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(parts) > lines {
		parts = append([]string{fmt.Sprintf("… (%d lines before)", len(parts)-lines)}, parts[len(parts)-lines:]...)
	}
	return strings.Join(parts, "\n")
}

func (s *server) running() bool {
	select {
	case <-s.exited:
		return false
	default:
		return true
	}
}

// waitReady waits until GET /readyz answers 200. Generous: a loaded
// machine may take long to start a process and migrate.
func (s *server) waitReady(within time.Duration) {
	s.t.Helper()
	c := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(within)
	for {
		resp, err := c.Get(s.base + "/readyz")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if !s.running() {
			s.t.Fatalf("bento serve exited with %d before it was ready\nstdout:\n%s\nstderr:\n%s", s.code, s.stdout.String(), tail(s.stderr.String(), 40))
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("bento serve was not ready within %s (last: %v)\nstderr:\n%s", within, err, tail(s.stderr.String(), 40))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *server) sigterm() {
	s.t.Helper()
	s.signal = time.Now()
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		s.t.Fatalf("SIGTERM: %v", err)
	}
}

// waitExit waits for the process to exit within bound of the SIGTERM and
// returns its exit code and how long after the SIGTERM it exited.
func (s *server) waitExit(bound time.Duration) (int, time.Duration) {
	s.t.Helper()
	select {
	case <-s.exited:
	case <-time.After(bound + 30*time.Second):
		s.t.Fatalf("bento serve still running %s after SIGTERM (bound %s)\nstderr:\n%s", time.Since(s.signal).Round(time.Millisecond), bound, tail(s.stderr.String(), 40))
	}
	took := s.end.Sub(s.signal)
	if took > bound {
		s.t.Errorf("bento serve exited %s after SIGTERM, want within %s\nstderr:\n%s", took.Round(time.Millisecond), bound, tail(s.stderr.String(), 40))
	}
	return s.code, took
}

// placed is the answer to one POST /orders of the load.
type placed struct {
	customer string
	class    string // "2xx", "503", "other status", "refused", "no reply"
	status   int
	id       int
	err      string
}

// classify sorts a client's outcome: a 2xx, a 503, another status, a
// connection refused (the request never reached the server) or no reply
// (the request may or may not have been processed).
func classify(resp *http.Response, err error) string {
	switch {
	case err != nil && errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case err != nil:
		return "no reply"
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return "2xx"
	case resp.StatusCode == http.StatusServiceUnavailable:
		return "503"
	}
	return "other status"
}

func orderBody(customer string) []byte {
	return []byte(`{"customer": "` + customer + `", "lines": [{"sku": "SKU-1", "quantity": 2, "unit_price_cents": 1250}]}`)
}

func testServeSIGTERMMidLoad(t *testing.T, bin string) {
	testServeSIGTERMMidLoadMode(t, bin, "graceful", time.Second)
}

// testServeSIGTERMMidLoadMode sends orders from 16 clients, SIGTERMs the
// process mid-load and checks, by counting in the database, that every
// 2xx has exactly one order and one OrderPlaced row and that no refused
// request (503, connection refused) has an order. Only a request whose
// outcome the client cannot know (no reply, or a 503 that says the commit's
// outcome is unknown) may have one, and at most one.
func testServeSIGTERMMidLoadMode(t *testing.T, bin, mode string, preStop time.Duration) {
	const (
		drainTimeout = 10 * time.Second
		workers      = 16
	)
	dbURL := testdb.URL(t, testdb.Postgres)
	app := "bt_serve_" + randomHex(t, 4)
	s := startServe(t, bin, t.TempDir(), []string{
		"DB_URL=" + dbURL, "DB_APPLICATION_NAME=" + app, "DB_DRAIN_MODE=" + mode,
		"DB_DRAIN_TIMEOUT=" + drainTimeout.String(), "DB_DRAIN_PRESTOP_DELAY=" + preStop.String(),
		// Keep published rows: every committed order must show its one
		// OrderPlaced row, published by the relay in the process or not.
		"OUTBOX_RETENTION=1h",
	})
	s.waitReady(time.Minute)

	transport := &http.Transport{MaxIdleConnsPerHost: workers, DisableCompression: true}
	defer transport.CloseIdleConnections()
	client := &http.Client{Transport: transport, Timeout: time.Minute}
	var (
		mu      sync.Mutex
		results []placed
		wg      sync.WaitGroup
	)
	stopAll := time.Now().Add(2 * time.Minute) // a safety net, never the normal end
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; time.Now().Before(stopAll); n++ {
				customer := fmt.Sprintf("c%d-%d@example.com", w, n)
				req, err := http.NewRequest(http.MethodPost, s.base+"/orders", bytes.NewReader(orderBody(customer)))
				if err != nil {
					t.Error(err)
					return
				}
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Idempotency-Key", fmt.Sprintf("k-%d-%d", w, n))
				// With an Idempotency-Key, net/http replays a request whose
				// reused connection failed on a new one: a refused replay
				// does not mean the server never had the request.
				var wrote atomic.Bool
				req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
					WroteRequest: func(i httptrace.WroteRequestInfo) {
						if i.Err == nil {
							wrote.Store(true)
						}
					},
				}))
				resp, err := client.Do(req)
				p := placed{customer: customer, class: classify(resp, err)}
				if p.class == "refused" && wrote.Load() {
					p.class = "no reply" // sent once, then refused when replayed
				}
				if err != nil {
					p.err = err.Error()
				} else {
					p.status = resp.StatusCode
					body, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if p.class == "2xx" {
						var o struct {
							ID       int    `json:"id"`
							Customer string `json:"customer"`
						}
						if err := json.Unmarshal(body, &o); err != nil || o.ID < 1 || o.Customer != customer {
							t.Errorf("a 2xx for %s with body %q", customer, body)
						}
						p.id = o.ID
					} else {
						p.err = string(body)
						if p.class == "503" && resp.Header.Get("Retry-After") == "" {
							t.Errorf("a 503 without Retry-After: %s", body)
						}
						if p.class == "503" && strings.Contains(p.err, "outcome is unknown") {
							p.class = "503 outcome unknown"
						}
					}
				}
				mu.Lock()
				results = append(results, p)
				mu.Unlock()
				if p.class == "refused" {
					return
				}
			}
			t.Errorf("worker %d was never refused a connection", w)
		}()
	}

	// Let the load run, then SIGTERM mid-load and watch /readyz.
	time.Sleep(time.Second)
	mu.Lock()
	before := len(results)
	mu.Unlock()
	s.sigterm()
	type probe struct {
		at    time.Duration
		class string
	}
	var probes []probe
	probeClient := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for time.Since(s.signal) < drainTimeout+preStop+10*time.Second {
		resp, err := probeClient.Get(s.base + "/readyz")
		c := classify(resp, err)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				c = "200"
			}
		}
		probes = append(probes, probe{time.Since(s.signal), c})
		if c == "refused" {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	first503, firstRefused, lastOK := time.Duration(-1), time.Duration(-1), time.Duration(-1)
	for _, p := range probes {
		switch {
		case p.class == "503" && first503 < 0:
			first503 = p.at
		case p.class == "refused" && firstRefused < 0:
			firstRefused = p.at
		case p.class == "200":
			lastOK = p.at
		}
	}
	t.Logf("/readyz after SIGTERM: %d probes; last 200 at %s, first 503 at %s, first refused at %s",
		len(probes), lastOK, first503, firstRefused)
	if preStop > 0 {
		if first503 < 0 || firstRefused < 0 || first503 > firstRefused {
			t.Errorf("want /readyz to answer 503 while the listener still answers, before connections are refused; probes: %v", probes)
		}
		if first503 >= 0 && lastOK > first503 {
			t.Errorf("/readyz answered 200 at %s, after a 503 at %s", lastOK, first503)
		}
		if first503 > 500*time.Millisecond {
			t.Errorf("/readyz turned 503 only %s after SIGTERM; want at once", first503)
		}
		if firstRefused >= 0 && firstRefused < preStop {
			t.Errorf("connections were refused %s after SIGTERM, before the pre-stop delay %s passed", firstRefused, preStop)
		}
	}

	code, took := s.waitExit(drainTimeout + preStop + 4*time.Second)
	wg.Wait()
	t.Logf("exit %d, %s after SIGTERM", code, took.Round(time.Millisecond))
	if code != 0 {
		t.Errorf("exit code %d, want 0\nstderr:\n%s", code, tail(s.stderr.String(), 40))
	}
	stderr := s.stderr.String()
	// Force: connections of cancelled units are closed by database/sql as
	// it finishes their rollback, a few milliseconds after the units
	// returned, so connections_end may be above 0 when the drain reports;
	// pg_stat_activity is checked after the exit below.
	m := regexp.MustCompile(`msg="bento: drain finished".*`).FindString(stderr)
	if !strings.Contains(m, "in_flight_end=0") ||
		(mode == "graceful" && (!strings.Contains(m, "success=true") || !strings.Contains(m, "connections_end=0"))) {
		t.Errorf("the drain should finish with in_flight_end=0 (and success=true, connections_end=0 when graceful); its log line: %q", m)
	}
	t.Logf("drain: %s", m)

	// Count in the database.
	raw := testdb.OpenRaw(t, dbURL)
	orders := map[string][]int{}
	rows := queryRows(t, raw, "SELECT id, customer FROM orders")
	for rows.Next() {
		var id int
		var customer string
		if err := rows.Scan(&id, &customer); err != nil {
			t.Fatal(err)
		}
		orders[customer] = append(orders[customer], id)
	}
	closeRows(t, rows)
	placedByCustomer, placedByID := map[string]int{}, map[string]int{}
	rows = queryRows(t, raw, "SELECT aggregateid, payload->>'customer' FROM bento_outbox WHERE type = 'OrderPlaced' AND aggregatetype = 'Order'")
	for rows.Next() {
		var aggID, customer string
		if err := rows.Scan(&aggID, &customer); err != nil {
			t.Fatal(err)
		}
		placedByCustomer[customer]++
		placedByID[aggID]++
	}
	closeRows(t, rows)

	statuses := map[string]int{}
	rows = queryRows(t, raw, "SELECT status, count(*) FROM bento_outbox GROUP BY status")
	for rows.Next() {
		var st string
		var n int
		if err := rows.Scan(&st, &n); err != nil {
			t.Fatal(err)
		}
		statuses[st] = n
	}
	closeRows(t, rows)
	t.Logf("outbox rows by status after the exit: %v", statuses)

	classes := map[string]int{}
	byCustomer := map[string]placed{}
	bodies503 := map[string]int{}
	for _, p := range results {
		classes[p.class]++
		byCustomer[p.customer] = p
		if strings.HasPrefix(p.class, "503") {
			bodies503[strings.TrimSpace(p.err)]++
		}
	}
	if len(bodies503) > 0 {
		t.Logf("503 answers: %v", bodies503)
		for _, l := range strings.Split(stderr, "\n") {
			if strings.Contains(l, `msg="bento: request failed"`) {
				t.Logf("server: %s", l[strings.Index(l, "msg="):])
			}
		}
	}
	t.Logf("%s: %d requests (%d before SIGTERM): 2xx %d, 503 %d, 503 outcome unknown %d, other status %d, refused %d, no reply %d; %d orders in the database",
		mode, len(results), before, classes["2xx"], classes["503"], classes["503 outcome unknown"], classes["other status"], classes["refused"], classes["no reply"], len(orders))
	if classes["2xx"] == 0 {
		t.Error("no request succeeded")
	}
	if classes["refused"] != workers {
		t.Errorf("%d requests refused, want one per worker (%d)", classes["refused"], workers)
	}
	if classes["other status"] > 0 {
		for _, p := range results {
			if p.class == "other status" {
				t.Errorf("%s: unexpected status %d: %s", p.customer, p.status, p.err)
			}
		}
	}
	var noReplyWithOrder int
	for _, p := range results {
		ids := orders[p.customer]
		switch p.class {
		case "2xx":
			if len(ids) != 1 || ids[0] != p.id {
				t.Errorf("%s got a 2xx with id %d; orders in the database: %v (want exactly that one)", p.customer, p.id, ids)
			}
			if n := placedByCustomer[p.customer]; n != 1 {
				t.Errorf("%s got a 2xx; %d OrderPlaced outbox rows for that customer, want 1", p.customer, n)
			}
			if n := placedByID[fmt.Sprint(p.id)]; n != 1 {
				t.Errorf("%s got a 2xx; %d OrderPlaced outbox rows for order %d, want 1", p.customer, n, p.id)
			}
		case "no reply", "503 outcome unknown":
			if len(ids) > 0 {
				noReplyWithOrder++
			}
			if len(ids) > 1 {
				t.Errorf("%s (%s) has %d orders, want at most 1", p.customer, p.class, len(ids))
			}
			t.Logf("%s for %s: %s (orders %v)", p.class, p.customer, strings.TrimSpace(p.err), ids)
		default:
			if len(ids) > 0 {
				t.Errorf("%s got %s (%d %s) but has orders %v", p.customer, p.class, p.status, p.err, ids)
			}
		}
	}
	for customer, ids := range orders {
		p, ok := byCustomer[customer]
		if !ok {
			t.Errorf("order(s) %v for %s, a customer no request was sent for", ids, customer)
			continue
		}
		if p.class != "2xx" && p.class != "no reply" && p.class != "503 outcome unknown" {
			continue // reported above
		}
		for _, id := range ids {
			if n := placedByID[fmt.Sprint(id)]; n != 1 {
				t.Errorf("order %d (%s, %s) has %d OrderPlaced outbox rows, want 1", id, customer, p.class, n)
			}
		}
	}
	t.Logf("requests of unknown outcome with an order: %d of %d", noReplyWithOrder, classes["no reply"]+classes["503 outcome unknown"])
	waitNoConnections(t, raw, app)
}

func queryRows(t *testing.T, db *sql.DB, q string, args ...any) *sql.Rows {
	t.Helper()
	rows, err := db.Query(q, args...)
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return rows
}

func closeRows(t *testing.T, rows *sql.Rows) {
	t.Helper()
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		t.Fatal(err)
	}
}

// waitNoConnections waits until pg_stat_activity shows no connection of
// the application (a backend may take a moment to notice its client left).
func waitNoConnections(t *testing.T, raw *sql.DB, app string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var n int
		if err := raw.QueryRow("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", app).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("pg_stat_activity still shows %d connection(s) of %s 10s after the process exited", n, app)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitLockWait waits until a backend of the application waits for a lock.
func waitLockWait(t *testing.T, raw *sql.DB, app string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var n int
		if err := raw.QueryRow("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'", app).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no backend of bento serve waited for the row lock within 30s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func testServeForceBlockedOnLock(t *testing.T, bin string) {
	const drainTimeout = 3 * time.Second
	dbURL := testdb.URL(t, testdb.Postgres)
	app := "bt_serve_" + randomHex(t, 4)
	s := startServe(t, bin, t.TempDir(), []string{
		"DB_URL=" + dbURL, "DB_APPLICATION_NAME=" + app,
		"DB_DRAIN_MODE=force", "DB_DRAIN_TIMEOUT=" + drainTimeout.String(),
	})
	s.waitReady(time.Minute)
	client := &http.Client{Timeout: time.Minute}
	resp, err := client.Post(s.base+"/orders", "application/json", bytes.NewReader(orderBody("locked@example.com")))
	if err != nil {
		t.Fatal(err)
	}
	var o struct {
		ID     int    `json:"id"`
		Status string `json:"status"`
	}
	err = json.NewDecoder(resp.Body).Decode(&o)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusCreated || o.ID < 1 {
		t.Fatalf("POST /orders: %d %+v %v", resp.StatusCode, o, err)
	}

	raw := testdb.OpenRaw(t, dbURL)
	ctx := context.Background()
	holder, err := raw.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback()
	var id int
	if err := holder.QueryRowContext(ctx, "SELECT id FROM orders WHERE id = $1 FOR UPDATE", o.ID).Scan(&id); err != nil {
		t.Fatalf("locking order %d: %v", o.ID, err)
	}

	type payResult struct {
		status int
		retry  string
		body   string
		err    error
		at     time.Time
	}
	paid := make(chan payResult, 1)
	go func() {
		resp, err := client.Post(fmt.Sprintf("%s/orders/%d/pay", s.base, o.ID), "application/json", nil)
		r := payResult{err: err}
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			r.status, r.retry, r.body = resp.StatusCode, resp.Header.Get("Retry-After"), string(b)
		}
		r.at = time.Now()
		paid <- r
	}()
	waitLockWait(t, raw, app)

	s.sigterm()
	code, took := s.waitExit(drainTimeout + 2*time.Second)
	t.Logf("exit %d, %s after SIGTERM", code, took.Round(time.Millisecond))
	if code != 0 {
		t.Errorf("exit code %d, want 0\nstderr:\n%s", code, tail(s.stderr.String(), 40))
	}
	var r payResult
	select {
	case r = <-paid:
	case <-time.After(10 * time.Second):
		t.Fatal("the pay request did not end after the process exited")
	}
	t.Logf("pay: status %d, Retry-After %q, body %q, err %v, %s after SIGTERM", r.status, r.retry, strings.TrimSpace(r.body), r.err, r.at.Sub(s.signal).Round(time.Millisecond))
	switch {
	case r.err != nil: // the connection closed: acceptable
	case r.status == http.StatusServiceUnavailable:
		if r.retry == "" || !strings.Contains(r.body, `"error"`) {
			t.Errorf("the 503 should carry Retry-After and a JSON error: %+v", r)
		}
	default:
		t.Errorf("the pay request got %d %q; want 503 or a closed connection", r.status, r.body)
	}
	if err := holder.Rollback(); err != nil {
		t.Fatalf("releasing the lock: %v", err)
	}
	var status string
	if err := raw.QueryRow("SELECT status FROM orders WHERE id = $1", o.ID).Scan(&status); err != nil {
		t.Fatal(err)
	}
	if status != "pending" {
		t.Errorf("order %d is %q, want pending: the forced unit of work must roll back", o.ID, status)
	}
	var paidEvents int
	if err := raw.QueryRow("SELECT count(*) FROM bento_outbox WHERE type = 'OrderPaid'").Scan(&paidEvents); err != nil {
		t.Fatal(err)
	}
	if paidEvents != 0 {
		t.Errorf("%d OrderPaid outbox rows, want 0", paidEvents)
	}
	waitNoConnections(t, raw, app)
}

func testServeSQLiteZeroConfig(t *testing.T, bin string) {
	dir := t.TempDir()
	s := startServe(t, bin, dir, nil) // no DB_ variable at all
	s.waitReady(time.Minute)
	resp, err := http.Post(s.base+"/orders", "application/json", strings.NewReader(
		`{"customer": "a@example.com", "lines": [{"sku": "SKU-1", "quantity": 2, "unit_price_cents": 1250}]}`))
	if err != nil {
		t.Fatal(err)
	}
	var o struct {
		ID         int    `json:"id"`
		Status     string `json:"status"`
		TotalCents int64  `json:"total_cents"`
		Lines      []any  `json:"lines"`
	}
	err = json.NewDecoder(resp.Body).Decode(&o)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusCreated || o.ID < 1 || o.Status != "pending" || o.TotalCents != 2500 || len(o.Lines) != 1 {
		t.Fatalf("POST /orders: %d %+v %v", resp.StatusCode, o, err)
	}
	s.sigterm()
	code, took := s.waitExit(10 * time.Second)
	t.Logf("exit %d, %s after SIGTERM", code, took.Round(time.Millisecond))
	if code != 0 {
		t.Errorf("exit code %d, want 0\nstderr:\n%s", code, tail(s.stderr.String(), 40))
	}
	if !strings.Contains(s.stderr.String(), "drain_mode=graceful") {
		t.Errorf("the default drain mode should be graceful\nstderr:\n%s", tail(s.stderr.String(), 20))
	}
	dbFile := filepath.Join(dir, "bento.db")
	if _, err := os.Stat(dbFile); err != nil {
		t.Fatalf("bento.db should exist in the working directory: %v", err)
	}
	// Count what the process committed.
	db, err := sql.Open("sqlite3", "file:"+dbFile+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var orders, events int
	if err := db.QueryRow("SELECT count(*) FROM orders").Scan(&orders); err != nil {
		t.Fatal(err)
	}
	if err := db.QueryRow("SELECT count(*) FROM bento_outbox WHERE type = 'OrderPlaced'").Scan(&events); err != nil {
		t.Fatal(err)
	}
	if orders != 1 || events > 1 {
		t.Errorf("bento.db holds %d orders and %d OrderPlaced rows; want 1 order (its event published or pending)", orders, events)
	}
}

// holdProxy forwards TCP connections to target, but only once released:
// a process that connects is held in its startup.
type holdProxy struct {
	ln        net.Listener
	target    string
	connected chan struct{}
	release   chan struct{}
	once      sync.Once
}

func newHoldProxy(t *testing.T, target string) *holdProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &holdProxy{ln: ln, target: target, connected: make(chan struct{}), release: make(chan struct{})}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.once.Do(func() { close(p.connected) })
			go func() {
				defer c.Close()
				<-p.release
				up, err := net.Dial("tcp", p.target)
				if err != nil {
					return
				}
				defer up.Close()
				go func() { io.Copy(up, c); up.(*net.TCPConn).CloseWrite() }()
				io.Copy(c, up)
			}()
		}
	}()
	return p
}

// testServeSIGTERMWhileStarting: a SIGTERM that arrives while the service
// starts (here: while it connects to PostgreSQL to migrate) shuts it down
// once started; it must not be swallowed, leaving the process serving
// until a second signal forces it.
func testServeSIGTERMWhileStarting(t *testing.T, bin string) {
	dbURL := testdb.URL(t, testdb.Postgres)
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	proxy := newHoldProxy(t, u.Host)
	u.Host = proxy.ln.Addr().String()
	s := startServe(t, bin, t.TempDir(), []string{"DB_URL=" + u.String(), "DB_APPLICATION_NAME=bt_serve_" + randomHex(t, 4)})
	select {
	case <-proxy.connected:
	case <-s.exited:
		t.Fatalf("bento serve exited with %d before connecting\nstderr:\n%s", s.code, s.stderr.String())
	case <-time.After(time.Minute):
		t.Fatal("bento serve did not connect to the database within a minute")
	}
	s.sigterm()
	time.Sleep(300 * time.Millisecond)
	close(proxy.release)
	code, took := s.waitExit(15 * time.Second)
	t.Logf("exit %d, %s after SIGTERM", code, took.Round(time.Millisecond))
	if code != 0 {
		t.Errorf("exit code %d, want 0 (the SIGTERM during startup shuts the service down gracefully)\nstderr:\n%s", code, tail(s.stderr.String(), 40))
	}
}

// TestServeBadAddr: a malformed --addr is a bad setting: exit 2 with one
// line that names the flag and the value and says what is accepted,
// before the database is touched.
func TestServeBadAddr(t *testing.T) {
	for _, addr := range []string{"nope", "127.0.0.1", "127.0.0.1:99999", "127.0.0.1:http-nope", "[::1:80"} {
		t.Run(addr, func(t *testing.T) {
			dir := t.TempDir()
			r := runCLI(t, []string{"DB_URL=sqlite://" + filepath.Join(dir, "b.db")}, "serve", "--addr", addr)
			if r.code != exitConfig {
				t.Fatalf("want exit %d for a bad --addr; %s", exitConfig, r)
			}
			assertOneLine(t, "stderr", r.stderr)
			for _, want := range []string{"--addr", fmt.Sprintf("%q", addr), "accepted: HOST:PORT"} {
				if !strings.Contains(r.stderr, want) {
					t.Errorf("stderr does not contain %q: %s", want, r.stderr)
				}
			}
			if _, err := os.Stat(filepath.Join(dir, "b.db")); err == nil {
				t.Error("the database was opened before the address was checked")
			}
		})
	}
}

// TestServePortTaken: an address already in use fails the command with
// exit 1 and a line naming the address.
func TestServePortTaken(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addr := ln.Addr().String()
	r := runCLI(t, []string{"DB_URL=" + sqliteURL(t), "OUTBOX_PUBLISHER=none"}, "serve", "--addr", addr)
	if r.code != exitFail {
		t.Fatalf("want exit %d with the port taken; %s", exitFail, r)
	}
	if !strings.Contains(r.stderr, "bento serve: listening: ") || !strings.Contains(r.stderr, addr) || !strings.Contains(r.stderr, "in use") {
		t.Fatalf("stderr does not say the address is in use: %s", r)
	}
}

// failingListener accepts nothing: its Accept fails at once with an error
// that is not temporary, as a listener that broke would.
type failingListener struct{ net.Listener }

var errListenerBroke = errors.New("accept: the listener broke (injected)")

func (failingListener) Accept() (net.Conn, error) { return nil, errListenerBroke }

// TestServeExitsNonZeroWhenServerFails: when the HTTP server stops with an
// error while serving, serve shuts down as on a signal and exits 1 with a
// line that says why (it exited 0).
func TestServeExitsNonZeroWhenServerFails(t *testing.T) {
	var stdout, stderr lockedBuffer
	cfg := testdb.Config(t, testdb.SQLite)
	cfg.Outbox.Publisher = "none"
	inv := &invocation{
		env:    env{stdout: &stdout, stderr: &stderr, environ: func() []string { return nil }},
		name:   "serve",
		cfg:    cfg,
		logger: slog.New(slog.NewTextHandler(&stderr, nil)),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // a hang ends as a signal would
	defer cancel()
	code := serve(ctx, inv, true, func() (net.Listener, error) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		return failingListener{ln}, err
	})
	if ctx.Err() != nil {
		t.Fatalf("serve ran until the test's deadline: it did not notice that the server failed\n%s", stderr.String())
	}
	if code != exitFail {
		t.Fatalf("serve returned %d after its HTTP server failed, want %d\n%s", code, exitFail, stderr.String())
	}
	if !strings.Contains(stderr.String(), "bento serve: HTTP server failed: "+errListenerBroke.Error()) {
		t.Fatalf("stderr does not say the server failed:\n%s", stderr.String())
	}
}
