package e2e

import (
	"context"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bento-go/bento/internal/testdb"
)

// TestSigtermUnderLoad sends SIGTERM to bento serve under load, in each
// drain mode. Every acknowledged order is committed once with its event;
// the process exits 0 within DB_DRAIN_TIMEOUT and a few seconds; no
// connection of it is left on the server. In graceful mode no request the
// service accepted is cut off: each attempt got a reply (2xx, or a 503
// saying the service is shutting down) or had its connection refused
// once the listener was closed.
func TestSigtermUnderLoad(t *testing.T) {
	for _, mode := range []string{"graceful", "immediate", "force"} {
		t.Run(mode, func(t *testing.T) { testSigterm(t, mode) })
	}
}

func testSigterm(t *testing.T, mode string) {
	fault := "sigterm-" + mode
	const drainTimeout = 5 * time.Second
	url := testdb.URL(t, testdb.Postgres)
	db := testdb.OpenRaw(t, url)
	admin := testdb.Admin(t, testdb.Postgres)
	app := uniqueName(t, "e2e-sigterm-"+mode)
	svc := Serve(t, []string{"DB_URL=" + url, "OUTBOX_RETENTION=1h", "DB_APPLICATION_NAME=" + app,
		"DB_DRAIN_MODE=" + mode, "DB_DRAIN_TIMEOUT=" + drainTimeout.String()})

	ctx, cancel := context.WithCancel(context.Background())
	type out struct {
		res *LoadResult
		rec *attemptRecorder
	}
	done := make(chan out)
	go func() {
		res, rec := runRecorded(ctx, Load{URL: svc.URL(), Workers: 16, Retries: 3, Prefix: "sigterm"})
		done <- out{res, rec}
	}()
	time.Sleep(dur(2*time.Second, 10*time.Second))
	sigAt := time.Now()
	svc.Signal(syscall.SIGTERM)
	code := svc.Wait(drainTimeout + 30*time.Second)
	exitTook := time.Since(sigAt)
	time.Sleep(time.Second) // callers now find nobody listening
	cancel()
	o := <-done
	res := o.res
	summary(t, fault, res)

	if code != 0 {
		t.Errorf("bento serve exited with %d after SIGTERM, want 0", code)
	}
	if limit := drainTimeout + 5*time.Second; exitTook > limit {
		t.Errorf("bento serve took %s to exit after SIGTERM (DB_DRAIN_TIMEOUT=%s, limit %s)", exitTook, drainTimeout, limit)
	}
	left, _ := settleToZero(10*time.Second, func() int { return pgConns(t, admin, app) })
	if left != 0 {
		t.Errorf("%d connections of %s are still open on the server after the process exited", left, app)
	}
	orders := Invariants(t, db, "postgres", "sigterm", res)
	requireClassified(t, res)
	final := map[string]string{}
	for _, r := range res.Results {
		final[r.Customer] = r.Class
	}

	// Every attempt, as the callers saw it. A transport error other than a
	// refused connection is a cut unless the request was never processed:
	// the kernel resets connections still in the listener's backlog when
	// it closes, and a kept-alive connection the server closes as idle
	// races with a request the client writes on it at that moment. Such a
	// request placed no order (its idempotency key finds none), exactly
	// like a refused connection. A cut request that placed an order whose
	// caller never got an answer was cut off while being served.
	var acked, ackedAfter, draining, other, refused, unserved, cut int
	kinds := map[string]int{}
	for _, a := range o.rec.Attempts() {
		switch {
		case a.Status/100 == 2:
			acked++
			if a.End.After(sigAt) {
				ackedAfter++
			}
		case a.Status == 503 && strings.Contains(a.Body, "shutting down"):
			draining++
		case a.Status != 0:
			other++
			kinds[fmtStatus(a)]++
			if mode == "graceful" {
				t.Errorf("GRACEFUL: a request got %d %s during a graceful drain; want 2xx or a draining 503", a.Status, strings.TrimSpace(a.Body))
			}
			if strings.Contains(a.Body, "(unknown") || !strings.HasPrefix(strings.TrimSpace(a.Body), "{") {
				t.Errorf("CLASSIFIED: a request got %d %s during the drain: want a classified error", a.Status, strings.TrimSpace(a.Body))
			}
		case strings.Contains(a.Err, "connection refused"):
			refused++
		case orders[a.Customer] == 0 || final[a.Customer] == Acked:
			unserved++
			kinds["unserved: "+transportError(a.Err)+fmtConn(a)]++
		default:
			cut++
			kinds["cut: "+transportError(a.Err)+fmtConn(a)]++
			if mode == "graceful" {
				t.Errorf("GRACEFUL: %s's order was placed but its request was cut off (%s; kept-alive %v, written %v, %s after SIGTERM)",
					a.Customer, transportError(a.Err), a.Reused, a.Wrote, a.Start.Sub(sigAt).Round(time.Millisecond))
			}
		}
	}
	if acked == 0 {
		t.Fatal("no order was acknowledged")
	}
	stopped := firstLineWith(svc.Output(), "bento: stopped")
	if mode == "graceful" {
		if !strings.Contains(stopped, "drain_success=true") || strings.Contains(svc.Output(), "stopping intake") {
			t.Errorf("GRACEFUL: the drain did not finish cleanly: %s", stopped)
		}
	}
	logFigure(t, fault, "drain_timeout", drainTimeout, "exit_code", code, "exit_after_sigterm", exitTook,
		"attempts_acked", acked, "acked_after_sigterm", ackedAfter, "attempts_503_draining", draining,
		"attempts_other_status", other, "attempts_refused", refused, "attempts_reset_unserved", unserved,
		"attempts_cut", cut, "connections_left", left)
	logFigure(t, fault, loadKV(res)...)
	if stopped != "" {
		logFigure(t, fault, "stopped", stopped)
	}
	keys := make([]string, 0, len(kinds))
	for k := range kinds {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		logFigure(t, fault, "attempt_error", k, "count", kinds[k])
	}
	if t.Failed() {
		for _, l := range strings.Split(svc.Output(), "\n") {
			if strings.Contains(l, "request failed") || strings.Contains(l, "shutdown") || strings.Contains(l, "drain") {
				t.Logf("service: %s", tail(l, 600))
			}
		}
	}
	logErrors(t, fault, res)
}

func fmtStatus(a HTTPAttempt) string {
	return strings.TrimSpace(strconv.Itoa(a.Status) + " " + strings.TrimSpace(a.Body))
}

func fmtConn(a HTTPAttempt) string {
	s := " (new connection"
	if a.Reused {
		s = " (kept-alive connection"
	}
	if a.Wrote {
		s += ", request written"
	}
	return s + ")"
}

// firstLineWith returns the first line of out containing s, trimmed.
func firstLineWith(out, s string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, s) {
			return strings.TrimSpace(l)
		}
	}
	return ""
}
