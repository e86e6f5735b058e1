// Command relaybench measures the job of an outbox relay — move committed
// events from a PostgreSQL outbox table to NATS JetStream — done by
// Bento's relay and by Watermill's forwarder (watermill-sql's PostgreSQL
// subscriber feeding components/forwarder, publishing with
// watermill-nats), under the same harness:
//
//   - burndown: N events are committed to the outbox first (Bento: rows
//     bulk-inserted into bento_outbox; Watermill: enveloped messages
//     published into the forwarder's SQL topic in transactions of 1,000),
//     then the relay or forwarder starts and the clock runs until the
//     stream holds all N. Reports events/s.
//   - latency: events are committed at a fixed rate (-rate per second, open
//     loop) for -duration, each in a transaction that also inserts an order
//     and its line (Bento: shop.Service.Place through the unit of work;
//     Watermill: the same two rows by hand plus the forwarder publish) with
//     the relay or forwarder running. A JetStream consumer records when each
//     event arrives; latency is arrival minus the moment COMMIT returned.
//     Reports p50/p95/p99/max.
//
// Each run gets a fresh PostgreSQL database (created on the server of
// -pg-admin, dropped at the end unless -keep) and a fresh stream
// RELAYBENCH_<run> on -nats (deleted at the end). Each run prints one JSON
// object on stdout. scripts/relay-bench.sh runs the comparison.
//
//	go run . -system bento -mode burndown -n 100000 -batch 100
//	go run . -system watermill -mode latency -rate 1000 -duration 30s
package main

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net/url"
	"os"
	"os/signal"
	"runtime/pprof"
	"runtime/trace"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/procfs"
)

type options struct {
	system, mode   string
	pgAdmin        string
	natsURL        string
	n, batch       int
	rate           int
	duration       time.Duration
	warmup         time.Duration
	wake           string
	poll           time.Duration
	maxInFlight    int
	drainTimeout   time.Duration
	keep           bool
	chunk          int
	verbose        bool
	forwarderCount int
	poolSize       int
	maxOverflow    int
	overflowIdle   time.Duration
	series         string
	aggregates     int
}

// result is the one JSON object a run prints.
type result struct {
	System    string `json:"system"`
	Mode      string `json:"mode"`
	RunID     string `json:"run_id"`
	Database  string `json:"database"`
	Stream    string `json:"stream"`
	Batch     int    `json:"batch"`
	Wake      string `json:"wake,omitempty"`
	PollMS    int64  `json:"poll_ms"`
	GoVersion string `json:"go"`
	// NATSVersion is the version of the NATS server the run published to.
	NATSVersion string `json:"nats_server,omitempty"`

	// burndown
	Events       int     `json:"events,omitempty"`
	LoadSeconds  float64 `json:"load_s,omitempty"`
	Seconds      float64 `json:"seconds,omitempty"`
	EventsPerSec float64 `json:"events_per_s,omitempty"`
	StreamMsgs   uint64  `json:"stream_msgs"`
	LeftInTable  int64   `json:"left_in_table"`

	// latency
	Aggregates   int     `json:"aggregates,omitempty"`
	Rate         int     `json:"rate,omitempty"`
	DurationS    float64 `json:"duration_s,omitempty"`
	Committed    int64   `json:"committed,omitempty"`
	Failed       int64   `json:"failed"`
	AchievedRate float64 `json:"achieved_rate,omitempty"`
	Late         int64   `json:"late_starts"`
	Received     int64   `json:"received,omitempty"`
	Measured     int     `json:"measured,omitempty"`
	Missing      int64   `json:"missing"`
	Duplicates   int64   `json:"duplicates"`
	CommitP50    float64 `json:"commit_p50_ms,omitempty"`
	CommitP99    float64 `json:"commit_p99_ms,omitempty"`
	P50          float64 `json:"p50_ms,omitempty"`
	P95          float64 `json:"p95_ms,omitempty"`
	P99          float64 `json:"p99_ms,omitempty"`
	Max          float64 `json:"max_ms,omitempty"`
	// StoredP50/P99: commit → stored in the stream (the relay's part and
	// the broker's store, by the stream's timestamp; NATS runs on this
	// machine, so one clock); the rest of the latency is the delivery to
	// the consumer.
	StoredP50 float64 `json:"stored_p50_ms,omitempty"`
	StoredP99 float64 `json:"stored_p99_ms,omitempty"`
	// CPUBusy is the share of the machine's CPU time in use while events
	// were committed (Linux /proc/stat; absent elsewhere).
	CPUBusy float64 `json:"cpu_busy,omitempty"`
	// Bento's relay, per batch begun after the warm-up (its
	// outbox.PublishObserver): Batches counted; PublishP99/Max, how long
	// the Publisher took (the messages handed to the broker until every
	// acknowledgement); RelayDBP99/Max, the rest of the batch (BEGIN and
	// the claim, the mark and COMMIT: the relay's database part). An event
	// committed while a batch runs waits for it and for its own, so these
	// say which part a tail of the latency came from.
	Batches    int     `json:"batches,omitempty"`
	PublishP99 float64 `json:"publish_p99_ms,omitempty"`
	PublishMax float64 `json:"publish_max_ms,omitempty"`
	RelayDBP99 float64 `json:"relay_db_p99_ms,omitempty"`
	RelayDBMax float64 `json:"relay_db_max_ms,omitempty"`

	Error string `json:"error,omitempty"`
}

