package outbox_test

import (
	"bufio"
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/ent"
	"github.com/bento-go/bento/internal/testdb"
	"github.com/bento-go/bento/internal/testnats"
	"github.com/bento-go/bento/outbox"
)

// buildCrashRelay builds testdata/crashrelay, the relay process the crash
// test kills.
func buildCrashRelay(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	bin := filepath.Join(t.TempDir(), "crashrelay")
	start := time.Now()
	out, err := exec.Command(goBin, "build", "-o", bin, "./testdata/crashrelay").CombinedOutput()
	if err != nil {
		t.Fatalf("building testdata/crashrelay: %v\n%s", err, out)
	}
	t.Logf("built the relay process in %s", time.Since(start).Round(time.Millisecond))
	return bin
}

// relayProcess is a running crashrelay.
type relayProcess struct {
	t      *testing.T
	cmd    *exec.Cmd
	lines  chan string
	stderr *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func startRelayProcess(t *testing.T, bin string, env []string) *relayProcess {
	t.Helper()
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), env...)
	p := &relayProcess{t: t, cmd: cmd, lines: make(chan string, 1000), stderr: &syncBuffer{}}
	cmd.Stderr = p.stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting the relay process: %v", err)
	}
	t.Cleanup(p.kill)
	go func() {
		s := bufio.NewScanner(out)
		for s.Scan() {
			p.lines <- s.Text()
		}
		close(p.lines)
	}()
	return p
}

// await waits for a line starting with prefix.
func (p *relayProcess) await(prefix string, timeout time.Duration) string {
	p.t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				p.t.Fatalf("the relay process exited before printing %s; stderr:\n%s", prefix, p.stderr)
			}
			if strings.HasPrefix(l, prefix) {
				return l
			}
		case <-deadline:
			p.t.Fatalf("the relay process printed no %s within %s; stderr:\n%s", prefix, timeout, p.stderr)
		}
	}
}

// kill sends SIGKILL (kill -9) and reaps the process.
func (p *relayProcess) kill() {
	if p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	_ = p.cmd.Wait()
	if p.cmd.ProcessState.Success() {
		p.t.Errorf("the relay process exited on its own; stderr:\n%s", p.stderr)
	}
}

// killMidWork kills the relay processes ps at a random point while they
// still have work. It waits until they have marked a random number of rows,
// from one to a quarter of those pending when it is called, then 0-10 ms
// more, and kills them one after the other 0-10 ms apart. Waiting on
// progress rather than on a clock keeps the kills mid-work however fast the
// machine is (a fixed delay let two relays drain the whole backlog within
// it); the jitter spreads the kills over the relays' claim, publish and
// mark steps, which take a few milliseconds per batch.
func killMidWork(t *testing.T, pending func() int, ps ...*relayProcess) {
	t.Helper()
	left := pending()
	target := left - 1 - rand.IntN(max(1, left/4))
	waitFor(t, 30*time.Second, "the relays to mark some rows", func() bool { return pending() <= target })
	for _, p := range ps {
		time.Sleep(time.Duration(rand.IntN(10_000)) * time.Microsecond)
		p.kill()
	}
}

// TestRelayKilled: invariant — kill -9 of relay processes, between
// publish and mark and at random points, loses nothing and duplicates
// nothing: afterwards every committed event id is in the stream exactly
// once (the republished copies of a killed relay's unmarked batch are
// dropped by Nats-Msg-Id), each aggregate's in sequence order, and no row
// is pending.
func TestRelayKilled(t *testing.T) {
	bin := buildCrashRelay(t)
	cfg := testdb.Config(t, testdb.Postgres)
	w := openWriteEnv(t, cfg)
	audit(t, w)
	srv := testnats.Start(t)
	reader := connectJS(t, srv.URL())
	e := &relayEnv{writeEnv: w, uow: ent.NewUnitOfWork(w.client)}

	// 20,000 events: 19,400 aggregates with one, 60 with ten each (one
	// per unit of work).
	ctx := context.Background()
	start := time.Now()
	for u := range 194 {
		evs := map[string][]int{}
		for i := range 100 {
			evs[strconv.Itoa(u*100+i)] = []int{1}
		}
		e.record(ctx, "Item", evs)
	}
	for k := 1; k <= 10; k++ {
		evs := map[string][]int{}
		for c := range 60 {
			evs["C"+strconv.Itoa(c)] = []int{k}
		}
		e.record(ctx, "Chain", evs)
	}
	const total = 20000
	t.Logf("committed %d events in %s", total, time.Since(start).Round(time.Millisecond))
	env := []string{"DB_URL=" + cfg.DB.URL.Secret(), "NATS_URL=" + srv.URL(), "STREAM=" + testStream,
		"OUTBOX_TABLE=bento_outbox", "OUTBOX_BATCH_SIZE=100", "OUTBOX_POLL_INTERVAL=50ms", "OUTBOX_BACKOFF=100ms",
		"OUTBOX_MAX_ATTEMPTS=100", "OUTBOX_RETENTION=0", "OUTBOX_NOTIFY=false"}
	pending := func() int { return w.count("SELECT COUNT(*) FROM bento_outbox WHERE status = 'pending'") }

	// Between publish and mark: the broker acknowledged a batch, the
	// relay is killed before it marks it.
	p := startRelayProcess(t, bin, append(env, "PAUSE=1h"))
	p.await("PUBLISHED", 30*time.Second)
	p.kill()
	inStream := streamCount(t, reader.JetStream(), testStream)
	if inStream == 0 || pending() != total {
		t.Fatalf("after the kill between publish and mark: %d messages in the stream, %d of %d rows pending; want some published and all still pending",
			inStream, pending(), total)
	}
	t.Logf("killed between publish and mark: %d messages in the stream, all %d rows still pending", inStream, total)

	// A paused relay holds its claimed rows; another relay goes on with
	// the rest meanwhile; both are killed.
	held := startRelayProcess(t, bin, append(env, "PAUSE=1h"))
	held.await("PUBLISHED", 30*time.Second)
	other := startRelayProcess(t, bin, env)
	before := pending()
	waitFor(t, 30*time.Second, "another relay to publish while one holds its batch", func() bool { return pending() < before-500 })
	other.kill()
	held.kill()

	// Random points: pairs of relays, killed while they have work. A
	// round that leaves rows pending killed relays that had work.
	midWork := 0
	for round := 0; round < 8 && pending() > 0; round++ {
		killMidWork(t, pending, startRelayProcess(t, bin, env), startRelayProcess(t, bin, env))
		left := pending()
		if left > 0 {
			midWork++
		}
		t.Logf("round %d: %d rows pending, %d messages in the stream", round+1, left,
			streamCount(t, reader.JetStream(), testStream))
	}
	if midWork < 3 {
		t.Fatalf("only %d rounds of random kills landed while the relays had work; want 3", midWork)
	}

	// A clean relay finishes.
	r := newRelay(t, w.db, reader, nil)
	waitFor(t, 60*time.Second, "a clean relay to publish the rest", func() bool {
		if _, err := r.RunOnce(ctx); err != nil {
			t.Fatalf("RunOnce: %v", err)
		}
		return pending() == 0
	})
	if n := w.count("SELECT COUNT(*) FROM bento_outbox"); n != 0 {
		t.Fatalf("%d rows left in the outbox", n)
	}
	want := audited(t, w)
	if len(want) != total {
		t.Fatalf("%d events committed, want %d", len(want), total)
	}
	exactlyOnce(t, want, readStream(t, reader.JetStream(), testStream))
	if st, err := outbox.ReadStats(ctx, w.db.Driver(), w.db.Names()); err != nil || st.Dead != 0 || st.Pending != 0 {
		t.Fatalf("stats %+v, %v", st, err)
	}
}

