package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bento-go/bento/internal/testdb"
)

// promMetrics are the series of one /metrics scrape: "name{labels}" →
// value.
type promMetrics map[string]float64

// scrapeMetrics reads the service's /metrics (Prometheus text format).
func scrapeMetrics(t testing.TB, base string) promMetrics {
	t.Helper()
	client := &http.Client{Timeout: 30 * time.Second}
	resp, err := client.Get(base + "/metrics")
	if err != nil {
		t.Fatalf("e2e: scraping %s/metrics: %v", base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("e2e: scraping %s/metrics: status %d", base, resp.StatusCode)
	}
	out := promMetrics{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("e2e: reading /metrics: %v", err)
	}
	return out
}

// sum adds the series of metric name whose labels contain each of labels
// (e.g. `op="unit_of_work"`).
func (m promMetrics) sum(name string, labels ...string) int64 {
	var s float64
	for k, v := range m {
		n, rest, _ := strings.Cut(k, "{")
		if n != name {
			continue
		}
		ok := true
		for _, l := range labels {
			ok = ok && strings.Contains(rest, l)
		}
		if ok {
			s += v
		}
	}
	return int64(s)
}

// TestCommitCutAfterSent: a TCP proxy between bento serve and PostgreSQL
// cuts the connection at COMMIT — every 10th COMMIT is forwarded and the
// connection closed before the reply (the server commits, the client never
// hears), every 10th+5th is dropped before it reaches the server (the
// server aborts). The service sees the same thing both times, an
// ambiguous COMMIT, and resolves it with pg_xact_status: no acknowledged
// order is lost, none is placed twice, and each resolution matches what
// the server did. Run twice: with idempotency keys (the key's lookup
// starts the transaction, whose id is read before the COMMIT), and
// without, where an order is one round trip (the inserts and the event in
// one pipeline, an implicit transaction that the pipeline's Sync commits)
// that does not read its transaction id (the commit's answer would take it
// along): the order's row resolves it. (A
// forwarded COMMIT can still abort: on the lost connection pgx sends a
// cancel request, which may reach the backend while it runs the COMMIT —
// 57014. The proxy reads the server's reply to each cut COMMIT, so the
// test knows.)
func TestCommitCutAfterSent(t *testing.T) {
	t.Run("keys", func(t *testing.T) { commitCut(t, "commit-cut", false) })
	t.Run("one round trip", func(t *testing.T) { commitCut(t, "commit-cut-1rt", true) })
}

func commitCut(t *testing.T, fault string, noKeys bool) {
	url := testdb.URL(t, testdb.Postgres)
	db := testdb.OpenRaw(t, url)
	proxy := StartPGProxy(t, hostPort(t, url))
	proxy.Decide = func(n int64) CommitAction {
		switch n % 10 {
		case 0:
			return CutAfterCommit
		case 5:
			return DropCommit
		}
		return ForwardCommit
	}
	app := uniqueName(t, "e2e-commitcut")
	// No relay: the only COMMITs are the orders' units of work.
	svc := Serve(t, []string{"DB_URL=" + proxiedURL(t, url, proxy), "OUTBOX_RETENTION=1h", "OUTBOX_PUBLISHER=none",
		"DB_APPLICATION_NAME=" + app})

	proxy.Arm(true)
	ctx, cancel := context.WithTimeout(context.Background(), dur(10*time.Second, time.Minute))
	load := Load{URL: svc.URL(), Workers: 8, Retries: 3, Prefix: "commitcut"}
	if noKeys {
		load.Retries, load.NoKeys = 0, true
	}
	res := load.Run(ctx)
	cancel()
	proxy.Arm(false)
	summary(t, fault, res)
	commits, cut, dropped := proxy.Counts()
	m := scrapeMetrics(t, svc.URL())

	Invariants(t, db, "postgres", "commitcut", res)
	requireClassified(t, res)
	requireCallerSawNothing(t, res)
	requireNoIdleInTx(t, testdb.Admin(t, testdb.Postgres), app)
	if cut == 0 || dropped == 0 {
		t.Fatalf("the proxy cut %d and dropped %d of %d COMMITs: the fault was not injected", cut, dropped, commits)
	}
	committed := m.sum("bento_ambiguous_commits_total", `resolution="committed"`)
	aborted := m.sum("bento_ambiguous_commits_total", `resolution="aborted"`)
	unknown := m.sum("bento_ambiguous_commits_total", `resolution="unknown"`)
	logged := strings.Count(svc.Output(), "ambiguous commit resolved")
	// Bento must find out what the server did with each cut COMMIT: the
	// proxy read the server's reply to every COMMIT it cut after sending
	// ("COMMIT", or "ROLLBACK" for a transaction that had failed), and every
	// COMMIT dropped before sending aborted.
	replies := proxy.CutReplies()
	onServer := int64(replies["COMMIT"])
	if committed != onServer || aborted != dropped+(cut-onServer) || unknown != 0 {
		t.Errorf("ambiguous commits resolved committed=%d aborted=%d unknown=%d; the server committed %d of the %d COMMITs cut after sending (replies %v), and %d were dropped before sending",
			committed, aborted, unknown, onServer, cut, replies, dropped)
	}
	if int64(logged) != cut+dropped {
		t.Errorf("%d log lines \"ambiguous commit resolved\" for %d cut COMMITs", logged, cut+dropped)
	}
	if res.Count()[Acked] == 0 {
		t.Fatal("no order was acknowledged")
	}
	var other []string
	for k, n := range replies {
		if k != "COMMIT" {
			other = append(other, fmt.Sprintf("%s:%d", k, n))
		}
	}
	sort.Strings(other)
	logFigure(t, fault, append([]any{"commits_seen", commits, "cut_after_sent", cut, "committed_on_server", onServer,
		"other_replies", strings.Join(other, ","), "dropped_before_sent", dropped,
		"resolved_committed", committed, "resolved_aborted", aborted, "unresolved", unknown,
		"unit_retries_connection", m.sum("bento_retries_total", `op="unit_of_work"`, `category="connection"`)}, loadKV(res)...)...)
	logErrors(t, fault, res)
}