func main() { os.Exit(relaybench()) }

// relaybench runs one benchmark and returns the exit code; its deferred
// work (the profile and the trace) runs before main exits, failed runs
// included: they are the ones to look into.
func relaybench() int {
	o := options{}
	flag.StringVar(&o.system, "system", "bento", "bento (the relay) or watermill (watermill-sql + forwarder + watermill-nats)")
	flag.StringVar(&o.mode, "mode", "burndown", "burndown or latency")
	flag.StringVar(&o.pgAdmin, "pg-admin", envOr("RELAYBENCH_PG_ADMIN", "postgres://postgres@127.0.0.1:5432/postgres"), "PostgreSQL admin URL; each run creates and drops a database on its server")
	flag.StringVar(&o.natsURL, "nats", envOr("RELAYBENCH_NATS", "nats://127.0.0.1:4222"), "NATS server with JetStream")
	flag.IntVar(&o.n, "n", 100000, "burndown: events")
	flag.IntVar(&o.batch, "batch", 100, "relay batch size (Bento OUTBOX_BATCH_SIZE) or watermill-sql SubscribeBatchSize")
	flag.IntVar(&o.rate, "rate", 1000, "latency: events committed per second")
	flag.DurationVar(&o.duration, "duration", 30*time.Second, "latency: how long events are committed")
	flag.DurationVar(&o.warmup, "warmup", 5*time.Second, "latency: events committed in this first stretch are not measured (a fresh database and a cold pool keep commits behind for the first 2-3 s at 1,000/s on 2 cores)")
	flag.StringVar(&o.wake, "wake", "inproc", "bento latency: inproc (the unit of work wakes the relay in process), notify (LISTEN/NOTIFY) or poll")
	flag.DurationVar(&o.poll, "poll", time.Second, "poll interval: Bento OUTBOX_POLL_INTERVAL, watermill-sql PollInterval")
	flag.IntVar(&o.maxInFlight, "max-in-flight", 256, "latency: most transactions in flight at once (open loop; a start that must wait counts as late)")
	flag.DurationVar(&o.drainTimeout, "drain-timeout", 2*time.Minute, "how long to wait for the last events to arrive")
	flag.BoolVar(&o.keep, "keep", false, "keep the database and the stream")
	flag.IntVar(&o.chunk, "load-chunk", 1000, "burndown: events per insert statement (Bento) or per transaction (Watermill)")
	flag.BoolVar(&o.verbose, "v", false, "progress on stderr")
	flag.IntVar(&o.aggregates, "aggregates", 0, "bento latency: 0 places orders (one aggregate each); N > 0 records each event on one of N Account aggregates (i mod N) in a unit of work of its own, the skewed shape (a large N is the uniform shape of the same transaction)")
	flag.IntVar(&o.poolSize, "pool-size", 0, "bento: DB_POOL_SIZE (0 keeps the default, 5)")
	flag.IntVar(&o.maxOverflow, "max-overflow", -1, "bento: DB_MAX_OVERFLOW (-1 keeps the default, 10)")
	flag.DurationVar(&o.overflowIdle, "overflow-idle", -1, "bento: DB_POOL_OVERFLOW_IDLE (-1 keeps the default, 60s; 0 closes overflow connections on return)")
	flag.StringVar(&o.series, "series", "", "latency: write one CSV line per measured event to this file (committed_ms since the warm-up ended, negative during it, commit_ms, latency_ms, stored_ms: commit→stored in the stream)")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the run to this file")
	tracefile := flag.String("trace", "", "write a Go execution trace of the run to this file")
	flag.Parse()
	stopTrace, err := record(*tracefile, trace.Start, trace.Stop)
	if err != nil {
		fmt.Fprintln(os.Stderr, "relaybench:", err)
		return 2
	}
	defer stopTrace()
	stopProfile, err := record(*cpuprofile, pprof.StartCPUProfile, pprof.StopCPUProfile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "relaybench:", err)
		return 2
	}
	defer stopProfile()
	if err := o.check(); err != nil {
		fmt.Fprintf(os.Stderr, "relaybench: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := run(ctx, o)
	if err != nil {
		res.Error = err.Error()
	}
	b, _ := json.Marshal(res)
	fmt.Println(string(b))
	if err != nil {
		fmt.Fprintf(os.Stderr, "relaybench: %v\n", err)
		return 1
	}
	return 0
}

// record starts writing a CPU profile or an execution trace to path and
// returns what stops it and closes the file. With no path it records
// nothing.
func record(path string, start func(io.Writer) error, stop func()) (func(), error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := start(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		stop()
		if err := f.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "relaybench:", err)
		}
	}, nil
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func (o *options) check() error {
	switch {
	case o.system != "bento" && o.system != "watermill":
		return fmt.Errorf("-system=%q: accepted: bento, watermill", o.system)
	case o.mode != "burndown" && o.mode != "latency":
		return fmt.Errorf("-mode=%q: accepted: burndown, latency", o.mode)
	case o.wake != "inproc" && o.wake != "notify" && o.wake != "poll":
		return fmt.Errorf("-wake=%q: accepted: inproc, notify, poll", o.wake)
	case o.n < 1 || o.batch < 1 || o.rate < 1 || o.duration <= 0 || o.poll <= 0 || o.maxInFlight < 1 || o.chunk < 1:
		return errors.New("-n, -batch, -rate, -duration, -poll, -max-in-flight and -load-chunk must be positive")
	case o.aggregates < 0:
		return errors.New("-aggregates: 0 (orders) or a positive number of aggregates")
	case o.aggregates > 0 && (o.system != "bento" || o.mode != "latency"):
		return errors.New("-aggregates applies to -system bento -mode latency only")
	case o.batch > 10000:
		return errors.New("-batch: at most 10000 (OUTBOX_BATCH_SIZE's limit)")
	}
	return nil
}