// TestRelayKilledSkewed: invariant — with a skewed backlog (Zipf over 20
// aggregates, so batches carry runs of one aggregate's events), relay
// processes killed with kill -9 at random points, two at a time where the
// dialect allows it (one on SQLite, which runs one relay per database),
// lose nothing and duplicate nothing: afterwards every committed event is
// in the stream exactly once, each aggregate's in sequence order, and no
// row is pending.
func TestRelayKilledSkewed(t *testing.T) {
	bin := buildCrashRelay(t)
	testdb.Each(t, func(t *testing.T, cfg config.Config) {
		w := openWriteEnv(t, cfg)
		audit(t, w)
		srv := testnats.Start(t)
		reader := connectJS(t, srv.URL())
		e := &relayEnv{writeEnv: w, uow: ent.NewUnitOfWork(w.client)}

		// 6,000 events in units of work of 100, each event on one of 20
		// aggregates drawn from a Zipf distribution (s = 1.1).
		ctx := context.Background()
		rng := rand.New(rand.NewPCG(7, 11))
		zipf := rand.NewZipf(rng, 1.1, 1, 19)
		const total = 6000
		step := map[string]int{}
		for range total / 100 {
			evs := map[string][]int{}
			for range 100 {
				a := "A" + strconv.FormatUint(zipf.Uint64(), 10)
				step[a]++
				evs[a] = append(evs[a], step[a])
			}
			e.record(ctx, "Hot", evs)
		}
		t.Logf("hottest aggregate has %d of %d events", step["A0"], total)
		env := []string{"DB_URL=" + cfg.DB.URL.Secret(), "NATS_URL=" + srv.URL(), "STREAM=" + testStream,
			"OUTBOX_TABLE=bento_outbox", "OUTBOX_BATCH_SIZE=20", "OUTBOX_POLL_INTERVAL=50ms", "OUTBOX_BACKOFF=100ms",
			"OUTBOX_MAX_ATTEMPTS=100", "OUTBOX_RETENTION=0", "OUTBOX_NOTIFY=false"}
		pending := func() int { return w.count("SELECT COUNT(*) FROM bento_outbox WHERE status = 'pending'") }
		relays := 2
		if cfg.DB.URL.Dialect() == testdb.SQLite {
			relays = 1
		}

		// Once between publish and mark, then at random points.
		p := startRelayProcess(t, bin, append(env, "PAUSE=1h"))
		p.await("PUBLISHED", 30*time.Second)
		p.kill()
		midWork := 0
		for round := 0; round < 10 && pending() > 0; round++ {
			var ps []*relayProcess
			for range relays {
				ps = append(ps, startRelayProcess(t, bin, env))
			}
			killMidWork(t, pending, ps...)
			if left := pending(); left > 0 {
				midWork++
				t.Logf("round %d: %d rows pending, %d messages in the stream", round+1, left, streamCount(t, reader.JetStream(), testStream))
			}
		}
		if midWork < 2 {
			t.Fatalf("only %d rounds of kills landed while the relays had work; want 2", midWork)
		}
		r := newRelay(t, w.db, reader, nil)
		waitFor(t, 60*time.Second, "a clean relay to publish the rest", func() bool {
			if _, err := r.RunOnce(ctx); err != nil {
				t.Fatalf("RunOnce: %v", err)
			}
			return pending() == 0
		})
		if n := w.count("SELECT COUNT(*) FROM bento_outbox"); n != 0 {
			t.Fatalf("%d rows left in the outbox", n)
		}
		want := audited(t, w)
		if len(want) != total {
			t.Fatalf("%d events committed, want %d", len(want), total)
		}
		exactlyOnce(t, want, readStream(t, reader.JetStream(), testStream))
	})
}
