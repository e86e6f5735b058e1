package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
)

// meta is the first line of a raw file: where and how the run was made.
type meta struct {
	Suite   string `json:"suite"` // "meta"
	Date    string `json:"date"`
	Commit  string `json:"commit"`
	Machine string `json:"machine"`
	Go      string `json:"go"`
	Server  string `json:"server"`
	NATS    string `json:"nats"`
	Quick   bool   `json:"quick"`
	Rounds  int    `json:"rounds"`
	Command string `json:"command"`
	// Settings are the run's sizes as the script chose them, shown as
	// they are.
	Settings string `json:"settings"`
}

// run is a parsed raw file.
type run struct {
	meta    meta
	records []record
}

// readRaw reads a raw file: a meta line, then one record per line.
func readRaw(r io.Reader) (run, error) {
	var rn run
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 1<<20), 16<<20)
	for s.Scan() {
		line := strings.TrimSpace(s.Text())
		if line == "" {
			continue
		}
		var probe struct {
			Suite string `json:"suite"`
		}
		if err := json.Unmarshal([]byte(line), &probe); err != nil {
			return rn, fmt.Errorf("raw line %q: %w", line, err)
		}
		if probe.Suite == "meta" {
			if err := json.Unmarshal([]byte(line), &rn.meta); err != nil {
				return rn, err
			}
			continue
		}
		var rec record
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			return rn, err
		}
		rn.records = append(rn.records, rec)
	}
	if err := s.Err(); err != nil {
		return rn, err
	}
	if rn.meta.Suite == "" {
		return rn, errors.New("the raw file has no meta line")
	}
	return rn, nil
}

// of returns the successful records of a suite and arm (workers 0: any),
// in round order.
func (rn run) of(suite, arm string, workers int) []record {
	var out []record
	for _, r := range rn.records {
		if r.Suite == suite && r.Arm == arm && (workers == 0 || r.Workers == workers) && r.Error == "" {
			out = append(out, r)
		}
	}
	slices.SortFunc(out, func(a, b record) int { return a.Round - b.Round })
	return out
}

// failures lists the records that failed.
func (rn run) failures() []string {
	var out []string
	for _, r := range rn.records {
		if r.Error != "" {
			out = append(out, fmt.Sprintf("%s/%s round %d (workers %d): %s", r.Suite, r.Arm, r.Round, r.Workers, r.Error))
		}
	}
	return out
}

// stat is the median and range of a cell over the rounds.
type stat struct {
	med, lo, hi float64
	n           int
}

