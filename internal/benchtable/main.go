// Command benchtable turns the raw output of scripts/relay-shapes.sh (Go
// benchmark lines of BenchmarkRelayShapes) into the Markdown tables of
// BENCHMARKS.md, with the median and range over the rounds and a verdict
// against each target computed from the figures, and writes them between
// the relay-shapes markers:
//
//	go run ./internal/benchtable -shapes docs/benchmarks/relay-shapes.txt -into BENCHMARKS.md
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

func main() {
	shapes := flag.String("shapes", "", "raw output of scripts/relay-shapes.sh")
	into := flag.String("into", "", "Markdown file whose relay-shapes markers get the tables")
	flag.Parse()
	if err := run(*shapes, *into); err != nil {
		fmt.Fprintln(os.Stderr, "benchtable:", err)
		os.Exit(1)
	}
}

func run(shapes, into string) error {
	f, err := os.Open(shapes)
	if err != nil {
		return err
	}
	defer f.Close()
	raw, err := io.ReadAll(f)
	if err != nil {
		return err
	}
	rs, header, err := parse(bytes.NewReader(raw))
	if err != nil {
		return err
	}
	ls, err := parseLatency(bytes.NewReader(raw))
	if err != nil {
		return err
	}
	doc, err := os.ReadFile(into)
	if err != nil {
		return err
	}
	out, err := splice(string(doc), render(rs, header)+renderLatency(ls))
	if err != nil {
		return fmt.Errorf("%s: %w", into, err)
	}
	return os.WriteFile(into, []byte(out), 0o644)
}

// result is one benchmark line.
type result struct {
	backlog         int  // 0: the default run
	scale           bool // a line of the scale-out part
	round           int  // the round it ran in (0: the file names none)
	dialect, shape  string
	relays          int
	eventsPerSecond float64
	cpuPerEvent     float64
}

// roundLine is a comment line of the raw file that starts a round.
var roundLine = regexp.MustCompile(`^# .*\bround (\d+)\b`)

var line = regexp.MustCompile(`^(?:backlog=(\d+) |(scale) )?BenchmarkRelayShapes/([^/]+)/([^/]+)/relays=(\d+)(?:-\d+)?\s+\d+\s+\d+ ns/op\s+([\d.]+) cpu-µs/event\s+([\d.]+) events/s`)

// parse reads the benchmark lines and the header line of each run in the
// file (an appended run adds its own).
func parse(r io.Reader) ([]result, string, error) {
	var rs []result
	header := ""
	round := 0
	s := bufio.NewScanner(r)
	for s.Scan() {
		t := s.Text()
		if m := roundLine.FindStringSubmatch(t); m != nil {
			round, _ = strconv.Atoi(m[1])
		}
		if strings.HasPrefix(t, "# scripts/") {
			if header != "" {
				header += "; then "
			}
			header += strings.TrimPrefix(t, "# ")
		}
		m := line.FindStringSubmatch(t)
		if m == nil {
			continue
		}
		res := result{scale: m[2] != "", dialect: m[3], shape: m[4], round: round}
		res.backlog, _ = strconv.Atoi(m[1])
		res.relays, _ = strconv.Atoi(m[5])
		res.cpuPerEvent, _ = strconv.ParseFloat(m[6], 64)
		res.eventsPerSecond, _ = strconv.ParseFloat(m[7], 64)
		rs = append(rs, res)
	}
	if len(rs) == 0 {
		return nil, "", fmt.Errorf("no BenchmarkRelayShapes lines")
	}
	return rs, header, s.Err()
}

// latency is one relaybench latency run: "latency aggregates=N {json}".
type latency struct {
	aggregates int
	P50        float64 `json:"p50_ms"`
	P99        float64 `json:"p99_ms"`
	Max        float64 `json:"max_ms"`
	StoredP99  float64 `json:"stored_p99_ms"`
	CPUBusy    float64 `json:"cpu_busy"`
	Committed  int     `json:"committed"`
	Missing    int     `json:"missing"`
}

var latencyLine = regexp.MustCompile(`^latency aggregates=(\d+) (\{.*\})\s*$`)

