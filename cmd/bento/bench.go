package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	mrand "math/rand/v2"
	"os"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"entgo.io/ent/dialect"
	entsql "entgo.io/ent/dialect/sql"
	"github.com/google/uuid"

	"github.com/bento-go/bento"
	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/ent"
	"github.com/bento-go/bento/internal/pgxfloor"
	"github.com/bento-go/bento/outbox"
	"github.com/bento-go/bento/resilience"
	"github.com/bento-go/bento/shop"
)

// The arms of a bench run. Each arm's orders carry its name in the
// customer address (bench-<run>-<arm>-<worker>-<n>@example.com), so the
// rows it wrote can be counted afterwards.
const (
	armUoW = "uow" // shop.Service.Place through the unit of work (the whole stack)
	armEnt = "ent" // the same rows by hand with a plain ent client, no Bento layer
	armSQL = "sql" // the same rows by hand with database/sql
	armPgx = "pgx" // the same rows in the same round trip on a bare pgx pool (the floor)
)

// armTitle names an arm in the table.
var armTitle = map[string]string{armUoW: "bento (unit of work)", armEnt: "plain ent", armSQL: "plain database/sql", armPgx: "bare pgx (the floor)"}

// warmPrefix marks an arm's warm-up orders: wuow, went, wsql, wpgx in the counts.
const warmPrefix = "w"

// armNames explains every arm name the bench prints.
var armNames = []struct{ name, meaning string }{
	{armUoW, "Bento: shop.Service.Place in a unit of work, with every layer serve uses"},
	{armEnt, "the same rows written by hand with a plain ent client, no Bento layer (--baseline)"},
	{armSQL, "the same rows written by hand with database/sql (--baseline)"},
	{armPgx, "the same rows in the unit of work's one round trip, by hand on a bare pgx pool (--floor, PostgreSQL)"},
	{"wuow, went, wsql, wpgx", "the warm-up orders of uow, ent, sql and pgx (--warmup): checked in the database, not in the statistics"},
}

// armsHelp lists the arms, one a line, for the usage text.
func armsHelp() string {
	var b strings.Builder
	for _, a := range armNames {
		fmt.Fprintf(&b, "  %-17s %s\n", a.name, a.meaning)
	}
	return strings.TrimRight(b.String(), "\n")
}

// benchDefaultURL is bench's own default database, so that a bench run
// never writes into serve's (sqlite://bento.db) unless DB_URL says so.
const benchDefaultURL = "sqlite://bento-bench.db"

// baselineFlag is --baseline: a boolean whose error for anything else
// (an arm name, say) explains the arms.
type baselineFlag struct{ on *bool }

func (f baselineFlag) IsBoolFlag() bool { return true }

func (f baselineFlag) String() string {
	if f.on == nil {
		return "false"
	}
	return strconv.FormatBool(*f.on)
}

func (f baselineFlag) Set(v string) error {
	b, err := config.ParseBool(v)
	if err != nil {
		var list []string
		for _, a := range armNames {
			list = append(list, a.name+" = "+a.meaning)
		}
		return fmt.Errorf("--baseline takes no arm name, only true or false (alone: true); it adds the arms ent and sql to uow. The arms: %s",
			strings.Join(list, "; "))
	}
	*f.on = b
	return nil
}

// benchOptions are bento bench's flags.
type benchOptions struct {
	orders       int
	duration     time.Duration
	workers      int
	asJSON       bool
	readMix      float64
	relay        bool
	migrate      bool
	baseline     bool
	floor        bool
	rounds       int
	warmup       int
	drainTimeout time.Duration
	cpuProfile   string
}

