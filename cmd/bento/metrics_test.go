package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/bento-go/bento/internal/testdb"
)

// TestServeMetrics scrapes GET /metrics of a running `bento serve` (the
// real binary, on a fresh PostgreSQL database, OUTBOX_PUBLISHER=log)
// before and after three kinds of work and checks that the counters moved
// by the right amounts:
//
//   - 5 orders placed: 5 committed units of work, statements and commits
//     timed, and once the in-process relay ran, 5 events published and
//     timed from recording to acknowledgement, nothing pending.
//   - A forced retry. The conflict is an aggregate version conflict (not a
//     SQLSTATE 40001): a separate connection holds the order's row lock
//     (UPDATE … SET total_cents = total_cents) while POST /orders/X/pay is
//     in flight; once pg_stat_activity shows the service's version-checked
//     UPDATE waiting for that lock, the other transaction bumps the
//     version and commits. PostgreSQL (READ COMMITTED) then re-checks the
//     service's WHERE version = v against the new row, updates nothing,
//     the aggregate hook turns that into a transient ConflictError and the
//     unit of work runs again, reading the new version: the pay succeeds,
//     and bento_retries_total{op="unit_of_work",category="transient"}
//     grows. Deterministic: the version is bumped only while the service
//     is known to wait.
//   - The pool's series (limit = DB_POOL_SIZE + DB_MAX_OVERFLOW), and
//     bounded label values: no SQL, no order id, no customer, no SKU.
func TestServeMetrics(t *testing.T) {
	t.Parallel()
	bin := mxBuild(t)
	dbURL := testdb.URL(t, testdb.Postgres)
	srv := mxStart(t, bin, []string{
		"DB_URL=" + dbURL,
		"OUTBOX_PUBLISHER=log",
		"DB_POOL_SIZE=3",
		"DB_MAX_OVERFLOW=4",
	})
	ctx := context.Background()
	raw := testdb.OpenRaw(t, dbURL)
	// Order ids far from anything a label could contain by chance.
	const idBase = 7340000
	if _, err := raw.ExecContext(ctx, "SELECT setval(pg_get_serial_sequence('orders', 'id'), $1)", idBase); err != nil {
		t.Fatalf("moving the orders id sequence: %v", err)
	}

	before := srv.scrape(t)
	if v, ok := before.get("bento_pool_max_open", "role", "primary"); !ok || v != 3+4 {
		t.Errorf("bento_pool_max_open{role=primary} = %v (present %v), want 7 = DB_POOL_SIZE 3 + DB_MAX_OVERFLOW 4", v, ok)
	}
	if _, ok := before.get("bento_pool_connections", "role", "primary", "state", "open"); !ok {
		t.Error(`bento_pool_connections{role="primary",state="open"} is missing`)
	}

	// 1. Place orders.
	const n = 5
	var ids []int
	for i := range n {
		body := fmt.Sprintf(`{"customer": "mx-customer-%d@example.com", "lines": [{"sku": "MXSKU-%d", "quantity": 2, "unit_price_cents": 1250}]}`, i, i)
		status, resp := srv.post(t, "/orders", body)
		if status != http.StatusCreated {
			t.Fatalf("POST /orders: %d %s", status, resp)
		}
		var o struct {
			ID      int   `json:"id"`
			Version int64 `json:"version"`
		}
		if err := json.Unmarshal(resp, &o); err != nil || o.ID <= idBase {
			t.Fatalf("POST /orders answered %s (%v): want an id above %d", resp, err, idBase)
		}
		ids = append(ids, o.ID)
	}
	placed := srv.waitFor(t, 15*time.Second, "the relay to publish the 5 events", func(s mxScrape) bool {
		pending, _ := s.get("bento_outbox_pending")
		return s.delta(before, "bento_outbox_published_total") >= n && pending == 0
	})
	d := func(name string, l ...string) float64 { return placed.delta(before, name, l...) }
	mxWant(t, "units_of_work_total{committed}", d("bento_units_of_work_total", "outcome", "committed"), n)
	mxWant(t, "units_of_work_total{failed}", d("bento_units_of_work_total", "outcome", "failed"), 0)
	mxWant(t, "unit_of_work_attempts count", d("bento_unit_of_work_attempts"), n)
	mxWant(t, "unit_of_work_attempts sum (one transaction each)", placed.sum("bento_unit_of_work_attempts")-before.sum("bento_unit_of_work_attempts"), n)
	mxWant(t, "unit_of_work_duration_seconds{committed} count", d("bento_unit_of_work_duration_seconds", "outcome", "committed"), n)
	if g := d("bento_statement_duration_seconds", "op", "query", "outcome", "ok"); g < n {
		// Each order is at least an INSERT … RETURNING of the order and of
		// its lines, sent through Query.
		t.Errorf("statement_duration_seconds{query,ok} grew by %v, want >= %d", g, n)
	}
	if g := d("bento_statement_duration_seconds", "op", "exec", "outcome", "ok"); g < 1 {
		// The relay deletes the published rows with an Exec.
		t.Errorf("statement_duration_seconds{exec,ok} grew by %v, want >= 1", g)
	}
	if g := d("bento_transaction_duration_seconds", "outcome", "commit"); g < n {
		t.Errorf("transaction_duration_seconds{commit} grew by %v, want >= %d", g, n)
	}
	mxWant(t, "outbox_published_total", d("bento_outbox_published_total"), n)
	mxWant(t, "outbox_failed_total", d("bento_outbox_failed_total"), 0)
	mxWant(t, "outbox_dead_lettered_total", d("bento_outbox_dead_lettered_total"), 0)
	if g := d("bento_outbox_relay_batch_duration_seconds"); g < 1 {
		t.Errorf("outbox_relay_batch_duration_seconds count grew by %v, want >= 1", g)
	}
	mxWant(t, "outbox_commit_to_published_seconds count", d("bento_outbox_commit_to_published_seconds"), n)
	if s := placed.sum("bento_outbox_commit_to_published_seconds") - before.sum("bento_outbox_commit_to_published_seconds"); s < 0 || s > n*15 {
		t.Errorf("outbox_commit_to_published_seconds sum grew by %v s for %d events published within 15 s, want 0..%d", s, n, n*15)
	}
	for _, name := range []string{"bento_outbox_pending", "bento_outbox_oldest_pending_age_seconds", "bento_outbox_dead_letters"} {
		if v, ok := placed.get(name); !ok || v != 0 {
			t.Errorf("%s = %v (present %v), want 0", name, v, ok)
		}
	}
	if v, _ := placed.get("bento_outbox_stats_up"); v != 1 {
		t.Errorf("bento_outbox_stats_up = %v, want 1", v)
	}

	// 2. A forced retry.
	id := ids[0]
	lockConn, err := raw.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer lockConn.Close()
	lockTx, err := lockConn.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer lockTx.Rollback()
	if _, err := lockTx.ExecContext(ctx, "UPDATE orders SET total_cents = total_cents WHERE id = $1", id); err != nil {
		t.Fatal(err)
	}
	type reply struct {
		status int
		body   []byte
	}
	paid := make(chan reply, 1)
	go func() {
		status, body, err := srv.do(http.MethodPost, fmt.Sprintf("/orders/%d/pay", id), "")
		if err != nil {
			body = []byte(err.Error())
		}
		paid <- reply{status, body}
	}()
	// Wait until the service's UPDATE waits for the row lock.
	deadline := time.Now().Add(30 * time.Second)
	for {
		var waiting int
		err := raw.QueryRowContext(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock' AND query ILIKE 'UPDATE%orders%version%'`).Scan(&waiting)
		if err != nil {
			t.Fatal(err)
		}
		if waiting > 0 {
			break
		}
		select {
		case r := <-paid:
			t.Fatalf("the pay returned before it waited for the row lock: %d %s", r.status, r.body)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the service's UPDATE of order %d never waited for the row lock\n%s", id, srv.stderr.tail())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := lockTx.ExecContext(ctx, "UPDATE orders SET version = version + 1 WHERE id = $1", id); err != nil {
		t.Fatal(err)
	}
	if err := lockTx.Commit(); err != nil {
		t.Fatal(err)
	}
	var r reply
	select {
	case r = <-paid:
	case <-time.After(60 * time.Second):
		t.Fatalf("the pay did not return\n%s", srv.stderr.tail())
	}
	if r.status != http.StatusOK {
		t.Fatalf("POST /orders/%d/pay after a conflict: %d %s, want 200 (the unit of work retries)\n%s", id, r.status, r.body, srv.stderr.tail())
	}
	var o struct {
		Status  string `json:"status"`
		Version int64  `json:"version"`
	}
	if err := json.Unmarshal(r.body, &o); err != nil || o.Status != "paid" || o.Version != 3 {
		t.Errorf("pay answered %s: want status paid at version 3 (1, +1 by the other transaction, +1 by the retried pay)", r.body)
	}
	retried := srv.waitFor(t, 15*time.Second, "the OrderPaid event to be published", func(s mxScrape) bool {
		pending, _ := s.get("bento_outbox_pending")
		return s.delta(placed, "bento_outbox_published_total") >= 1 && pending == 0
	})
	if g := retried.delta(placed, "bento_retries_total", "op", "unit_of_work", "category", "transient"); g < 1 {
		t.Errorf(`bento_retries_total{op="unit_of_work",category="transient"} grew by %v, want >= 1`, g)
	}
	mxWant(t, "units_of_work_total{committed} after the pay", retried.delta(placed, "bento_units_of_work_total", "outcome", "committed"), 1)
	mxWant(t, "units_of_work_total{failed} after the pay", retried.delta(placed, "bento_units_of_work_total", "outcome", "failed"), 0)
	if a := retried.sum("bento_unit_of_work_attempts") - placed.sum("bento_unit_of_work_attempts"); a < 2 {
		t.Errorf("the retried pay took %v attempts, want >= 2", a)
	}
	t.Logf("forced retry of order %d: retries_total{unit_of_work,transient} +%v, attempts %v, answer %s", id,
		retried.delta(placed, "bento_retries_total", "op", "unit_of_work", "category", "transient"),
		retried.sum("bento_unit_of_work_attempts")-placed.sum("bento_unit_of_work_attempts"), bytes.TrimSpace(r.body))
	mxWant(t, "outbox_published_total after the pay", retried.delta(placed, "bento_outbox_published_total"), 1)
	if !strings.Contains(srv.stderr.String(), "unit of work retrying") {
		t.Errorf("no WARN line for the unit-of-work retry on stderr\n%s", srv.stderr.tail())
	}

	// 3. Label values stay bounded.
	forbidden := []string{"SELECT", "INSERT", "UPDATE", "orders", "example.com", "MXSKU", "mx-customer"}
	for _, id := range ids {
		forbidden = append(forbidden, strconv.Itoa(id))
	}
	for name, f := range retried {
		for _, m := range f.GetMetric() {
			for _, lp := range m.GetLabel() {
				for _, s := range forbidden {
					if strings.Contains(lp.GetValue(), s) {
						t.Errorf("%s has label %s=%q, which contains %q", name, lp.GetName(), lp.GetValue(), s)
					}
				}
			}
		}
	}
	if v, ok := retried.get("bento_pool_max_open", "role", "primary"); !ok || v != 7 {
		t.Errorf("bento_pool_max_open{role=primary} = %v at the end, want 7", v)
	}
	if v, ok := retried.get("bento_pool_connections", "role", "primary", "state", "open"); !ok || v < 1 || v > 7 {
		t.Errorf(`bento_pool_connections{role="primary",state="open"} = %v (present %v), want 1..7`, v, ok)
	}
}

// mxScrape is one scrape of /metrics, by family name.
type mxScrape map[string]*dto.MetricFamily

// get returns the value of the series of name with exactly the labels
// (name, value pairs): a counter's or gauge's value, a histogram's count.
func (s mxScrape) get(name string, labels ...string) (float64, bool) {
	m := s.series(name, labels...)
	if m == nil {
		return 0, false
	}
	switch {
	case m.Counter != nil:
		return m.GetCounter().GetValue(), true
	case m.Gauge != nil:
		return m.GetGauge().GetValue(), true
	case m.Histogram != nil:
		return float64(m.GetHistogram().GetSampleCount()), true
	case m.Untyped != nil:
		return m.GetUntyped().GetValue(), true
	}
	return 0, false
}

// sum returns a histogram's sample sum (0 if absent).
func (s mxScrape) sum(name string, labels ...string) float64 {
	m := s.series(name, labels...)
	if m == nil || m.Histogram == nil {
		return 0
	}
	return m.GetHistogram().GetSampleSum()
}

// delta is get in s minus get in before (absent counts as 0).
func (s mxScrape) delta(before mxScrape, name string, labels ...string) float64 {
	a, _ := s.get(name, labels...)
	b, _ := before.get(name, labels...)
	return a - b
}

func (s mxScrape) series(name string, labels ...string) *dto.Metric {
	f := s[name]
	if f == nil {
		return nil
	}
next:
	for _, m := range f.GetMetric() {
		if len(m.GetLabel())*2 != len(labels) {
			continue
		}
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, lp := range m.GetLabel() {
				found = found || lp.GetName() == labels[i] && lp.GetValue() == labels[i+1]
			}
			if !found {
				continue next
			}
		}
		return m
	}
	return nil
}

func mxWant(t *testing.T, what string, got, want float64) {
	t.Helper()
	if got != want {
		t.Errorf("%s grew by %v, want %v", what, got, want)
	}
}

// mxBuild builds the real bento binary.
func mxBuild(t *testing.T) string {
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
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// mxServer is a running `bento serve`.
type mxServer struct {
	base   string // http://host:port
	client *http.Client
	stderr *mxBuffer
}

// mxStart starts `bento serve --addr 127.0.0.1:0` with exactly environ,
// reads the address it listens on from its first line of output, waits
// for /readyz, and stops it with SIGTERM when the test ends (expecting
// exit 0).
func mxStart(t *testing.T, bin string, environ []string) *mxServer {
	t.Helper()
	dir := t.TempDir()
	// Port 0: the kernel picks a free port and the service prints it, so
	// no other process can take it between choosing and listening.
	cmd := exec.Command(bin, "serve", "--addr", "127.0.0.1:0")
	cmd.Dir = dir
	cmd.Env = append([]string{"HOME=" + dir}, environ...)
	stderr := &mxBuffer{}
	cmd.Stderr = stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "listening on "); ok {
				addr <- a
			}
		}
		io.Copy(io.Discard, stdout)
	}()
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("bento serve exited with %v after SIGTERM, want 0\n%s", err, stderr.tail())
			}
		case <-time.After(45 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
			t.Errorf("bento serve did not stop within 45 s of SIGTERM\n%s", stderr.tail())
		}
	})
	s := &mxServer{client: &http.Client{Timeout: 60 * time.Second}, stderr: stderr}
	select {
	case s.base = <-addr:
	case err := <-exited:
		t.Fatalf("bento serve exited before listening: %v\n%s", err, stderr.tail())
	case <-time.After(60 * time.Second):
		t.Fatalf("bento serve printed no address within 60 s\n%s", stderr.tail())
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		status, body, err := s.do(http.MethodGet, "/readyz", "")
		if err == nil && status == http.StatusOK {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz not 200 within 30 s: %d %s %v\n%s", status, body, err, stderr.tail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *mxServer) do(method, path, body string) (int, []byte, error) {
	req, err := http.NewRequest(method, s.base+path, strings.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

func (s *mxServer) post(t *testing.T, path, body string) (int, []byte) {
	t.Helper()
	status, b, err := s.do(http.MethodPost, path, body)
	if err != nil {
		t.Fatalf("POST %s: %v\n%s", path, err, s.stderr.tail())
	}
	return status, b
}

// scrape reads /metrics in the Prometheus text format.
func (s *mxServer) scrape(t *testing.T) mxScrape {
	t.Helper()
	status, body, err := s.do(http.MethodGet, "/metrics", "")
	if err != nil || status != http.StatusOK {
		t.Fatalf("GET /metrics: %d %v\n%s", status, err, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("parsing /metrics: %v\n%s", err, body)
	}
	return fams
}

// waitFor scrapes until ok holds, at most timeout.
func (s *mxServer) waitFor(t *testing.T, timeout time.Duration, what string, ok func(mxScrape) bool) mxScrape {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		sc := s.scrape(t)
		if ok(sc) {
			return sc
		}
		if time.Now().After(deadline) {
			pending, _ := sc.get("bento_outbox_pending")
			published, _ := sc.get("bento_outbox_published_total")
			t.Fatalf("waited %s for %s: pending %v, published %v\n%s", timeout, what, pending, published, s.stderr.tail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// mxBuffer is a bytes.Buffer safe for a process writing to it while the
// test reads it.
type mxBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *mxBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *mxBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// tail returns the last lines of the output, for failure messages.
func (b *mxBuffer) tail() string {
	s := b.String()
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	return "stderr (last lines):\n" + strings.Join(lines, "\n")
}