// parseLatency reads the latency lines of the file; a line whose run
// failed (no JSON) is an error, not a missing row.
func parseLatency(r io.Reader) ([]latency, error) {
	var ls []latency
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for s.Scan() {
		t := s.Text()
		if !strings.HasPrefix(t, "latency ") {
			continue
		}
		m := latencyLine.FindStringSubmatch(t)
		if m == nil {
			return nil, fmt.Errorf("a latency run printed no result: %q", t)
		}
		var l latency
		if err := json.Unmarshal([]byte(m[2]), &l); err != nil {
			return nil, fmt.Errorf("latency line %q: %w", t, err)
		}
		l.aggregates, _ = strconv.Atoi(m[1])
		ls = append(ls, l)
	}
	return ls, s.Err()
}

// stat is the median and range of one cell.
type stat struct{ med, lo, hi float64 }

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
	return stat{med, s[0], s[len(s)-1]}
}

func (s stat) String() string {
	if s.lo == s.hi {
		return group(s.med)
	}
	return fmt.Sprintf("**%s** (%s–%s)", group(s.med), group(s.lo), group(s.hi))
}

// group formats n with thousands separators.
func group(n float64) string {
	s := strconv.FormatInt(int64(n+0.5), 10)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

var shapeOrder = []string{"uniform", "aggregates=1000", "aggregates=20", "aggregates=1", "zipf=1.1"}

var shapeName = map[string]string{
	"uniform": "1 per aggregate (100,000 aggregates)", "aggregates=1000": "1,000 aggregates", "aggregates=20": "20 aggregates",
	"aggregates=1": "1 aggregate", "zipf=1.1": "Zipf s = 1.1 over 10,000",
}

func render(rs []result, header string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Generated by `scripts/relay-shapes.sh` from one run (%s). 100,000 pending events, batch 100, private\nJetStream; median over the rounds, range in brackets. CPU is the benchmark process's (relays,\npublisher, NATS client) per event; the servers' is not in it. More relays ÷ one is taken round by\nround (each round runs both, one after the other, their order alternating), median and range of\nthose ratios; more relays count as slower only when they were slower in every round.\n", header)
	dialects := []string{}
	for _, r := range rs {
		if r.backlog == 0 && !r.scale && !slices.Contains(dialects, r.dialect) {
			dialects = append(dialects, r.dialect)
		}
	}
	cell := func(d, shape string, relays, backlog int) (stat, stat) {
		return collect(rs, func(r result) bool {
			return !r.scale && r.dialect == d && r.shape == shape && r.relays == relays && r.backlog == backlog
		})
	}
	for _, d := range dialects {
		fmt.Fprintf(&b, "\n**%s**\n\n", d)
		multi := d != "sqlite3"
		if multi {
			b.WriteString("| backlog shape | 1 relay, events/s | × the 1-per-aggregate shape | CPU µs/event | 3 relays, events/s | 3 relays ÷ 1 | target |\n|---|---|---|---|---|---|---|\n")
		} else {
			b.WriteString("| backlog shape | 1 relay (one per database), events/s | × the 1-per-aggregate shape | CPU µs/event |\n|---|---|---|---|\n")
		}
		base, _ := cell(d, "uniform", 1, 0)
		for _, sh := range shapeOrder {
			one, cpu := cell(d, sh, 1, 0)
			if one.med == 0 {
				continue
			}
			ratio := one.med / base.med
			if !multi {
				fmt.Fprintf(&b, "| %s | %s | %.2f× | %.1f |\n", shapeName[sh], one, ratio, cpu.med)
				continue
			}
			three, _ := cell(d, sh, 3, 0)
			if three.med == 0 {
				fmt.Fprintf(&b, "| %s | %s | %.2f× | %.1f | not measured | — | not measured |\n", shapeName[sh], one, ratio, cpu.med)
				continue
			}
			scale, slower := pairedRatio(rs, func(r result) bool {
				return !r.scale && r.dialect == d && r.shape == sh && r.backlog == 0
			}, 1, 3)
			verdict := "reported"
			if d == "postgres" {
				var miss []string
				if one.med < 10000 {
					miss = append(miss, "< 10,000/s")
				}
				if ratio < 0.5 {
					miss = append(miss, "< 0.5× uniform")
				}
				if slower {
					miss = append(miss, "3 relays slower than 1")
				}
				verdict = "met"
				if len(miss) > 0 {
					verdict = "**missed**: " + strings.Join(miss, ", ")
				}
			}
			fmt.Fprintf(&b, "| %s | %s | %.2f× | %.1f | %s | %s | %s |\n", shapeName[sh], one, ratio, cpu.med, three, scale, verdict)
		}
	}
	var big bool
	for _, r := range rs {
		big = big || r.backlog == 1000000
	}
	if big {
		b.WriteString("\n**Claim cost against the backlog (PostgreSQL, one relay):** the same shapes at 100,000 and at\n1,000,000 pending events, rounds alternating.\n\n| backlog shape | 100,000 pending, events/s | 1,000,000 pending, events/s | ratio | target ≥ 0.8× |\n|---|---|---|---|---|\n")
		for _, sh := range []string{"uniform", "aggregates=20"} {
			small, _ := cell("postgres", sh, 1, 100000)
			large, _ := cell("postgres", sh, 1, 1000000)
			if small.med == 0 || large.med == 0 {
				continue
			}
			r := large.med / small.med
			verdict := "met"
			if r < 0.8 {
				verdict = "**missed**"
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %.2f× | %s |\n", shapeName[sh], small, large, r, verdict)
		}
	}
	b.WriteString(renderScale(rs))
	return b.String()
}

// pairedRatio compares the runs with relays b against those with relays
// a, among the results keep selects, round by round: each round ran both,
// one after the other, so the ratio of the two is taken within a round.
// It returns the median and range of those ratios, and whether b was
// slower than a in every round: "slower" is a difference no round
// contradicts, not a median below 1× (runs of one arm spread by about
// a tenth here, so two arms as fast as each other fall on either side of
// 1× in some rounds). Results from a file with no round markers pair by
// their order.
func pairedRatio(rs []result, keep func(result) bool, a, b int) (string, bool) {
	byRound := map[int][2][]float64{}
	var rounds []int
	for _, r := range rs {
		if !keep(r) || (r.relays != a && r.relays != b) {
			continue
		}
		v, ok := byRound[r.round]
		if !ok {
			rounds = append(rounds, r.round)
		}
		if r.relays == a {
			v[0] = append(v[0], r.eventsPerSecond)
		} else {
			v[1] = append(v[1], r.eventsPerSecond)
		}
		byRound[r.round] = v
	}
	var ratios []float64
	for _, rd := range rounds {
		v := byRound[rd]
		for i := range min(len(v[0]), len(v[1])) {
			if v[0][i] > 0 {
				ratios = append(ratios, v[1][i]/v[0][i])
			}
		}
	}
	if len(ratios) == 0 {
		return "—", false
	}
	slower := true
	for _, x := range ratios {
		slower = slower && x < 1
	}
	st := summarize(ratios)
	if st.lo == st.hi {
		return fmt.Sprintf("%.2f×", st.med), slower
	}
	return fmt.Sprintf("**%.2f×** (%.2f×–%.2f×)", st.med, st.lo, st.hi), slower
}

// collect summarises the events/s and the CPU per event of the results
// keep selects.
func collect(rs []result, keep func(result) bool) (eps, cpu stat) {
	var e, c []float64
	for _, r := range rs {
		if keep(r) {
			e, c = append(e, r.eventsPerSecond), append(c, r.cpuPerEvent)
		}
	}
	return summarize(e), summarize(c)
}

// renderScale is the scale-out table: PostgreSQL, 1, 2 and 4 relays.
func renderScale(rs []result) string {
	counts := []int{}
	for _, r := range rs {
		if r.scale && !slices.Contains(counts, r.relays) {
			counts = append(counts, r.relays)
		}
	}
	if len(counts) == 0 {
		return ""
	}
	slices.Sort(counts)
	cell := func(shape string, relays int) (stat, stat) {
		return collect(rs, func(r result) bool {
			return r.scale && r.dialect == "postgres" && r.shape == shape && r.relays == relays
		})
	}
	var b strings.Builder
	b.WriteString("\n**Relays scaling out (PostgreSQL):** the same 100,000 pending events drained by 1, 2 and 4 relays,\neach on its own connection, rounds alternating; every run read the stream back: each event\nonce, each aggregate in sequence order. CPU µs/event is the benchmark process's.\n\n| backlog shape |")
	for _, n := range counts {
		fmt.Fprintf(&b, " %d relay(s), events/s |", n)
	}
	for _, n := range counts[1:] {
		fmt.Fprintf(&b, " %d ÷ 1 |", n)
	}
	b.WriteString(" CPU µs/event | target: no loss |\n|---|")
	b.WriteString(strings.Repeat("---|", 2*len(counts)+1) + "\n")
	for _, sh := range shapeOrder {
		one, _ := cell(sh, counts[0])
		if one.med == 0 {
			continue
		}
		fmt.Fprintf(&b, "| %s |", shapeName[sh])
		var cpus []string
		verdict := "met"
		for _, n := range counts {
			st, cpu := cell(sh, n)
			fmt.Fprintf(&b, " %s |", st)
			cpus = append(cpus, fmt.Sprintf("%.1f", cpu.med))
		}
		for _, n := range counts[1:] {
			r, slower := pairedRatio(rs, func(r result) bool { return r.scale && r.dialect == "postgres" && r.shape == sh }, counts[0], n)
			if slower {
				verdict = "**missed**"
			}
			fmt.Fprintf(&b, " %s |", r)
		}
		fmt.Fprintf(&b, " %s | %s |\n", strings.Join(cpus, " / "), verdict)
	}
	return b.String()
}

// renderLatency is the commit→published table: 20 hot aggregates against
// the uniform shape.
func renderLatency(ls []latency) string {
	if len(ls) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("\n**Commit→published at 1,000 events/s (PostgreSQL, relaybench, in-process wake-up):** each\nevent recorded in a unit of work of its own on one of N `Account` aggregates (i mod N), 30 s after\na 5 s warm-up, rounds alternating; milliseconds at a JetStream consumer. \"stored\" is commit →\nstored in the stream; \"CPU busy\" the machine's CPU in use while committing.\n\n")
	b.WriteString("| shape | p50 | p99 | max | stored p99 | CPU busy | missing | target p99 ≤ 25 ms |\n|---|---|---|---|---|---|---|---|\n")
	for _, n := range []int{20, 1000000} {
		var p50, p99, max, stored, cpu []float64
		missing := 0
		for _, l := range ls {
			if l.aggregates == n {
				p50, p99, max = append(p50, l.P50), append(p99, l.P99), append(max, l.Max)
				stored, cpu = append(stored, l.StoredP99), append(cpu, l.CPUBusy)
				missing += l.Missing
			}
		}
		if len(p99) == 0 {
			continue
		}
		name, verdict := "20 hot aggregates", "met"
		if n != 20 {
			name, verdict = fmt.Sprintf("uniform (%s aggregates)", group(float64(n))), "reported"
		}
		st := summarize(p99)
		if n == 20 && st.med > 25 {
			verdict = "**missed**"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %.0f%% | %d | %s |\n", name, ms(summarize(p50)), ms(st), ms(summarize(max)),
			ms(summarize(stored)), 100*summarize(cpu).med, missing, verdict)
	}
	return b.String()
}

// ms formats a latency stat in milliseconds.
func ms(s stat) string {
	if s.lo == s.hi {
		return fmt.Sprintf("%.1f", s.med)
	}
	return fmt.Sprintf("**%.1f** (%.1f–%.1f)", s.med, s.lo, s.hi)
}

const (
	begin = "<!-- relay-shapes:begin (generated by scripts/relay-shapes.sh; do not edit) -->"
	end   = "<!-- relay-shapes:end -->"
)

// splice puts body between the markers of doc.
func splice(doc, body string) (string, error) {
	i, j := strings.Index(doc, begin), strings.Index(doc, end)
	if i < 0 || j < i {
		return "", fmt.Errorf("no %q … %q markers", begin, end)
	}
	return doc[:i+len(begin)] + "\n" + body + doc[j:], nil
}