func summarize(v []float64) stat {
	if len(v) == 0 {
		return stat{}
	}
	s := slices.Clone(v)
	slices.Sort(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return stat{med, s[0], s[len(s)-1], len(s)}
}

// each applies f to every record.
func each(rs []record, f func(record) float64) []float64 {
	out := make([]float64, 0, len(rs))
	for _, r := range rs {
		out = append(out, f(r))
	}
	return out
}

// detailOf returns the number key of every record's detail (the
// command's own JSON report) that has it.
func detailOf(rs []record, key string) []float64 {
	var out []float64
	for _, r := range rs {
		var d map[string]any
		if json.Unmarshal(r.Detail, &d) != nil {
			continue
		}
		if v, ok := d[key].(float64); ok {
			out = append(out, v)
		}
	}
	return out
}

// paired divides a's figure by b's round by round (rounds both have).
func paired(a, b []record, f func(record) float64) []float64 {
	var out []float64
	for _, x := range a {
		for _, y := range b {
			if x.Round == y.Round && f(y) > 0 {
				out = append(out, f(x)/f(y))
			}
		}
	}
	return out
}

func perTx(cpu func(record) float64) func(record) float64 {
	return func(r record) float64 {
		if r.Transactions == 0 {
			return 0
		}
		return cpu(r) / float64(r.Transactions) * 1e6
	}
}

var (
	tput      = func(r record) float64 { return r.Throughput }
	p99       = func(r record) float64 { return r.P99MS }
	clientCPU = perTx(func(r record) float64 { return r.ClientCPUS })
	serverCPU = perTx(func(r record) float64 { return r.ServerCPUS })
)

// format helpers

// group formats n with thousands separators and no decimals.
func group(n float64) string {
	neg := n < 0
	if neg {
		n = -n
	}
	s := fmt.Sprintf("%d", int64(n+0.5))
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	if neg {
		s = "-" + s
	}
	return s
}

// show formats a stat with f: the median in bold and the range, or the
// one value of a single round.
func show(s stat, f func(float64) string) string {
	switch {
	case s.n == 0:
		return "not measured"
	case s.n == 1:
		return f(s.med)
	}
	return fmt.Sprintf("**%s** (%s–%s)", f(s.med), f(s.lo), f(s.hi))
}

func ratio(v float64) string  { return fmt.Sprintf("%.2f×", v) }
func ratio3(v float64) string { return fmt.Sprintf("%.3f", v) }
func msec(v float64) string {
	if v >= 100 {
		return group(v)
	}
	return fmt.Sprintf("%.1f", v)
}
func micro(v float64) string { return fmt.Sprintf("%.0f", v) }

// percent formats a share (0.82) as a percentage (82%).
func percent(v float64) string { return fmt.Sprintf("%.0f%%", 100*v) }

// target is one row of the targets table.
type target struct {
	name, command, baseline string
	value                   stat
	format                  func(float64) string
	atMost                  bool // met when value ≤ limit, else ≥
	limit                   float64
	reported                bool // no target: the figure is reported, not judged
}

func (t target) verdict(quick bool) string {
	switch {
	case t.value.n == 0:
		return "not measured"
	case t.reported:
		return "reported"
	case quick:
		return "smoke run: no verdict"
	case t.atMost && t.value.med <= t.limit, !t.atMost && t.value.med >= t.limit:
		return "met"
	}
	return "**missed**"
}

// The markers of the generated part of BENCHMARKS.md.
const (
	beginMarker = "<!-- bench-report:begin (generated by scripts/benchmarks.sh; do not edit) -->"
	endMarker   = "<!-- bench-report:end -->"
)

// splice puts body between the markers of doc.
func splice(doc, body string) (string, error) {
	i, j := strings.Index(doc, beginMarker), strings.Index(doc, endMarker)
	if i < 0 || j < i {
		return "", fmt.Errorf("no %q … %q markers", beginMarker, endMarker)
	}
	return doc[:i+len(beginMarker)] + "\n" + body + doc[j:], nil
}

// armNames are the arms' descriptions in the tables.
var armNames = map[string]string{
	"uow":               "Bento unit of work (`bento bench`)",
	"pgx":               "Go floor: bare pgx, the same rows in the same round trip (`bento bench --floor`)",
	"pgbench-same":      "pgbench, the same statements and round trips (`place_order.sql`)",
	"pgbench-1rt":       "pgbench, the same rows in one round trip (`place_order_1rt.sql`)",
	"bento-inproc":      "Bento relay, woken in process",
	"watermill-1s":      "Watermill forwarder, 1 s poll, batch 100 (its defaults)",
	"watermill-10ms":    "Watermill forwarder, 10 ms poll, batch 100",
	"watermill-10ms-1k": "Watermill forwarder, 10 ms poll, batch 1,000",
	"bento":             "Bento relay",
	"watermill":         "Watermill forwarder",
}

// watermillTuned are the tuned Watermill arms; the best of them (lowest
// median p99) is "Watermill at its best".
var watermillTuned = []string{"watermill-10ms", "watermill-10ms-1k"}

// commandOf is the command of an arm's first record.
func commandOf(rs []record) string {
	if len(rs) == 0 {
		return "—"
	}
	return "`" + rs[0].Command + "`"
}

// renderTables writes the Markdown of the generated part.
func renderTables(rn run, plots []string) string {
	var b strings.Builder
	m := rn.meta
	for _, r := range rn.records { // the NATS server's version, as relaybench saw it
		var d struct {
			NATS string `json:"nats_server"`
		}
		if json.Unmarshal(r.Detail, &d) == nil && d.NATS != "" {
			m.NATS = d.NATS + " at " + m.NATS
			break
		}
	}
	kind := "a full run"
	if m.Quick {
		kind = "a **QUICK smoke run** (seconds per arm, to check the tooling: not a measurement, no verdicts)"
	}
	fmt.Fprintf(&b, "Generated by `%s` from %s: %s, commit %s, %s, %s, %s, NATS %s; %d round(s) unless the settings say otherwise, arms alternating. %s\n",
		m.Command, kind, m.Date, m.Commit, m.Machine, m.Go, m.Server, m.NATS, m.Rounds, m.Settings)
	fmt.Fprintf(&b, "Raw results: [docs/benchmarks/report.jsonl](docs/benchmarks/report.jsonl). Median over the rounds, range in brackets.\n")

	w := 16
	uow, same, one := rn.of("ceiling", "uow", w), rn.of("ceiling", "pgbench-same", w), rn.of("ceiling", "pgbench-1rt", w)
	floor := rn.of("ceiling", "pgx", w)
	lat := map[string][]record{}
	for _, a := range append([]string{"bento-inproc", "watermill-1s"}, watermillTuned...) {
		lat[a] = rn.of("latency", a, 0)
	}
	best := ""
	for _, a := range watermillTuned {
		if len(lat[a]) > 0 && (best == "" || summarize(each(lat[a], p99)).med < summarize(each(lat[best], p99)).med) {
			best = a
		}
	}
	bentoBurn, wmBurn := rn.of("burndown", "bento", 0), rn.of("burndown", "watermill", 0)

	targets := []target{
		{name: "Unit of work ≥ 0.85× pgbench with the same statements and round trips, 16 workers", command: commandOf(uow),
			baseline: commandOf(same), value: summarize(paired(uow, same, tput)), format: ratio3, limit: 0.85},
		{name: "Unit of work ≥ 0.60× the one-round-trip limit, 16 workers", command: commandOf(uow),
			baseline: commandOf(one), value: summarize(paired(uow, one, tput)), format: ratio3, limit: 0.60},
		{name: "Server CPU per order ≤ 1.3× the one-round-trip limit's", command: commandOf(uow),
			baseline: commandOf(one), value: summarize(paired(uow, one, serverCPU)), format: ratio3, atMost: true, limit: 1.3},
		{name: "Client CPU per order ≤ 130 µs, 16 workers (the benchmark process's, warm-up included)", command: commandOf(uow),
			baseline: "— (µs per order)", value: summarize(each(uow, clientCPU)), format: micro, atMost: true, limit: 130},
	}
	if len(floor) > 0 {
		targets = append(targets,
			target{name: "The Go floor (a bare pgx pool, the same rows in the same round trip) ÷ pgbench with the same statements and round trips, 16 workers: how close any Go client on pgx comes",
				command: commandOf(floor), baseline: commandOf(same), value: summarize(paired(floor, same, tput)), format: ratio3, reported: true},
			target{name: "Unit of work ÷ the Go floor, 16 workers: what ent, database/sql and Bento cost", command: commandOf(uow),
				baseline: commandOf(floor), value: summarize(paired(uow, floor, tput)), format: ratio3, reported: true},
			target{name: "Client CPU per order, unit of work ÷ the Go floor", command: commandOf(uow),
				baseline: commandOf(floor), value: summarize(paired(uow, floor, clientCPU)), format: ratio3, reported: true})
	}
	targets = append(targets, []target{
		{name: "p99 commit→published ≤ 1/10 of Watermill's at its defaults (1 s poll)", command: commandOf(lat["bento-inproc"]),
			baseline: commandOf(lat["watermill-1s"]), value: summarize(paired(lat["bento-inproc"], lat["watermill-1s"], p99)), format: ratio3, atMost: true, limit: 0.1},
	}...)
	if best != "" {
		targets = append(targets, target{name: "p99 commit→published ≤ 1/10 of Watermill's at its best setting measured (" + armNames[best] + ")",
			command: commandOf(lat["bento-inproc"]), baseline: commandOf(lat[best]),
			value: summarize(paired(lat["bento-inproc"], lat[best], p99)), format: ratio3, atMost: true, limit: 0.1})
	}
	targets = append(targets,
		target{name: "p99 commit→published ≤ 20 ms", command: commandOf(lat["bento-inproc"]), baseline: "— (ms)",
			value: summarize(each(lat["bento-inproc"], p99)), format: msec, atMost: true, limit: 20},
		target{name: "Relay burn-down ≥ 3× Watermill's forwarder, batch 100", command: commandOf(bentoBurn), baseline: commandOf(wmBurn),
			value: summarize(paired(bentoBurn, wmBurn, tput)), format: ratio, limit: 3},
		target{name: "Relay burn-down ≥ 10,000 events/s, batch 100", command: commandOf(bentoBurn), baseline: "— (events/s)",
			value: summarize(each(bentoBurn, tput)), format: group, limit: 10000},
	)
	b.WriteString("\n**Targets** (PostgreSQL; ratios taken round by round, the two arms side by side):\n\n")
	b.WriteString("| Target | Command | Baseline | Measured | Verdict |\n|---|---|---|---|---|\n")
	for _, t := range targets {
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", t.name, t.command, t.baseline, show(t.value, t.format), t.verdict(m.Quick))
	}

	b.WriteString("\n**Write ceilings, 16 workers on 16 connections** (CPU per transaction from /proc, warm-up included; " +
		"client: the benchmark process, server: every PostgreSQL process):\n\n")
	b.WriteString("| Arm | transactions/s | client CPU µs/tx | server CPU µs/tx | client + server µs/tx |\n|---|---|---|---|---|\n")
	for _, a := range []struct {
		name string
		rs   []record
	}{{"uow", uow}, {"pgx", floor}, {"pgbench-same", same}, {"pgbench-1rt", one}} {
		if len(a.rs) == 0 {
			continue
		}
		total := func(r record) float64 { return clientCPU(r) + serverCPU(r) }
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", armNames[a.name], show(summarize(each(a.rs, tput)), group),
			show(summarize(each(a.rs, clientCPU)), micro), show(summarize(each(a.rs, serverCPU)), micro), show(summarize(each(a.rs, total)), micro))
	}

	workers := workerCounts(rn)
	if len(workers) > 0 {
		b.WriteString("\n**Throughput against workers** (transactions/s, then client / server CPU µs per transaction; connections = workers):\n\n")
		b.WriteString("| workers | " + armNames["uow"] + " | Go floor, bare pgx | pgbench, same round trips | pgbench, one round trip | unit of work ÷ same |\n|---|---|---|---|---|---|\n")
		cell := func(rs []record) string {
			if len(rs) == 0 {
				return "not measured"
			}
			return show(summarize(each(rs, tput)), group) + " · " + micro(summarize(each(rs, clientCPU)).med) + " / " + micro(summarize(each(rs, serverCPU)).med)
		}
		for _, n := range workers {
			u, f, s, o := rn.of("workers", "uow", n), rn.of("workers", "pgx", n), rn.of("workers", "pgbench-same", n), rn.of("workers", "pgbench-1rt", n)
			fmt.Fprintf(&b, "| %d | %s | %s | %s | %s | %s |\n", n, cell(u), cell(f), cell(s), cell(o), show(summarize(paired(u, s, tput)), ratio3))
		}
	}

	b.WriteString("\n**Commit→published** (an order and its event committed at a fixed rate, latency to a JetStream consumer, ms; " +
		"beside it the p99 of the producer's own COMMITs and the share of the machine's CPU in use while committing, " +
		"which say how loaded the database and the machine were; then, for Bento's relay, per batch: how long the broker took " +
		"to acknowledge the batch's messages (p99 and max), and the p99 of the rest of the batch, its claim, mark and COMMIT. " +
		"An event committed while a batch runs waits for that batch and its own):\n\n")
	b.WriteString("| Arm | p50 | p99 | max | events committed/s | producer COMMIT p99 | machine CPU busy | batch: broker acks p99 | batch: broker acks max | batch: claim + mark p99 |\n" +
		"|---|---|---|---|---|---|---|---|---|---|\n")
	for _, a := range append([]string{"bento-inproc", "watermill-1s"}, watermillTuned...) {
		rs := lat[a]
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", armNames[a], show(summarize(each(rs, func(r record) float64 { return r.P50MS })), msec),
			show(summarize(each(rs, p99)), msec), show(summarize(each(rs, func(r record) float64 { return r.MaxMS })), msec),
			show(summarize(each(rs, tput)), group), show(summarize(detailOf(rs, "commit_p99_ms")), msec),
			show(summarize(detailOf(rs, "cpu_busy")), percent), show(summarize(detailOf(rs, "publish_p99_ms")), msec),
			show(summarize(detailOf(rs, "publish_max_ms")), msec), show(summarize(detailOf(rs, "relay_db_p99_ms")), msec))
	}

	b.WriteString("\n**Relay burn-down against Watermill** (events pending, then the relay runs until the stream holds them all):\n\n")
	b.WriteString("| Arm | events/s |\n|---|---|\n")
	for _, a := range []struct {
		name string
		rs   []record
	}{{"bento", bentoBurn}, {"watermill", wmBurn}} {
		fmt.Fprintf(&b, "| %s (%s) | %s |\n", armNames[a.name], commandOf(a.rs), show(summarize(each(a.rs, tput)), group))
	}

	renderMicro(&b, rn)

	if f := rn.failures(); len(f) > 0 {
		b.WriteString("\n**Failed runs** (left out of the figures above):\n\n")
		for _, s := range f {
			fmt.Fprintf(&b, "- %s\n", s)
		}
	}
	if len(plots) > 0 {
		b.WriteString("\n")
		for _, p := range plots {
			fmt.Fprintf(&b, "![%s](%s)\n", strings.TrimSuffix(p[strings.LastIndexByte(p, '/')+1:], ".png"), p)
		}
	}
	return b.String()
}