func benchCommand() command {
	o := &benchOptions{}
	return command{
		name:     "bench",
		short:    "place orders through the whole stack and report throughput, latency and a row count check",
		defaults: map[string]string{"DB_URL": benchDefaultURL},
		usage: `Places orders with shop.Service.Place (a unit of work: the order, its line and the
OrderPlaced outbox row in one transaction) from --workers goroutines, for --duration or
until --orders are placed, against DB_URL with every layer serve uses (drain, metrics,
outbox, resilience). The schema is migrated first (--migrate).

Where it writes: DB_URL (or --db-url) when set; otherwise its own SQLite file
bento-bench.db, never serve's bento.db. The first line on stderr names the database.
Without --relay the run's OrderPlaced events stay pending in that database's outbox: a
relay on it (bento serve, bento relay) publishes them later; the last line on stderr says
how many.

  --read-mix F   a fraction F of the operations read an order back (GET through the service)
  --relay        run the outbox relay in process with OUTBOX_PUBLISHER (log, nats or rabbitmq) and
                 report the events published and commit→published latency (occurred_at to ack)
  --baseline     also run the same transaction written by hand with a plain ent client and
                 with database/sql on the same *sql.DB, interleaved with Bento's arm in
                 --rounds rounds, and report bento/ent and bento/sql throughput ratios
  --floor        instead of Bento's arm, run the floor under it (PostgreSQL only): the same
                 rows in the unit of work's one round trip (the three inserts in one
                 pipeline, an implicit transaction), ids from the same blocks, written by hand on a
                 bare pgx pool of DB_POOL_SIZE + DB_MAX_OVERFLOW connections, no
                 ent, database/sql or Bento layer: what the client's CPU per order cannot go
                 below (run it as its own process to read its CPU)

The arms (the names in the table, the JSON's counts and the customers' addresses):
` + armsHelp() + `

At the end it counts, in the database, the orders and OrderPlaced events the run wrote
(customers bench-<run>-<arm>-…@example.com) and compares them with what was acknowledged:
a mismatch is reported and the exit status is 1. Latency percentiles are exact (every
latency is kept). With --json the last line of stdout is one JSON object (committed, failed,
failed_by_category, throughput, p50_ms, p95_ms, p99_ms, max_ms, published, pub_p50_ms,
pub_p99_ms, baseline_*_throughput, ratio_ent, ratio_sql, mismatch, …).

A progress line is redrawn on stderr when stderr is a terminal; a line on stderr says when the
load has finished, before the rows are counted. SIGINT stops the load early;
the results so far are reported and checked.`,
		flags: func(fs *flag.FlagSet) {
			fs.IntVar(&o.orders, "orders", 0, "place this many orders per arm, then stop (instead of --duration)")
			durationVar(fs, &o.duration, "duration", 10*time.Second, "run for this long, e.g. 30s, 2m or plain seconds 30 (ignored with --orders)")
			fs.IntVar(&o.workers, "workers", 8, "concurrent workers")
			fs.BoolVar(&o.asJSON, "json", false, "print one JSON object instead of the table")
			fs.Float64Var(&o.readMix, "read-mix", 0, "fraction of operations that read an order back, 0 to 0.99")
			fs.BoolVar(&o.relay, "relay", false, "run the outbox relay in process and measure commit→published latency")
			fs.BoolVar(&o.migrate, "migrate", true, "migrate the schema first")
			fs.Var(baselineFlag{&o.baseline}, "baseline", "interleave the hand-written arms ent (plain ent) and sql (database/sql) with uow (Bento)")
			fs.BoolVar(&o.floor, "floor", false, "run the bare-pgx floor (arm pgx) instead of Bento's arm; PostgreSQL only")
			fs.IntVar(&o.rounds, "rounds", 5, "with --baseline: rounds; each arm runs duration/(rounds×3) or orders/rounds per round")
			fs.IntVar(&o.warmup, "warmup", -1, "orders per arm placed before measuring, not counted in the statistics (-1: 2×workers with --baseline, else 0)")
			durationVar(fs, &o.drainTimeout, "relay-drain-timeout", time.Minute, "with --relay: how long to wait after the load for the run's events to be published")
			fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the measured load to `file` (go tool pprof)")
		},
		run: func(ctx context.Context, inv *invocation) int {
			if code, ok := o.validate(inv); !ok {
				return code
			}
			return runBench(ctx, inv, o)
		},
	}
}

// validate checks the flags; a bad one prints one line and exits 2.
func (o *benchOptions) validate(inv *invocation) (int, bool) {
	set := map[string]bool{}
	inv.fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	bad := func(format string, args ...any) (int, bool) {
		fmt.Fprintf(inv.stderr, "bento bench: "+format+" (see bento bench --help)\n", args...)
		return exitConfig, false
	}
	switch {
	case set["orders"] && set["duration"]:
		return bad("--orders and --duration exclude each other; give one")
	case o.orders < 0:
		return bad("--orders=%d: want a positive count", o.orders)
	case o.orders == 0 && o.duration <= 0:
		return bad("--duration=%s: want a positive duration", o.duration)
	case o.workers < 1 || o.workers > 4096:
		return bad("--workers=%d: accepted: 1 to 4096", o.workers)
	case math.IsNaN(o.readMix) || o.readMix < 0 || o.readMix > 0.99:
		return bad("--read-mix=%v: accepted: 0 to 0.99", o.readMix)
	case o.rounds < 1:
		return bad("--rounds=%d: want at least 1", o.rounds)
	case o.baseline && o.relay:
		return bad("--baseline and --relay exclude each other: a relay would publish every arm's events and load only some rounds")
	case o.baseline && o.readMix > 0:
		return bad("--baseline measures writes only; drop --read-mix")
	case o.baseline && o.orders > 0 && o.orders < o.rounds:
		return bad("--orders=%d with --baseline: want at least --rounds=%d orders", o.orders, o.rounds)
	case o.floor && (o.baseline || o.relay || o.readMix > 0):
		return bad("--floor runs the floor's arm alone, writes only: drop --baseline, --relay and --read-mix")
	case o.floor && inv.cfg.DB.URL.Dialect() != config.Postgres:
		return bad("--floor runs on PostgreSQL only (it writes with pgx); DB_URL is %s, want postgres://…", inv.cfg.DB.URL.Dialect())
	case o.relay && inv.cfg.Outbox.Publisher == "none":
		return bad("--relay needs a publisher: OUTBOX_PUBLISHER=none; accepted: log, nats or rabbitmq")
	}
	if o.warmup < 0 {
		o.warmup = 0
		if o.baseline {
			o.warmup = 2 * o.workers
		}
	}
	return exitOK, true
}

// placeFunc places one order for customer and returns its id.
type placeFunc func(ctx context.Context, customer string) (int, error)

// benchLine is the one line of every order the bench places.
var benchLine = shop.Line{SKU: "SKU-1", Quantity: 2, UnitPriceCents: 1250}

// arm is one way of placing orders, with what it measured.
type arm struct {
	name    string
	place   placeFunc
	lat     []time.Duration // order latencies, every one
	readLat []time.Duration // read latencies (read mix)
	elapsed time.Duration   // time spent measuring
	// committed counts acknowledged orders; failed the errors, by
	// category; ambiguous the failures whose commit may have happened.
	committed, failed, ambiguous int64
	failedBy                     map[string]int64
	readFailed                   int64
	// warm counts the warm-up orders acknowledged (and ambiguous ones).
	warm, warmAmbiguous int64
	nextN               []int // per worker: the next order number
	errs                []string
}