// env is what a run has: its fresh database and stream.
type env struct {
	o       options
	runID   string
	dbURL   string
	dbName  string
	stream  string
	subject string // the events' subject prefix: relaybench.<run>
	nc      *nats.Conn
	js      jetstream.JetStream
	logf    func(format string, args ...any)
}

func run(ctx context.Context, o options) (res result, err error) {
	e := &env{o: o, runID: newID()}
	e.logf = func(string, ...any) {}
	if o.verbose {
		e.logf = func(f string, a ...any) { fmt.Fprintf(os.Stderr, "relaybench: "+f+"\n", a...) }
	}
	e.dbName = "relaybench_" + e.runID
	e.stream = "RELAYBENCH_" + strings.ToUpper(e.runID)
	e.subject = "relaybench." + e.runID
	res = result{System: o.system, Mode: o.mode, RunID: e.runID, Database: e.dbName, Stream: e.stream, Batch: o.batch,
		PollMS: o.poll.Milliseconds(), GoVersion: goVersion()}
	if o.system == "bento" && o.mode == "latency" {
		res.Wake = o.wake
	}

	cleanupDB, err := e.createDatabase(ctx)
	if err != nil {
		return res, err
	}
	defer cleanupDB()
	e.nc, err = nats.Connect(o.natsURL, nats.Name("relaybench-"+e.runID))
	if err != nil {
		return res, fmt.Errorf("connecting to NATS at %s: %w", o.natsURL, err)
	}
	defer e.nc.Close()
	res.NATSVersion = e.nc.ConnectedServerVersion()
	if e.js, err = jetstream.New(e.nc); err != nil {
		return res, err
	}
	if _, err := e.js.CreateStream(ctx, jetstream.StreamConfig{Name: e.stream, Subjects: []string{e.subject + ".>"},
		Storage: jetstream.FileStorage, Duplicates: 2 * time.Minute}); err != nil {
		return res, fmt.Errorf("creating stream %s: %w", e.stream, err)
	}
	defer func() {
		if o.keep {
			return
		}
		dctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if derr := e.js.DeleteStream(dctx, e.stream); derr != nil {
			fmt.Fprintf(os.Stderr, "relaybench: deleting stream %s: %v\n", e.stream, derr)
		}
	}()

	switch {
	case o.system == "bento" && o.mode == "burndown":
		err = bentoBurndown(ctx, e, &res)
	case o.system == "bento":
		err = bentoLatency(ctx, e, &res)
	case o.mode == "burndown":
		err = watermillBurndown(ctx, e, &res)
	default:
		err = watermillLatency(ctx, e, &res)
	}
	return res, err
}