// workerCounts are the worker counts of the workers suite, ascending.
func workerCounts(rn run) []int {
	var ws []int
	for _, r := range rn.records {
		if r.Suite == "workers" && !slices.Contains(ws, r.Workers) {
			ws = append(ws, r.Workers)
		}
	}
	slices.Sort(ws)
	return ws
}

// render reads the raw files and writes the tables into the Markdown file
// and the plots into the plot directory.
func render(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("render", flag.ContinueOnError)
	fs.SetOutput(stderr)
	raw := fs.String("raw", "docs/benchmarks/report.jsonl", "raw results of scripts/benchmarks.sh")
	shapes := fs.String("shapes", "docs/benchmarks/relay-shapes.txt", "raw output of scripts/relay-shapes.sh (for the burn-down plot; empty: none)")
	into := fs.String("into", "BENCHMARKS.md", "Markdown file with the bench-report markers")
	dir := fs.String("plots", "docs/benchmarks", "directory for the plots")
	link := fs.String("link", "docs/benchmarks", "the plot directory as the Markdown file links it")
	if err := fs.Parse(args); err != nil {
		return err
	}
	f, err := os.Open(*raw)
	if err != nil {
		return err
	}
	rn, err := readRaw(f)
	f.Close()
	if err != nil {
		return fmt.Errorf("%s: %w", *raw, err)
	}
	plots, err := writePlots(rn, *shapes, *dir)
	if err != nil {
		return err
	}
	for i, p := range plots {
		plots[i] = *link + "/" + p
	}
	doc, err := os.ReadFile(*into)
	if err != nil {
		return err
	}
	out, err := splice(string(doc), renderTables(rn, plots))
	if err != nil {
		return fmt.Errorf("%s: %w", *into, err)
	}
	return os.WriteFile(*into, []byte(out), 0o644)
}