// runState is shared by the workers of a run.
type runState struct {
	runID    string
	svc      *shop.Service
	opts     *benchOptions
	abort    atomic.Bool
	abortErr atomic.Pointer[string]
	consec   atomic.Int64 // failures in a row, over all workers
	// progress
	committed, failed atomic.Int64
	current           atomic.Pointer[string]
}

// customer is the address of worker w's n-th order of arm a.
func (r *runState) customer(a string, w, n int) string {
	return fmt.Sprintf("bench-%s-%s-%d-%d@example.com", r.runID, a, w, n)
}

// segment is a stretch of load for one arm: until n orders are placed
// (n > 0) or until the deadline.
type segment struct {
	orders   int64
	deadline time.Duration
	warm     bool
}

// workerResult is what one worker measured in a segment.
type workerResult struct {
	lat, readLat                 []time.Duration
	committed, failed, ambiguous int64
	readFailed                   int64
	failedBy                     map[string]int64
	errs                         []string
}

// runSegment runs seg for a with opts.workers workers and merges the
// results into a.
func (r *runState) runSegment(ctx context.Context, a *arm, seg segment) {
	label := a.name
	if seg.warm {
		label = "warm-up " + a.name
	}
	r.current.Store(&label)
	workers := r.opts.workers
	if len(a.nextN) < workers {
		a.nextN = make([]int, workers)
	}
	var tickets atomic.Int64
	results := make([]workerResult, workers)
	opCtx := context.WithoutCancel(ctx) // an order in flight finishes after SIGINT
	start := time.Now()
	var until time.Time
	if seg.orders == 0 {
		until = start.Add(seg.deadline)
	}
	custArm := a.name
	if seg.warm {
		custArm = warmPrefix + a.name
	}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res := &results[w]
			res.failedBy = map[string]int64{}
			rng := mrand.New(mrand.NewPCG(uint64(time.Now().UnixNano()), uint64(w)))
			var ids []int // this worker's recent orders, for reads
			for ctx.Err() == nil && !r.abort.Load() {
				if !until.IsZero() && !time.Now().Before(until) {
					return
				}
				if r.opts.readMix > 0 && len(ids) > 0 && rng.Float64() < r.opts.readMix {
					id := ids[rng.IntN(len(ids))]
					t0 := time.Now()
					_, err := r.svc.Get(opCtx, id)
					d := time.Since(t0)
					if err != nil {
						res.readFailed++
						r.failure(res, err, false)
						continue
					}
					res.readLat = append(res.readLat, d)
					r.consec.Store(0)
					continue
				}
				if seg.orders > 0 && tickets.Add(1) > seg.orders {
					return
				}
				n := a.nextN[w]
				a.nextN[w]++
				t0 := time.Now()
				id, err := a.place(opCtx, r.customer(custArm, w, n))
				d := time.Since(t0)
				if err != nil {
					r.failure(res, err, true)
					if !seg.warm {
						r.failed.Add(1)
					}
					continue
				}
				r.consec.Store(0)
				res.committed++
				if !seg.warm {
					res.lat = append(res.lat, d)
					r.committed.Add(1)
				}
				if r.opts.readMix > 0 {
					if len(ids) < 1024 {
						ids = append(ids, id)
					} else {
						ids[rng.IntN(len(ids))] = id
					}
				}
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	for i := range results {
		res := &results[i]
		if seg.warm {
			a.warm += res.committed
			a.warmAmbiguous += res.ambiguous
		} else {
			a.lat = append(a.lat, res.lat...)
			a.readLat = append(a.readLat, res.readLat...)
			a.committed += res.committed
			a.failed += res.failed
			a.ambiguous += res.ambiguous
			a.readFailed += res.readFailed
			for k, v := range res.failedBy {
				a.failedBy[k] += v
			}
		}
		for _, e := range res.errs {
			if len(a.errs) < 5 {
				a.errs = append(a.errs, e)
			}
		}
	}
	if !seg.warm {
		a.elapsed += took
	}
}

// failure records a failed operation; a thousand in a row abort the run.
func (r *runState) failure(res *workerResult, err error, write bool) {
	cat := resilience.Classify(err)
	if write {
		res.failed++
		res.failedBy[cat.String()]++
		if cat == resilience.Ambiguous {
			res.ambiguous++
		}
	}
	if len(res.errs) < 5 {
		res.errs = append(res.errs, oneLine(err))
	}
	if r.consec.Add(1) >= 1000 && r.abort.CompareAndSwap(false, true) {
		msg := fmt.Sprintf("1000 operations failed in a row; the last: %s", oneLine(err))
		r.abortErr.Store(&msg)
	}
}

// latencies are exact percentiles of a set of durations.
type latencies struct {
	n                  int
	p50, p95, p99, max time.Duration
}

// percentiles sorts d (in place) and returns its nearest-rank
// percentiles.
func percentiles(d []time.Duration) latencies {
	if len(d) == 0 {
		return latencies{}
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	at := func(p float64) time.Duration {
		i := int(math.Ceil(p*float64(len(d)))) - 1
		return d[max(0, min(i, len(d)-1))]
	}
	return latencies{n: len(d), p50: at(0.50), p95: at(0.95), p99: at(0.99), max: d[len(d)-1]}
}

func ms(d time.Duration) float64 { return math.Round(float64(d)/1e3) / 1e3 }

// armCount is what the database holds for one arm (or its warm-up).
type armCount struct {
	Arm       string `json:"arm"`
	Acked     int64  `json:"acked"`
	Ambiguous int64  `json:"ambiguous"`
	Orders    int64  `json:"db_orders"`
	Events    int64  `json:"db_events"` // OrderPlaced rows in the outbox, plus those the relay published and deleted
}

// checkCounts compares what the database holds with what was
// acknowledged: every acknowledged order is there, no order is there that
// was neither acknowledged nor ambiguous, and every order has exactly one
// OrderPlaced event. It returns the problems found.
func checkCounts(c armCount) []string {
	var p []string
	if c.Orders < c.Acked {
		p = append(p, fmt.Sprintf("%s: %d orders acknowledged but %d in the database", c.Arm, c.Acked, c.Orders))
	}
	if c.Orders > c.Acked+c.Ambiguous {
		p = append(p, fmt.Sprintf("%s: %d orders in the database but only %d acknowledged (+%d ambiguous)", c.Arm, c.Orders, c.Acked, c.Ambiguous))
	}
	if c.Events != c.Orders {
		p = append(p, fmt.Sprintf("%s: %d orders in the database but %d OrderPlaced events", c.Arm, c.Orders, c.Events))
	}
	return p
}

// benchResult is the --json output.
type benchResult struct {
	RunID            string           `json:"run_id"`
	Dialect          string           `json:"dialect"`
	Workers          int              `json:"workers"`
	DurationS        float64          `json:"duration_s"`
	OrdersTarget     int              `json:"orders_target,omitempty"`
	Committed        int64            `json:"committed"`
	Failed           int64            `json:"failed"`
	FailedByCategory map[string]int64 `json:"failed_by_category"`
	Throughput       float64          `json:"throughput"`
	P50              float64          `json:"p50_ms"`
	P95              float64          `json:"p95_ms"`
	P99              float64          `json:"p99_ms"`
	Max              float64          `json:"max_ms"`
	ReadMix          float64          `json:"read_mix"`
	Reads            int64            `json:"reads"`
	ReadFailed       int64            `json:"read_failed"`
	ReadP50          float64          `json:"read_p50_ms"`
	ReadP99          float64          `json:"read_p99_ms"`
	Relay            bool             `json:"relay"`
	Publisher        string           `json:"publisher,omitempty"`
	Published        int64            `json:"published"`
	PubP50           float64          `json:"pub_p50_ms"`
	PubP99           float64          `json:"pub_p99_ms"`
	PubMax           float64          `json:"pub_max_ms"`
	Baseline         bool             `json:"baseline"`
	Floor            bool             `json:"floor,omitempty"`
	Rounds           int              `json:"rounds,omitempty"`
	EntThroughput    float64          `json:"baseline_ent_throughput,omitempty"`
	EntP50           float64          `json:"baseline_ent_p50_ms,omitempty"`
	EntP99           float64          `json:"baseline_ent_p99_ms,omitempty"`
	EntFailed        int64            `json:"baseline_ent_failed,omitempty"`
	SQLThroughput    float64          `json:"baseline_sql_throughput,omitempty"`
	SQLP50           float64          `json:"baseline_sql_p50_ms,omitempty"`
	SQLP99           float64          `json:"baseline_sql_p99_ms,omitempty"`
	SQLFailed        int64            `json:"baseline_sql_failed,omitempty"`
	RatioEnt         float64          `json:"ratio_ent,omitempty"`
	RatioSQL         float64          `json:"ratio_sql,omitempty"`
	Counts           []armCount       `json:"counts"`
	Mismatch         bool             `json:"mismatch"`
	MismatchDetail   []string         `json:"mismatch_detail,omitempty"`
	Aborted          string           `json:"aborted,omitempty"`
}

func runBench(ctx context.Context, inv *invocation, o *benchOptions) int {
	base := context.WithoutCancel(ctx)
	st, err := inv.openStack(base, o.migrate)
	if err != nil {
		return inv.fail("", err)
	}
	defer st.db.Close()
	db := st.db
	where := inv.cfg.DB.URL.String()
	if where == benchDefaultURL {
		where += " (bench's own default, not serve's bento.db; DB_URL chooses another database)"
	}
	fmt.Fprintf(inv.stderr, "bento bench: writing to %s\n", where)
	svc := shop.NewService(st.uow, st.client, shop.WithIDs(st.ids))
	rs := &runState{runID: newRunID(), svc: svc, opts: o}

	arms := []*arm{{name: armUoW, failedBy: map[string]int64{}, place: func(ctx context.Context, customer string) (int, error) {
		ord, err := svc.Place(ctx, shop.PlaceOrder{Customer: customer, Lines: []shop.Line{benchLine}}, "")
		return ord.ID, err
	}}}
	if o.floor { // the floor's arm instead of Bento's
		pool, err := pgxfloor.NewPool(base, inv.cfg.DB)
		if err != nil {
			return inv.fail("--floor", err)
		}
		defer pool.Close()
		floor, err := pgxfloor.New(pool, st.ids, db.Names())
		if err != nil {
			return inv.fail("--floor", err)
		}
		arms = []*arm{{name: armPgx, failedBy: map[string]int64{}, place: func(ctx context.Context, customer string) (int, error) {
			return floor.Place(ctx, customer, benchLine)
		}}}
	}
	if o.baseline {
		raw := db.Driver().DB()
		eb := newEntBaseline(db.Dialect(), raw, db.Names())
		sb := newSQLBaseline(db.Dialect(), raw, db.Names())
		arms = append(arms,
			&arm{name: armEnt, failedBy: map[string]int64{}, place: eb.place},
			&arm{name: armSQL, failedBy: map[string]int64{}, place: sb.place})
	}

	// The relay, in process.
	var rec *pubRecorder
	stopRelay := func() {}
	if o.relay {
		pub, closePub, err := bento.Publisher(base, inv.cfg.Outbox, db)
		if err != nil {
			return inv.fail("", err)
		}
		if inv.cfg.Outbox.Publisher == "log" {
			// The log publisher formats each event as it would; the lines
			// are discarded, so that they do not bury the results.
			pub = outbox.LogPublisher{Logger: slog.New(slog.NewJSONHandler(io.Discard, nil))}
		}
		rec = &pubRecorder{inner: pub, marker: []byte("bench-" + rs.runID + "-"), arms: map[uuid.UUID]string{}}
		rc := db.RelayConfig()
		rc.Observer = st.metrics
		relay, err := db.NewRelay(rec, rc)
		if err != nil {
			closePub()
			return inv.fail("", err)
		}
		relayCtx, cancelRelay := context.WithCancel(base)
		listen, err := db.Listen(relayCtx)
		if err != nil {
			cancelRelay()
			relay.Close()
			closePub()
			return inv.fail("", err)
		}
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			if err := relay.Run(relayCtx, listen); err != nil {
				inv.logger.Error("bento: relay stopped", "error", err.Error())
			}
		}()
		go func() { defer wg.Done(); db.RunNotify(relayCtx) }()
		stopRelay = func() {
			cancelRelay()
			wg.Wait()
			relay.Close()
			closePub()
		}
	}
	relayStopped := false
	defer func() {
		if !relayStopped {
			stopRelay()
		}
	}()

	// Progress on a terminal.
	stopProgress := func() {}
	if isTerminal(inv.stderr) {
		stopProgress = rs.progress(inv.stderr, o, len(arms))
	}

	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			return inv.fail("--cpuprofile", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return inv.fail("--cpuprofile", err)
		}
		defer pprof.StopCPUProfile()
	}
	start := time.Now()
	if o.warmup > 0 {
		for _, a := range arms {
			rs.runSegment(ctx, a, segment{orders: int64(o.warmup), warm: true})
		}
	}
	rounds := 1
	if o.baseline {
		rounds = o.rounds
	}
	for r := 0; r < rounds && ctx.Err() == nil && !rs.abort.Load(); r++ {
		for i := range arms {
			// Rotate which arm goes first, so drift hits every arm alike.
			a := arms[(i+r)%len(arms)]
			seg := segment{deadline: o.duration / time.Duration(rounds*len(arms))}
			if o.orders > 0 {
				per := int64(o.orders / rounds)
				if r == rounds-1 {
					per = int64(o.orders) - per*int64(rounds-1)
				}
				seg = segment{orders: per}
			}
			rs.runSegment(ctx, a, seg)
		}
	}
	wall := time.Since(start)

	// Wait for the relay to publish the run's events.
	if rec != nil {
		var want int64
		for _, a := range arms {
			want += a.committed + a.warm
		}
		deadline := time.Now().Add(o.drainTimeout)
		for rec.count() < want && time.Now().Before(deadline) && base.Err() == nil {
			time.Sleep(20 * time.Millisecond)
		}
		stopRelay()
		relayStopped = true
	}
	stopProgress()
	// The load is over; what follows is the check. (scripts/benchmarks.sh
	// reads the CPU of the client and the server at this line.)
	fmt.Fprintf(inv.stderr, "bento bench: load finished after %.1fs; counting the run's rows in the database\n", wall.Seconds())

	res := benchResult{RunID: rs.runID, Dialect: db.Dialect(), Workers: o.workers, DurationS: round3(wall.Seconds()),
		OrdersTarget: o.orders, ReadMix: o.readMix, Relay: o.relay, Baseline: o.baseline, Floor: o.floor, FailedByCategory: map[string]int64{}}
	if o.baseline {
		res.Rounds = rounds
	}
	if o.relay {
		res.Publisher = inv.cfg.Outbox.Publisher
	}
	if p := rs.abortErr.Load(); p != nil {
		res.Aborted = *p
	}
	u := arms[0]
	ul := percentiles(u.lat)
	res.Committed, res.Failed, res.FailedByCategory = u.committed, u.failed, u.failedBy
	res.Throughput = rate(u.committed, u.elapsed)
	res.P50, res.P95, res.P99, res.Max = ms(ul.p50), ms(ul.p95), ms(ul.p99), ms(ul.max)
	rl := percentiles(u.readLat)
	res.Reads, res.ReadFailed, res.ReadP50, res.ReadP99 = int64(rl.n), u.readFailed, ms(rl.p50), ms(rl.p99)
	for _, a := range arms[1:] {
		l := percentiles(a.lat)
		tp := rate(a.committed, a.elapsed)
		ratio := 0.0
		if tp > 0 {
			ratio = round3(res.Throughput / tp)
		}
		switch a.name {
		case armEnt:
			res.EntThroughput, res.EntP50, res.EntP99, res.EntFailed, res.RatioEnt = tp, ms(l.p50), ms(l.p99), a.failed, ratio
		case armSQL:
			res.SQLThroughput, res.SQLP50, res.SQLP99, res.SQLFailed, res.RatioSQL = tp, ms(l.p50), ms(l.p99), a.failed, ratio
		}
	}
	if rec != nil {
		pl := rec.latencies()
		res.Published, res.PubP50, res.PubP99, res.PubMax = int64(pl.n), ms(pl.p50), ms(pl.p99), ms(pl.max)
	}

	// Count what the database holds.
	counter := newRowCounter(db.Dialect(), db.Driver().DB(), db.Names())
	for _, a := range arms {
		for _, c := range []armCount{
			{Arm: a.name, Acked: a.committed, Ambiguous: a.ambiguous},
			{Arm: warmPrefix + a.name, Acked: a.warm, Ambiguous: a.warmAmbiguous},
		} {
			if c.Arm != a.name && c.Acked == 0 && c.Ambiguous == 0 && o.warmup == 0 {
				continue
			}
			prefix := "bench-" + rs.runID + "-" + c.Arm + "-"
			cctx, cancel := context.WithTimeout(base, 5*time.Minute)
			orders, events, err := counter.count(cctx, prefix, o.relay)
			cancel()
			if err != nil {
				return inv.fail("counting the run's rows", err)
			}
			c.Orders, c.Events = orders, events
			if rec != nil {
				c.Events += rec.publishedOf(c.Arm)
			}
			res.Counts = append(res.Counts, c)
			res.MismatchDetail = append(res.MismatchDetail, checkCounts(c)...)
		}
	}
	res.Mismatch = len(res.MismatchDetail) > 0

	if o.asJSON {
		b, err := json.Marshal(res)
		if err != nil {
			return inv.fail("", err)
		}
		fmt.Fprintf(inv.stdout, "%s\n", b)
	} else {
		printBenchTable(inv.stdout, res, arms)
	}
	for _, a := range arms {
		for _, e := range a.errs {
			fmt.Fprintf(inv.stderr, "bento bench: %s: an error: %s\n", a.name, e)
		}
	}
	if !o.relay {
		var events int64
		for _, c := range res.Counts {
			events += c.Events
		}
		fmt.Fprintf(inv.stderr, "bento bench: the run wrote %d OrderPlaced events to the outbox of %s and published none (no --relay): "+
			"a relay on this database (bento serve, bento relay) will publish them; bento outbox stats counts them\n", events, inv.cfg.DB.URL)
	}
	switch {
	case res.Mismatch:
		fmt.Fprintf(inv.stderr, "bento bench: mismatch between acknowledged and stored rows: %s\n", strings.Join(res.MismatchDetail, "; "))
		return exitFail
	case res.Aborted != "":
		fmt.Fprintf(inv.stderr, "bento bench: aborted: %s\n", res.Aborted)
		return exitFail
	case res.Committed == 0:
		fmt.Fprintf(inv.stderr, "bento bench: no order was committed\n")
		return exitFail
	}
	return exitOK
}