// createDatabase makes the run's database and returns how to drop it.
func (e *env) createDatabase(ctx context.Context) (func(), error) {
	admin, err := sql.Open("pgx", e.o.pgAdmin)
	if err != nil {
		return nil, err
	}
	actx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := admin.ExecContext(actx, "CREATE DATABASE "+e.dbName); err != nil {
		admin.Close()
		return nil, fmt.Errorf("creating database %s on %s: %w", e.dbName, redact(e.o.pgAdmin), err)
	}
	u, err := url.Parse(e.o.pgAdmin)
	if err != nil {
		admin.Close()
		return nil, err
	}
	u.Path = "/" + e.dbName
	e.dbURL = u.String()
	return func() {
		defer admin.Close()
		if e.o.keep {
			fmt.Fprintf(os.Stderr, "relaybench: kept database %s\n", e.dbName)
			return
		}
		dctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if _, err := admin.ExecContext(dctx, "DROP DATABASE IF EXISTS "+e.dbName+" WITH (FORCE)"); err != nil {
			fmt.Fprintf(os.Stderr, "relaybench: dropping database %s: %v\n", e.dbName, err)
		}
	}, nil
}

// streamMsgs returns how many messages the run's stream holds.
func (e *env) streamMsgs(ctx context.Context) (uint64, error) {
	s, err := e.js.Stream(ctx, e.stream)
	if err != nil {
		return 0, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return 0, err
	}
	return info.State.Msgs, nil
}

