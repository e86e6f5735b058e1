package consumer_test

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/internal/testdb"
)

// buildCrashConsumer builds testdata/crashconsumer, the consumer process
// the crash test kills.
func buildCrashConsumer(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	bin := filepath.Join(t.TempDir(), "crashconsumer")
	if out, err := exec.Command(goBin, "build", "-o", bin, "./testdata/crashconsumer").CombinedOutput(); err != nil {
		t.Fatalf("building testdata/crashconsumer: %v\n%s", err, out)
	}
	return bin
}

// killAt starts the consumer process in mode, waits for the line that
// says it reached its pause, and kills it with SIGKILL there.
func killAt(t *testing.T, bin string, env []string, mode, line string) {
	t.Helper()
	cmd := exec.Command(bin)
	cmd.Env = append(append(os.Environ(), env...), "MODE="+mode, "PAUSE=30s")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	reached := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if sc.Text() == line {
				reached <- true
				return
			}
		}
		reached <- false
	}()
	select {
	case ok := <-reached:
		if !ok {
			cmd.Wait()
			t.Fatalf("the consumer process (MODE=%s) exited before %s:\n%s", mode, line, stderr.String())
		}
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("the consumer process (MODE=%s) did not print %s within 60s:\n%s", mode, line, stderr.String())
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
}

// TestKilledConsumers: invariant — consumer processes killed with SIGKILL
// after a commit and before its ack (three times), and after a handler
// ran and before its commit (three times), leave nothing applied twice
// and nothing lost: a consumer run afterwards brings the projection to
// the one computed from the orders table, with every event once in the
// inbox, and applies exactly the events not committed before the kills.
func TestKilledConsumers(t *testing.T) {
	bin := buildCrashConsumer(t)
	testdb.Each(t, func(t *testing.T, cfg config.Config) {
		e := newEnv(t, cfg)
		events := e.shopTraffic(30)
		env := []string{"DB_URL=" + cfg.DB.URL.String(), "OUTBOX_NATS_URL=" + e.nats.URL(), "OUTBOX_STREAM=" + stream,
			"INBOX_CONSUMER=summary", "INBOX_ACK_WAIT=1s", "INBOX_BACKOFF=10ms", "INBOX_DEFER_DELAY=10ms", "INBOX_WORKERS=1"}
		for range 3 {
			killAt(t, bin, env, "commit", "COMMITTED")
		}
		committed := e.inboxCount("summary")
		if committed != 3 {
			t.Errorf("after three kills between commit and ack: %d events in the inbox, want 3", committed)
		}
		for range 3 {
			killAt(t, bin, env, "handler", "HANDLED")
		}
		if n := e.inboxCount("summary"); n != committed {
			t.Errorf("kills between handler and commit changed the inbox: %d events, want %d", n, committed)
		}
		obs := &counts{}
		w := e.witnessFromDB("summary")
		e.run(summaryRegistry(w), fastConfig("summary", obs))
		waitFor(t, 60*time.Second, "every event in the inbox", func() bool { return e.inboxCount("summary") >= events })
		e.settled("summary", 30*time.Second)
		e.checkProjection("summary", events, w)
		if got := obs.processed.Load(); got != int64(events-committed) {
			t.Errorf("the consumer run after the kills applied %d events, want %d (the %d committed before the kills are not applied again)",
				got, events-committed, committed)
		}
	})
}

// witnessFromDB returns a witness that starts from the sequences consumer
// applied already (in processes the test killed).
func (e *env) witnessFromDB(consumer string) *witness {
	e.t.Helper()
	q := "SELECT aggregatetype, aggregateid, last_sequence FROM bento_outbox_inbox_seq WHERE consumer = ?"
	if e.db.Dialect() == testdb.Postgres {
		q = strings.Replace(q, "?", "$1", 1)
	}
	rows, err := e.db.Driver().DB().Query(q, consumer)
	if err != nil {
		e.t.Fatal(err)
	}
	defer rows.Close()
	w := &witness{last: map[string]int64{}}
	for rows.Next() {
		var typ, id string
		var last int64
		if err := rows.Scan(&typ, &id, &last); err != nil {
			e.t.Fatal(err)
		}
		w.last[typ+"/"+id] = last
	}
	if err := rows.Err(); err != nil {
		e.t.Fatal(err)
	}
	return w
}