func newRunID() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func rate(n int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return math.Round(float64(n)/d.Seconds()*10) / 10
}

func round3(f float64) float64 { return math.Round(f*1000) / 1000 }

func printBenchTable(w io.Writer, res benchResult, arms []*arm) {
	mode := fmt.Sprintf("%.1fs", res.DurationS)
	if res.OrdersTarget > 0 {
		mode = fmt.Sprintf("%d orders per arm in %.1fs", res.OrdersTarget, res.DurationS)
	}
	fmt.Fprintf(w, "bento bench: %s, %d workers, %s (run %s)\n\n", res.Dialect, res.Workers, mode, res.RunID)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "arm\tcommitted\tfailed\torders/s\tp50 ms\tp95 ms\tp99 ms\tmax ms\t\n")
	for _, a := range arms {
		l := percentiles(a.lat)
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.1f\t%.2f\t%.2f\t%.2f\t%.2f\t\n", armTitle[a.name], a.committed, a.failed,
			rate(a.committed, a.elapsed), ms(l.p50), ms(l.p95), ms(l.p99), ms(l.max))
	}
	tw.Flush()
	if res.Baseline {
		fmt.Fprintf(w, "\nratios (throughput): bento/ent %.3f, bento/sql %.3f (%d interleaved rounds)\n", res.RatioEnt, res.RatioSQL, res.Rounds)
	}
	fmt.Fprintln(w)
	var failed []string
	for _, a := range arms {
		keys := make([]string, 0, len(a.failedBy))
		for k := range a.failedBy {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			failed = append(failed, fmt.Sprintf("%s %s %d", a.name, k, a.failedBy[k]))
		}
	}
	if len(failed) == 0 {
		fmt.Fprintf(w, "failed by category: none\n")
	} else {
		fmt.Fprintf(w, "failed by category: %s\n", strings.Join(failed, ", "))
	}
	if res.ReadMix > 0 {
		fmt.Fprintf(w, "reads: %d (failed %d), p50 %.2f ms, p99 %.2f ms\n", res.Reads, res.ReadFailed, res.ReadP50, res.ReadP99)
	}
	if res.Relay {
		fmt.Fprintf(w, "events published (%s): %d, commit→published p50 %.2f ms, p99 %.2f ms, max %.2f ms\n",
			res.Publisher, res.Published, res.PubP50, res.PubP99, res.PubMax)
	} else {
		fmt.Fprintf(w, "events published: - (no relay; --relay runs one)\n")
	}
	for _, c := range res.Counts {
		arm := c.Arm
		if _, measured := armTitle[arm]; !measured {
			arm += " (warm-up of " + strings.TrimPrefix(arm, warmPrefix) + ", not measured)"
		}
		fmt.Fprintf(w, "database, %s: %d orders, %d OrderPlaced events, %d acknowledged", arm, c.Orders, c.Events, c.Acked)
		if c.Ambiguous > 0 {
			fmt.Fprintf(w, ", %d ambiguous", c.Ambiguous)
		}
		fmt.Fprintln(w)
	}
	if res.Mismatch {
		fmt.Fprintf(w, "MISMATCH: %s\n", strings.Join(res.MismatchDetail, "; "))
	} else {
		fmt.Fprintf(w, "check: every acknowledged order and its event are in the database\n")
	}
	if res.Aborted != "" {
		fmt.Fprintf(w, "ABORTED: %s\n", res.Aborted)
	}
}