// waitStream waits until the stream holds n messages; it returns when that
// was seen (polled every 2 ms) and how many it holds.
func (e *env) waitStream(ctx context.Context, n uint64, timeout time.Duration, progress func(uint64)) (time.Time, uint64, error) {
	deadline := time.Now().Add(timeout)
	var last uint64
	lastLog := time.Now()
	for {
		got, err := e.streamMsgs(ctx)
		now := time.Now()
		if err != nil {
			return now, last, err
		}
		last = got
		if got >= n {
			return now, got, nil
		}
		if now.After(deadline) {
			return now, got, fmt.Errorf("the stream holds %d of %d messages after %s", got, n, timeout)
		}
		if ctx.Err() != nil {
			return now, got, ctx.Err()
		}
		if progress != nil && now.Sub(lastLog) > time.Second {
			progress(got)
			lastLog = now
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// arrivals records when each event (by key) arrived at a JetStream
// consumer of the run's stream.
type arrivals struct {
	mu     sync.Mutex
	at     map[int64]time.Time
	stored map[int64]time.Time // when the stream stored each message (its JetStream timestamp)
	dups   int64
	n      atomic.Int64
	cc     jetstream.ConsumeContext
}

// consume starts an ordered JetStream consumer on the stream; key pulls
// the event's key out of a message.
func (e *env) consume(ctx context.Context, key func(jetstream.Msg) (int64, bool)) (*arrivals, error) {
	c, err := e.js.OrderedConsumer(ctx, e.stream, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return nil, fmt.Errorf("consumer: %w", err)
	}
	a := &arrivals{at: map[int64]time.Time{}, stored: map[int64]time.Time{}}
	cc, err := c.Consume(func(m jetstream.Msg) {
		now := time.Now()
		k, ok := key(m)
		if !ok {
			return
		}
		a.mu.Lock()
		if _, dup := a.at[k]; dup {
			a.dups++
		} else {
			a.at[k] = now
			if md, err := m.Metadata(); err == nil {
				a.stored[k] = md.Timestamp
			}
			a.n.Add(1)
		}
		a.mu.Unlock()
	}, jetstream.PullMaxMessages(1000))
	if err != nil {
		return nil, fmt.Errorf("consume: %w", err)
	}
	a.cc = cc
	return a, nil
}

// payloadKey reads "order_id" from a JSON payload.
func payloadKey(m jetstream.Msg) (int64, bool) {
	var p struct {
		OrderID int64 `json:"order_id"`
	}
	if err := json.Unmarshal(m.Data(), &p); err != nil || p.OrderID == 0 {
		return 0, false
	}
	return p.OrderID, true
}

// commits records when COMMIT returned for each event (by key).
type commits struct {
	mu      sync.Mutex
	at      map[int64]time.Time
	commitD []time.Duration
	began   map[int64]time.Time // when each event's transaction began (for -series)

	cpuStart, cpuEnd cpuTimes // the machine's CPU time when the load began and ended
	warmEnd          time.Time
	failed           atomic.Int64
	late             atomic.Int64
	first            atomic.Pointer[string]
}

func (c *commits) record(k int64, started, done time.Time) {
	c.mu.Lock()
	c.at[k] = done
	if c.began != nil {
		c.began[k] = started
	}
	if !started.Before(c.warmEnd) {
		c.commitD = append(c.commitD, done.Sub(started))
	}
	c.mu.Unlock()
}

func (c *commits) fail(err error) {
	c.failed.Add(1)
	s := err.Error()
	c.first.CompareAndSwap(nil, &s)
}

// openLoop calls op at rate per second for d, on at most maxInFlight
// workers; a start that found every worker busy counts as late. The
// workers live for the whole run, so their stacks grow once, as a
// server's connection goroutines do, not once per call.
func openLoop(ctx context.Context, rate int, d time.Duration, maxInFlight int, c *commits, op func(ctx context.Context, i int)) time.Duration {
	interval := time.Second / time.Duration(rate)
	work := make(chan int)
	var wg sync.WaitGroup
	opCtx := context.WithoutCancel(ctx)
	for range maxInFlight {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				op(opCtx, i)
			}
		}()
	}
	start := time.Now()
	c.cpuStart, _ = readCPU()
	for i := 0; ; i++ {
		at := start.Add(time.Duration(i) * interval)
		if at.Sub(start) >= d || ctx.Err() != nil {
			break
		}
		if w := time.Until(at); w > 0 {
			time.Sleep(w)
		}
		select {
		case work <- i:
		default:
			c.late.Add(1)
			work <- i
		}
	}
	c.cpuEnd, _ = readCPU()
	close(work)
	wg.Wait()
	return time.Since(start)
}

// finishLatency waits for the committed events to arrive and fills res.
func (e *env) finishLatency(c *commits, a *arrivals, took time.Duration, res *result) error {
	c.mu.Lock()
	committed := int64(len(c.at))
	c.mu.Unlock()
	deadline := time.Now().Add(e.o.drainTimeout)
	for a.n.Load() < committed && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	a.cc.Stop()
	a.mu.Lock()
	defer a.mu.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	var lat, stored []time.Duration
	var missing int64
	var series *os.File
	if e.o.series != "" {
		var err error
		if series, err = os.Create(e.o.series); err != nil {
			return err
		}
		fmt.Fprintln(series, "committed_ms,commit_ms,latency_ms,stored_ms")
	}
	for k, done := range c.at {
		got, ok := a.at[k]
		if !ok {
			missing++
			continue
		}
		latency := max(0, got.Sub(done))
		storedAt, hasStored := a.stored[k] // not without JetStream metadata
		if series != nil {
			storedMS := ""
			if hasStored {
				storedMS = strconv.FormatFloat(ms(storedAt.Sub(done)), 'f', 3, 64)
			}
			fmt.Fprintf(series, "%.3f,%.3f,%.3f,%s\n", ms(done.Sub(c.warmEnd)), ms(done.Sub(c.began[k])), ms(latency), storedMS)
		}
		if done.Sub(c.warmEnd) < 0 && e.o.warmup > 0 {
			// committed during the warm-up: not measured
			continue
		}
		lat = append(lat, latency)
		if hasStored {
			stored = append(stored, max(0, storedAt.Sub(done)))
		}
	}
	if series != nil {
		if err := series.Close(); err != nil {
			return err
		}
	}
	res.Rate, res.DurationS = e.o.rate, round3(took.Seconds())
	res.Committed, res.Failed, res.Late = committed, c.failed.Load(), c.late.Load()
	res.AchievedRate = math.Round(float64(committed)/took.Seconds()*10) / 10
	res.Received, res.Missing, res.Duplicates, res.Measured = a.n.Load(), missing, a.dups, len(lat)
	cl := pct(c.commitD)
	res.CommitP50, res.CommitP99 = ms(cl.p50), ms(cl.p99)
	l := pct(lat)
	res.P50, res.P95, res.P99, res.Max = ms(l.p50), ms(l.p95), ms(l.p99), ms(l.max)
	sl := pct(stored)
	res.StoredP50, res.StoredP99 = ms(sl.p50), ms(sl.p99)
	if t := c.cpuEnd.total - c.cpuStart.total; t > 0 {
		res.CPUBusy = round3((c.cpuEnd.busy - c.cpuStart.busy) / t)
	}
	if p := c.first.Load(); p != nil {
		fmt.Fprintf(os.Stderr, "relaybench: first failed commit: %s\n", *p)
	}
	if missing > 0 {
		return fmt.Errorf("%d of %d committed events did not arrive within %s", missing, committed, e.o.drainTimeout)
	}
	return nil
}

type latencies struct{ p50, p95, p99, max time.Duration }

// pct sorts d and returns its exact (nearest-rank) percentiles.
func pct(d []time.Duration) latencies {
	if len(d) == 0 {
		return latencies{}
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	at := func(p float64) time.Duration {
		i := int(math.Ceil(p*float64(len(d)))) - 1
		return d[max(0, min(i, len(d)-1))]
	}
	return latencies{at(0.5), at(0.95), at(0.99), d[len(d)-1]}
}

func ms(d time.Duration) float64 { return math.Round(float64(d)/1e3) / 1e3 }

func round3(f float64) float64 { return math.Round(f*1000) / 1000 }

func newID() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func redact(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "(unparsable URL)"
	}
	return p.Redacted()
}

// newCommits starts the record of a latency run's commits; the warm-up
// begins now.
func (e *env) newCommits() *commits {
	c := &commits{at: map[int64]time.Time{}, warmEnd: time.Now().Add(e.o.warmup)}
	if e.o.series != "" {
		c.began = map[int64]time.Time{}
	}
	return c
}

// cpuTimes is the machine's CPU time (all CPUs, in seconds): busy and in
// all.
type cpuTimes struct{ busy, total float64 }

// readCPU reads the machine's CPU time from /proc/stat; elsewhere than on
// Linux it fails and the result has no cpu_busy.
func readCPU() (cpuTimes, error) {
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		return cpuTimes{}, err
	}
	st, err := fs.Stat()
	if err != nil {
		return cpuTimes{}, err
	}
	// Steal is not ours to use; guest time is already in user.
	c := st.CPUTotal
	busy := c.User + c.Nice + c.System + c.IRQ + c.SoftIRQ
	return cpuTimes{busy: busy, total: busy + c.Idle + c.Iowait}, nil
}
