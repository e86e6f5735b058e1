package e2e

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

var long = flag.Bool("e2e.long", false, "run the long variants of the fault tests")

// bin is the bento binary built once for the package.
var bin string

func TestMain(m *testing.M) {
	flag.Parse()
	dir, err := os.MkdirTemp("", "bento-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = filepath.Join(dir, "bento")
	build := exec.Command("go", "build", "-o", bin, "./cmd/bento")
	build.Dir = ".."
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: building bento:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// dur returns short in CI, long with -e2e.long.
func dur(short, longer time.Duration) time.Duration {
	if *long {
		return longer
	}
	return short
}

// freePort returns a free TCP port on 127.0.0.1.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Process is a running bento process.
type Process struct {
	t      testing.TB
	Cmd    *exec.Cmd
	Addr   string // serve: host:port
	out    *lockedBuffer
	done   chan struct{}
	exit   error
	waited atomic.Bool
}

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

// Start runs `bento args...` with env (KEY=value; nothing inherited but
// PATH and HOME) in dir (a temp dir when empty).
func Start(t testing.TB, env []string, dir string, args ...string) *Process {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}, env...)
	p := &Process{t: t, Cmd: cmd, out: &lockedBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("e2e: starting bento %v: %v", args, err)
	}
	go func() { p.exit = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("output of bento %v:\n%s", args, tail(p.out.String(), 4000))
		}
	})
	return p
}

// Serve starts `bento serve` on a free port and waits until /readyz
// answers 200.
func Serve(t testing.TB, env []string, args ...string) *Process {
	t.Helper()
	port := freePort(t)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	p := Start(t, env, "", append([]string{"serve", "--addr", addr}, args...)...)
	p.Addr = addr
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return p
			}
		}
		select {
		case <-p.done:
			t.Fatalf("e2e: bento serve exited before it was ready: %v\n%s", p.exit, tail(p.out.String(), 4000))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("e2e: bento serve not ready within 60s\n%s", tail(p.out.String(), 4000))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// URL returns the service's base URL.
func (p *Process) URL() string { return "http://" + p.Addr }

// Output returns what the process printed so far.
func (p *Process) Output() string { return p.out.String() }

// Signal sends sig to the process.
func (p *Process) Signal(sig os.Signal) { _ = p.Cmd.Process.Signal(sig) }

// Kill9 kills the process with SIGKILL.
func (p *Process) Kill9() { _ = p.Cmd.Process.Signal(syscall.SIGKILL) }

// Wait waits up to timeout for the process to exit and returns its exit
// code (-1 if it did not exit).
func (p *Process) Wait(timeout time.Duration) int {
	select {
	case <-p.done:
	case <-time.After(timeout):
		return -1
	}
	var ee *exec.ExitError
	if errors.As(p.exit, &ee) {
		return ee.ExitCode()
	}
	if p.exit != nil {
		return -2
	}
	return 0
}

// Exited reports whether the process ended.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

// Outcome classes of one request.
const (
	Acked   = "acked"    // 2xx
	Refused = "refused"  // an HTTP error with a JSON body
	NoReply = "no-reply" // transport error: the request may or may not have been applied
)

// Result is one order request.
type Result struct {
	Customer string
	Key      string
	Status   int
	Class    string
	OrderID  int
	Error    string // the JSON error or the transport error
	Attempts int
}

// LoadResult is what a load run saw.
type LoadResult struct {
	mu      sync.Mutex
	Results []Result
	Start   time.Time
	End     time.Time
}

func (l *LoadResult) add(r Result) {
	l.mu.Lock()
	l.Results = append(l.Results, r)
	l.mu.Unlock()
}

// Count returns the results by class.
func (l *LoadResult) Count() map[string]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[string]int{}
	for _, r := range l.Results {
		out[r.Class]++
	}
	return out
}

// Load is a closed-loop load of order placements against a service.
type Load struct {
	URL     string
	Workers int
	// Retries: a client retries a 503 or a transport error this many times
	// with the same Idempotency-Key, like a well-behaved client.
	Retries int
	// Prefix makes customers unique to the run: <prefix>-<worker>-<n>@example.com.
	Prefix string
	// Body, if set, builds the request body for a customer.
	Body func(customer string) string
	// NoKeys sends no Idempotency-Key (with Retries 0, or a retry may
	// place an order twice).
	NoKeys bool
}

// Run places orders until ctx ends.
func (l Load) Run(ctx context.Context) *LoadResult {
	res := &LoadResult{Start: time.Now()}
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: l.Workers, DisableKeepAlives: false}}
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
	return res
}