// isTerminal reports whether w is a terminal (a character device).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// progress redraws one line on w until the returned stop is called.
func (r *runState) progress(w io.Writer, o *benchOptions, arms int) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	start := time.Now()
	go func() {
		defer close(finished)
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		var lastN int64
		lastT := start
		for {
			select {
			case <-done:
				fmt.Fprint(w, "\r\x1b[K")
				return
			case now := <-t.C:
				c, f := r.committed.Load(), r.failed.Load()
				frac := now.Sub(start).Seconds() / o.duration.Seconds()
				if o.orders > 0 {
					frac = float64(c+f) / float64(o.orders*arms)
				}
				frac = max(0, min(frac, 1))
				const width = 30
				bar := strings.Repeat("=", int(frac*width)) + strings.Repeat(" ", width-int(frac*width))
				cur := ""
				if p := r.current.Load(); p != nil {
					cur = *p
				}
				inst := float64(c-lastN) / now.Sub(lastT).Seconds()
				lastN, lastT = c, now
				fmt.Fprintf(w, "\r\x1b[K[%s] %3.0f%% %s: %d committed, %d failed, %.0f/s", bar, frac*100, cur, c, f, inst)
			}
		}
	}()
	return func() { close(done); <-finished }
}

// pubRecorder wraps the relay's publisher: for each of the run's events
// the broker acknowledged it records the time from occurred_at to the ack.
type pubRecorder struct {
	inner  outbox.Publisher
	marker []byte // bench-<run>- in the payload's customer
	mu     sync.Mutex
	arms   map[uuid.UUID]string
	lat    []time.Duration
}