// microRule is a target of a go test benchmark: its metric against a
// limit, for the benchmark named prefix, or every benchmark under it when
// prefix ends with a slash.
type microRule struct {
	prefix, metric, target string
	atMost                 bool
	limit                  float64
}

var microRules = []microRule{
	{"BenchmarkWrapperOverhead/postgres/create", "ratio", "≤ 1.03× plain ent", true, 1.03},
	{"BenchmarkWrapperOverhead/postgres/read", "ratio", "≤ 1.03× plain ent", true, 1.03},
	{"BenchmarkWrapperOverhead/postgres/tx", "ratio", "≤ 1.03× plain ent", true, 1.03},
	{"BenchmarkMetricsOverhead/insert", "ratio", "≤ 1.02× without metrics", true, 1.02},
	{"BenchmarkUoWPlaceOrder/postgres/", "ratio", "≥ 0.95× hand-written ent", false, 0.95},
	{"BenchmarkPolicyDoSuccess", "allocs/op", "0 allocations", true, 0},
	{"BenchmarkMiddlewareSuccess", "allocs/op", "0 allocations", true, 0},
	{"BenchmarkSQLiteWriters/", "busy", "0 SQLITE_BUSY", true, 0},
}

// renderMicro writes the table of the go test benchmarks (suite micro):
// every ratio they report, and the metrics with a target.
func renderMicro(b *strings.Builder, rn run) {
	type row struct {
		name, metric string
		values       []float64
		rule         *microRule
	}
	var rows []row
	var cmds []string
	for _, r := range rn.records {
		if r.Suite != "micro" || r.Error != "" {
			continue
		}
		var m goBench
		if json.Unmarshal(r.Detail, &m) != nil {
			continue
		}
		cmds = append(cmds, "`"+r.Command+"`")
		names := make([]string, 0, len(m))
		for n := range m {
			names = append(names, n)
		}
		slices.Sort(names)
		busy := row{name: "BenchmarkSQLiteWriters (every configuration)", metric: "busy"}
		for _, n := range names {
			var rule *microRule
			for i := range microRules {
				if p := microRules[i].prefix; n == p || strings.HasSuffix(p, "/") && strings.HasPrefix(n, p) {
					rule = &microRules[i]
					break
				}
			}
			switch {
			case strings.HasPrefix(n, "BenchmarkSQLiteWriters"):
				busy.values = append(busy.values, m[n]["busy"]...)
				busy.rule = rule
			case rule != nil:
				rows = append(rows, row{n, rule.metric, m[n][rule.metric], rule})
			case len(m[n]["ratio"]) > 0:
				rows = append(rows, row{n, "ratio", m[n]["ratio"], nil})
			}
		}
		if len(busy.values) > 0 {
			s := slices.Clone(busy.values)
			busy.values = []float64{slices.Max(s)}
			rows = append(rows, busy)
		}
	}
	if len(rows) == 0 {
		return
	}
	b.WriteString("\n**Micro-benchmarks** (`go test -bench`, each side by side with its baseline inside the benchmark; median and range over the `-count` runs): " +
		strings.Join(cmds, ", ") + "\n\n| Benchmark | metric | measured | target | verdict |\n|---|---|---|---|---|\n")
	for _, r := range rows {
		st := summarize(r.values)
		f := ratio3
		if r.metric != "ratio" {
			f = func(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }
		}
		goal, verdict := "—", "reported"
		if r.rule != nil {
			t := target{value: st, atMost: r.rule.atMost, limit: r.rule.limit}
			goal, verdict = r.rule.target, t.verdict(rn.meta.Quick)
		}
		fmt.Fprintf(b, "| %s | %s | %s | %s | %s |\n", r.name, r.metric, show(st, f), goal, verdict)
	}
}