func (l Load) place(client *http.Client, customer string) Result {
	body := fmt.Sprintf(`{"customer": %q, "lines": [{"sku": "SKU-1", "quantity": 2, "unit_price_cents": 1250}]}`, customer)
	if l.Body != nil {
		body = l.Body(customer)
	}
	r := Result{Customer: customer, Key: "k-" + customer}
	for attempt := 0; attempt <= l.Retries; attempt++ {
		r.Attempts++
		req, _ := http.NewRequest("POST", l.URL+"/orders", strings.NewReader(body))
		if !l.NoKeys {
			req.Header.Set("Idempotency-Key", r.Key)
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			r.Class, r.Status, r.Error = NoReply, 0, err.Error()
			time.Sleep(20 * time.Millisecond)
			continue
		}
		data, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		r.Status = resp.StatusCode
		if resp.StatusCode/100 == 2 {
			var o struct {
				ID int `json:"id"`
			}
			_ = json.Unmarshal(data, &o)
			r.Class, r.OrderID, r.Error = Acked, o.ID, ""
			return r
		}
		var e struct {
			Error string `json:"error"`
		}
		if err := json.Unmarshal(data, &e); err != nil || e.Error == "" {
			r.Class, r.Error = Refused, "NOT JSON: "+tail(string(data), 200)
			return r
		}
		r.Class, r.Error = Refused, e.Error
		if resp.StatusCode != http.StatusServiceUnavailable {
			return r
		}
		time.Sleep(20 * time.Millisecond)
	}
	return r
}

// Invariants checks, by counting rows of db (a raw connection to the
// service's database; placeholder style of the dialect), that:
//   - every acknowledged order exists exactly once, with exactly one
//     OrderPlaced outbox row (the outbox keeps published rows: run the
//     service with OUTBOX_RETENTION);
//   - no customer of the run has more than one order;
//   - a refused request has no order, unless its error said the commit's
//     outcome is unknown;
//   - every refusal is a clear JSON error (no stack, not HTML).
//
// It returns the orders per customer of the run.
func Invariants(t testing.TB, db *sql.DB, dialect string, prefix string, res *LoadResult) map[string]int {
	t.Helper()
	q := "SELECT r.customer, COUNT(DISTINCT r.id), COUNT(o.id) FROM orders r LEFT JOIN bento_outbox o ON o.aggregateid = " +
		castText(dialect, "r.id") + " AND o.type = 'OrderPlaced' WHERE r.customer LIKE ? GROUP BY r.customer"
	if dialect == "postgres" {
		q = strings.Replace(q, "?", "$1", 1)
	}
	rows, err := db.Query(q, prefix+"-%")
	if err != nil {
		t.Fatalf("e2e: counting orders: %v", err)
	}
	orders := map[string]int{}
	events := map[string]int{}
	for rows.Next() {
		var c string
		var n, e int
		if err := rows.Scan(&c, &n, &e); err != nil {
			t.Fatal(err)
		}
		orders[c], events[c] = n, e
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	rows.Close()
	res.mu.Lock()
	defer res.mu.Unlock()
	for c, n := range orders {
		if events[c] > n {
			t.Errorf("INVARIANT: customer %s has %d OrderPlaced rows for %d orders", c, events[c], n)
		}
		if n > 1 {
			t.Errorf("INVARIANT: customer %s has %d orders (a duplicate)", c, n)
		}
	}
	seen := map[string]bool{}
	for _, r := range res.Results {
		seen[r.Customer] = true
		switch r.Class {
		case Acked:
			if orders[r.Customer] != 1 {
				t.Errorf("INVARIANT: %s was acknowledged (order %d) but has %d orders", r.Customer, r.OrderID, orders[r.Customer])
				continue
			}
			if events[r.Customer] != 1 {
				t.Errorf("INVARIANT: acknowledged order of %s has %d OrderPlaced outbox rows", r.Customer, events[r.Customer])
			}
		case Refused:
			if strings.HasPrefix(r.Error, "NOT JSON") || strings.Contains(r.Error, "goroutine ") {
				t.Errorf("INVARIANT: %s got an unclear error (status %d): %s", r.Customer, r.Status, r.Error)
			}
			if orders[r.Customer] > 0 && !strings.Contains(r.Error, "outcome is unknown") {
				t.Errorf("INVARIANT: %s was refused (%d %s) but its order exists", r.Customer, r.Status, r.Error)
			}
		}
	}
	for c := range orders {
		if !seen[c] {
			t.Errorf("INVARIANT: an order exists for %s, which no request placed", c)
		}
	}
	return orders
}

func castText(dialect, col string) string {
	switch dialect {
	case "postgres":
		return col + "::text"
	case "mysql":
		return "CAST(" + col + " AS CHAR)"
	}
	return "CAST(" + col + " AS TEXT)"
}

// IdleInTransaction counts PostgreSQL sessions of application app left
// idle in a transaction.
func IdleInTransaction(t testing.TB, admin *sql.DB, app string) int {
	t.Helper()
	var n int
	if err := admin.QueryRow(`SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND state LIKE 'idle in transaction%'`, app).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// summary logs a load's counts.
func summary(t testing.TB, name string, res *LoadResult) {
	t.Helper()
	c := res.Count()
	d := res.End.Sub(res.Start)
	t.Logf("%s: %d acknowledged, %d refused, %d without reply in %s (%.0f orders/s)", name, c[Acked], c[Refused], c[NoReply],
		d.Round(time.Millisecond), float64(c[Acked])/d.Seconds())
}