func (p *pubRecorder) Publish(ctx context.Context, msgs []outbox.Message) []error {
	res := p.inner.Publish(ctx, msgs)
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, m := range msgs {
		if i >= len(res) || res[i] != nil || m.Type != "OrderPlaced" {
			continue
		}
		j := bytes.Index(m.Payload, p.marker)
		if j < 0 {
			continue
		}
		rest := m.Payload[j+len(p.marker):]
		k := bytes.IndexByte(rest, '-')
		if k < 0 {
			continue
		}
		if _, dup := p.arms[m.ID]; dup {
			continue
		}
		p.arms[m.ID] = string(rest[:k])
		p.lat = append(p.lat, now.Sub(m.OccurredAt))
	}
	return res
}

func (p *pubRecorder) count() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return int64(len(p.arms))
}

func (p *pubRecorder) publishedOf(a string) int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	var n int64
	for _, v := range p.arms {
		if v == a {
			n++
		}
	}
	return n
}

func (p *pubRecorder) latencies() latencies {
	p.mu.Lock()
	defer p.mu.Unlock()
	return percentiles(append([]time.Duration(nil), p.lat...))
}

// rowCounter counts a run's rows on the plain database/sql pool.
type rowCounter struct {
	db                          *sql.DB
	orders, events, unpublished string
}

func newRowCounter(d string, db *sql.DB, n outbox.Names) *rowCounter {
	q, ph, text := `"`, "?", "TEXT"
	switch d {
	case dialect.MySQL:
		q, text = "`", "CHAR"
	case dialect.Postgres:
		ph = "$1"
	}
	c := &rowCounter{db: db, orders: "SELECT COUNT(*) FROM orders WHERE customer LIKE " + ph}
	match := "o.aggregatetype = 'Order' AND o.aggregateid = CAST(r.id AS " + text + ") AND o." + q + "type" + q + " = 'OrderPlaced'"
	c.unpublished = " AND o.status <> '" + outbox.StatusPublished + "'"
	// One index lookup per order, a plan no stale statistics can spoil
	// (right after a run they are: a join was planned as a nested loop
	// scanning every order once per outbox row).
	sum := "COALESCE(SUM((SELECT COUNT(*) FROM " + q + n.Outbox + q + " o WHERE " + match + "%s)), 0)"
	if d == dialect.Postgres {
		sum += "::bigint"
	}
	c.events = "SELECT " + sum + " FROM orders r WHERE r.customer LIKE " + ph
	return c
}

// count returns the orders whose customer starts with prefix and their
// OrderPlaced outbox rows; with published false it leaves out the rows
// marked published (the relay's, counted at the publisher).
func (c *rowCounter) count(ctx context.Context, prefix string, relay bool) (orders, events int64, err error) {
	like := prefix + "%"
	if err := c.db.QueryRowContext(ctx, c.orders, like).Scan(&orders); err != nil {
		return 0, 0, fmt.Errorf("counting orders: %w", err)
	}
	extra := ""
	if relay {
		extra = c.unpublished
	}
	q := fmt.Sprintf(c.events, extra)
	if err := c.db.QueryRowContext(ctx, q, like).Scan(&events); err != nil {
		return 0, 0, fmt.Errorf("counting outbox rows: %w", err)
	}
	return orders, events, nil
}

// outboxSQL holds the statements outbox/write.go sends for one event
// (outbox.WriteStatements): on PostgreSQL the sequence upsert and the
// insert in one statement, elsewhere the upsert and the insert.
type outboxSQL struct {
	dialect string
	outbox.Statements
}

func newOutboxSQL(d string, n outbox.Names) outboxSQL {
	return outboxSQL{dialect: d, Statements: outbox.WriteStatements(d, n)}
}

// execQuerier is what a transaction of either baseline offers.
type execQuerier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// write inserts the OrderPlaced outbox row of order id, taking the next
// number of its aggregate's sequence.
func (s outboxSQL) write(ctx context.Context, tx execQuerier, id int, customer string) error {
	ev := shop.OrderPlaced{OrderID: id, Customer: customer, TotalCents: benchTotal, Lines: []shop.Line{benchLine}}
	payload, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	eid, err := uuid.NewV7()
	if err != nil {
		return err
	}
	aggID, now := fmt.Sprint(id), time.Now().UTC()
	switch s.dialect {
	case dialect.Postgres:
		_, err := tx.ExecContext(ctx, s.Insert, "Order", aggID, eid.String(), ev.EventType(), string(payload), nil, now, now.UnixMicro())
		return err
	case dialect.MySQL:
		res, err := tx.ExecContext(ctx, s.Sequence, "Order", aggID, 1)
		if err != nil {
			return err
		}
		seq, err := res.LastInsertId()
		if err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, s.Insert, eid.String(), "Order", aggID, ev.EventType(), string(payload), seq, nil, now, now.UnixMicro())
		return err
	default:
		rows, err := tx.QueryContext(ctx, s.Sequence, "Order", aggID, 1)
		if err != nil {
			return err
		}
		var seq int64
		if rows.Next() {
			err = rows.Scan(&seq)
		}
		if cerr := rows.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, s.Insert, eid.String(), "Order", aggID, ev.EventType(), string(payload), seq, nil, now, now.UnixMicro())
		return err
	}
}

var benchTotal = int64(benchLine.Quantity) * benchLine.UnitPriceCents

// entBaseline places an order the way a team would by hand with ent and
// no framework: a plain ent client over entsql.OpenDB on the same *sql.DB,
// client.Tx, the order, its line, the sequence upsert and the outbox row.
type entBaseline struct {
	client *ent.Client
	out    outboxSQL
}

func newEntBaseline(d string, db *sql.DB, n outbox.Names) *entBaseline {
	return &entBaseline{client: ent.NewClient(ent.Driver(entsql.OpenDB(d, db))), out: newOutboxSQL(d, n)}
}

func (b *entBaseline) place(ctx context.Context, customer string) (id int, err error) {
	tx, err := b.client.Tx(ctx)
	if err != nil {
		return 0, err
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	o, err := tx.Order.Create().SetCustomer(customer).SetTotalCents(benchTotal).Save(ctx)
	if err != nil {
		return 0, err
	}
	if _, err := tx.OrderLine.Create().SetOrder(o).SetSku(benchLine.SKU).SetQuantity(benchLine.Quantity).
		SetUnitPriceCents(benchLine.UnitPriceCents).Save(ctx); err != nil {
		return 0, err
	}
	if err := b.out.write(ctx, tx, o.ID, customer); err != nil {
		return 0, err
	}
	return o.ID, tx.Commit()
}

// sqlBaseline places an order with hand-written SQL on database/sql.
type sqlBaseline struct {
	db               *sql.DB
	dialect          string
	order, line      string
	orderReturningID bool
	out              outboxSQL
}

func newSQLBaseline(d string, db *sql.DB, n outbox.Names) *sqlBaseline {
	b := &sqlBaseline{db: db, dialect: d, out: newOutboxSQL(d, n)}
	switch d {
	case dialect.Postgres:
		b.order = `INSERT INTO orders (version, customer, status, total_cents, created_at, updated_at) VALUES (1, $1, 'pending', $2, $3, $3) RETURNING id`
		b.line = `INSERT INTO order_lines (sku, quantity, unit_price_cents, order_lines) VALUES ($1, $2, $3, $4)`
		b.orderReturningID = true
	default:
		b.order = "INSERT INTO orders (version, customer, status, total_cents, created_at, updated_at) VALUES (1, ?, 'pending', ?, ?, ?)"
		b.line = "INSERT INTO order_lines (sku, quantity, unit_price_cents, order_lines) VALUES (?, ?, ?, ?)"
	}
	return b
}

func (b *sqlBaseline) place(ctx context.Context, customer string) (id int, err error) {
	tx, err := b.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, err
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	now := time.Now()
	if b.orderReturningID {
		if err := tx.QueryRowContext(ctx, b.order, customer, benchTotal, now).Scan(&id); err != nil {
			return 0, err
		}
	} else {
		res, err := tx.ExecContext(ctx, b.order, customer, benchTotal, now, now)
		if err != nil {
			return 0, err
		}
		last, err := res.LastInsertId()
		if err != nil {
			return 0, err
		}
		id = int(last)
	}
	if _, err := tx.ExecContext(ctx, b.line, benchLine.SKU, benchLine.Quantity, benchLine.UnitPriceCents, id); err != nil {
		return 0, err
	}
	if err := b.out.write(ctx, tx, id, customer); err != nil {
		return 0, err
	}
	return id, tx.Commit()
}
