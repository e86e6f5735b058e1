package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// record is one run of one arm: one JSON line of the raw file.
type record struct {
	Suite   string `json:"suite"`   // ceiling, workers, latency or burndown
	Arm     string `json:"arm"`     // uow, pgbench-same, pgbench-1rt, bento-inproc, watermill-1s, …
	Round   int    `json:"round"`   // 1, 2, …
	Workers int    `json:"workers"` // concurrent clients (ceiling and workers suites)
	Started string `json:"started"` // RFC 3339, UTC
	// Command is the command as the tables show it (-label), CommandRun
	// the command that ran.
	Command    string `json:"command"`
	CommandRun string `json:"command_run"`

	WallS float64 `json:"wall_s"`
	// Throughput is transactions (or events) per second of the measured
	// stretch, as the tool reports it.
	Throughput float64 `json:"throughput"`
	// Transactions counts every transaction of the process, warm-up
	// included: what the CPU figures are divided by.
	Transactions int64 `json:"transactions"`
	// ClientCPUS is the user and system CPU of the measured command and
	// its descendants (/proc/self/stat cutime+cstime around it, or the
	// command's /proc/<pid>/stat at the -until line); ServerCPUS the
	// PostgreSQL server's (its postmaster's and every child's, live or
	// exited, from /proc) from the start to the exit or the -until line.
	ClientCPUS float64 `json:"client_cpu_s"`
	ServerCPUS float64 `json:"server_cpu_s"`
	P50MS      float64 `json:"p50_ms,omitempty"`
	P99MS      float64 `json:"p99_ms,omitempty"`
	MaxMS      float64 `json:"max_ms,omitempty"`
	// Quantiles are the latencies (ms) of the measured events at
	// cdfProbs, read from the command's per-event file (relaybench
	// -series, see measure's -series), which is then not needed.
	Quantiles []float64 `json:"latency_quantiles_ms,omitempty"`
	// Detail is the tool's own JSON result, when it prints one.
	Detail json.RawMessage `json:"detail,omitempty"`
	Error  string          `json:"error,omitempty"`
}

// measure runs one arm: bench-report measure [flags] -- command args….
func measure(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("measure", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var r record
	out := fs.String("out", "", "raw file to append the record to (JSON lines)")
	parse := fs.String("parse", "", "how to read the command's output: bento (bento bench --json), pgbench, relaybench, gotest (go test -bench)")
	serverPID := fs.Int("server-pid", 0, "the PostgreSQL postmaster's pid (0: no server CPU)")
	fs.StringVar(&r.Suite, "suite", "", "suite name")
	fs.StringVar(&r.Arm, "arm", "", "arm name")
	fs.IntVar(&r.Round, "round", 1, "round number")
	fs.IntVar(&r.Workers, "workers", 0, "concurrent clients")
	untilRE := fs.String("until", "", "a regular expression: the first line of the command's stderr it matches ends the measured CPU (default: the command's exit)")
	label := fs.String("label", "", "the command as the tables show it (default: the command run)")
	series := fs.String("series", "", "per-event latency file the command writes (relaybench -series): its quantiles go into the record")
	if err := fs.Parse(args); err != nil {
		return err
	}
	argv := fs.Args()
	var until *regexp.Regexp
	if *untilRE != "" {
		var err error
		if until, err = regexp.Compile(*untilRE); err != nil {
			return fmt.Errorf("measure: -until: %w", err)
		}
	}
	if *out == "" || r.Suite == "" || r.Arm == "" || len(argv) == 0 {
		return errors.New("measure: want -out, -suite, -arm and a command after --")
	}
	if *parse != "bento" && *parse != "pgbench" && *parse != "relaybench" && *parse != "gotest" {
		return fmt.Errorf("measure: -parse=%q: accepted: bento, pgbench, relaybench, gotest", *parse)
	}
	r.CommandRun = strings.Join(argv, " ")
	r.Command = r.CommandRun
	if *label != "" {
		r.Command = *label
	}
	r.Started = time.Now().UTC().Format(time.RFC3339)

	self0, err := childrenCPU("/proc/self/stat")
	if err != nil {
		return err
	}
	var srv0 float64
	if *serverPID > 0 {
		if srv0, err = postgresCPU("/proc", *serverPID); err != nil {
			return err
		}
	}
	var stdout bytes.Buffer
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout = io.MultiWriter(&stdout, stderr)
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	cmd.Stderr = pw
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		return err
	}
	pw.Close()
	// The command's stderr goes on to ours; the first line matching -until
	// ends the measured stretch: the client's CPU is then read from its
	// /proc/<pid>/stat, the server's from its processes.
	type snap struct {
		client, server float64
		err            error
	}
	marked := make(chan *snap, 1)
	go func() {
		var got *snap
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			fmt.Fprintln(stderr, sc.Text())
			if got == nil && until != nil && until.MatchString(sc.Text()) {
				got = &snap{}
				b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", cmd.Process.Pid))
				if err == nil {
					own, children, _, cerr := cpuOf(string(b))
					got.client, err = own+children, cerr
				}
				if err == nil && *serverPID > 0 {
					got.server, err = postgresCPU("/proc", *serverPID)
				}
				got.err = err
			}
		}
		io.Copy(io.Discard, pr)
		pr.Close()
		marked <- got
	}()
	runErr := cmd.Wait()
	r.WallS = round3(time.Since(t0).Seconds())
	mark := <-marked
	if mark != nil {
		if mark.err != nil {
			return mark.err
		}
		r.ClientCPUS = round3(mark.client)
		r.ServerCPUS = round3(mark.server - srv0)
	} else {
		// The server's backends exit after the client; the postmaster adds
		// an exited backend's CPU to its own children's once it has reaped
		// it.
		time.Sleep(300 * time.Millisecond)
		self1, err := childrenCPU("/proc/self/stat")
		if err != nil {
			return err
		}
		r.ClientCPUS = round3(self1 - self0)
		if *serverPID > 0 {
			srv1, err := postgresCPU("/proc", *serverPID)
			if err != nil {
				return err
			}
			r.ServerCPUS = round3(srv1 - srv0)
		}
	}
	if perr := parseOutput(*parse, stdout.Bytes(), &r); perr != nil && runErr == nil {
		runErr = perr
	}
	if runErr != nil {
		r.Error = runErr.Error()
	}
	if *series != "" && r.Error == "" {
		v, err := readSeries(*series)
		if err != nil {
			return err
		}
		r.Quantiles = quantiles(v)
	}
	line, err := json.Marshal(r)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(*out, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintf(f, "%s\n", line); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "bench-report: %s/%s round %d: %.1f/s, client %.2f CPU-s, server %.2f CPU-s, %d transactions%s\n",
		r.Suite, r.Arm, r.Round, r.Throughput, r.ClientCPUS, r.ServerCPUS, r.Transactions, errSuffix(r.Error))
	return nil
}

func errSuffix(e string) string {
	if e == "" {
		return ""
	}
	return " (failed: " + e + ")"
}

var (
	pgbenchTPS       = regexp.MustCompile(`(?m)^tps = ([0-9.]+) \(without initial connection time\)`)
	pgbenchProcessed = regexp.MustCompile(`(?m)^number of transactions actually processed: (\d+)`)
	pgbenchFailed    = regexp.MustCompile(`(?m)^number of failed transactions: (\d+)`)
)

// parseOutput fills r from the command's standard output.
func parseOutput(kind string, out []byte, r *record) error {
	switch kind {
	case "pgbench":
		// A warm-up run may come first: every run's transactions count
		// (the CPU covers them), the last run's rate is the measurement.
		tps := pgbenchTPS.FindAllSubmatch(out, -1)
		if len(tps) == 0 {
			return errors.New("pgbench printed no tps line")
		}
		r.Throughput, _ = strconv.ParseFloat(string(tps[len(tps)-1][1]), 64)
		for _, m := range pgbenchProcessed.FindAllSubmatch(out, -1) {
			n, _ := strconv.ParseInt(string(m[1]), 10, 64)
			r.Transactions += n
		}
		for _, m := range pgbenchFailed.FindAllSubmatch(out, -1) {
			if string(m[1]) != "0" {
				return fmt.Errorf("pgbench: %s failed transactions", m[1])
			}
		}
		return nil
	case "bento":
		line := lastJSON(out)
		if line == nil {
			return errors.New("bento bench printed no JSON line")
		}
		var b struct {
			Throughput float64 `json:"throughput"`
			P50        float64 `json:"p50_ms"`
			P99        float64 `json:"p99_ms"`
			Max        float64 `json:"max_ms"`
			Mismatch   bool    `json:"mismatch"`
			Counts     []struct {
				Arm   string `json:"arm"`
				Acked int64  `json:"acked"`
			} `json:"counts"`
		}
		if err := json.Unmarshal(line, &b); err != nil {
			return err
		}
		r.Detail = line
		r.Throughput, r.P50MS, r.P99MS, r.MaxMS = b.Throughput, b.P50, b.P99, b.Max
		for _, c := range b.Counts {
			r.Transactions += c.Acked
		}
		if b.Mismatch {
			return errors.New("bento bench: mismatch between acknowledged and stored rows")
		}
		return nil
	case "gotest":
		m, err := parseGoBench(out)
		if err != nil {
			return err
		}
		r.Detail, err = json.Marshal(m)
		return err
	default: // relaybench
		line := lastJSON(out)
		if line == nil {
			return errors.New("relaybench printed no JSON line")
		}
		var b struct {
			EventsPerS float64 `json:"events_per_s"`
			Events     int64   `json:"events"`
			Committed  int64   `json:"committed"`
			P50        float64 `json:"p50_ms"`
			P99        float64 `json:"p99_ms"`
			Max        float64 `json:"max_ms"`
			Rate       float64 `json:"achieved_rate"`
			Missing    int64   `json:"missing"`
			Error      string  `json:"error"`
		}
		if err := json.Unmarshal(line, &b); err != nil {
			return err
		}
		r.Detail = line
		r.P50MS, r.P99MS, r.MaxMS = b.P50, b.P99, b.Max
		r.Throughput, r.Transactions = b.EventsPerS, b.Events
		if b.Committed > 0 {
			r.Throughput, r.Transactions = b.Rate, b.Committed
		}
		if b.Error != "" {
			return errors.New(b.Error)
		}
		return nil
	}
}

// goBench holds a go test -bench output's metrics: per benchmark (its
// name without the GOMAXPROCS suffix), per unit, one value per run
// (-count).
type goBench map[string]map[string][]float64

var (
	benchLine = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?\s+\d+\s+(.*)$`)
	benchPair = regexp.MustCompile(`([-+0-9.eE]+) (\S+)`)
)

// parseGoBench reads the benchmark lines of go test -bench's output; a
// FAIL line is an error.
func parseGoBench(out []byte) (goBench, error) {
	m := goBench{}
	s := bufio.NewScanner(bytes.NewReader(out))
	for s.Scan() {
		t := s.Text()
		if strings.HasPrefix(t, "--- FAIL") || strings.HasPrefix(t, "FAIL") {
			return m, fmt.Errorf("go test: %s", t)
		}
		l := benchLine.FindStringSubmatch(t)
		if l == nil {
			continue
		}
		if m[l[1]] == nil {
			m[l[1]] = map[string][]float64{}
		}
		for _, p := range benchPair.FindAllStringSubmatch(l[2], -1) {
			v, err := strconv.ParseFloat(p[1], 64)
			if err == nil {
				m[l[1]][p[2]] = append(m[l[1]][p[2]], v)
			}
		}
	}
	if len(m) == 0 {
		return m, errors.New("go test printed no benchmark line")
	}
	return m, nil
}

// lastJSON returns the last line of out that is a JSON object.
func lastJSON(out []byte) []byte {
	var last []byte
	s := bufio.NewScanner(bytes.NewReader(out))
	s.Buffer(make([]byte, 1<<20), 16<<20)
	for s.Scan() {
		if t := bytes.TrimSpace(s.Bytes()); len(t) > 0 && t[0] == '{' && json.Valid(t) {
			last = append([]byte(nil), t...)
		}
	}
	return last
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's times: 100 on
// every Linux architecture Go runs on.
const clockTicks = 100

// statFields returns the fields of a /proc/<pid>/stat line after the
// command name (which may hold spaces): field 3 (state) is index 0.
func statFields(line string) ([]string, error) {
	i := strings.LastIndexByte(line, ')')
	if i < 0 {
		return nil, fmt.Errorf("not a /proc stat line: %q", line)
	}
	f := strings.Fields(line[i+1:])
	if len(f) < 15 {
		return nil, fmt.Errorf("short /proc stat line: %q", line)
	}
	return f, nil
}

// cpuOf reads utime, stime, cutime and cstime (fields 14-17) of a
// /proc/<pid>/stat line in seconds, and its parent's pid (field 4).
func cpuOf(line string) (own, children float64, ppid int, err error) {
	f, err := statFields(line)
	if err != nil {
		return 0, 0, 0, err
	}
	var v [4]float64
	for i := range v {
		n, err := strconv.ParseInt(f[11+i], 10, 64)
		if err != nil {
			return 0, 0, 0, fmt.Errorf("stat field %d: %w", 14+i, err)
		}
		v[i] = float64(n) / clockTicks
	}
	ppid, err = strconv.Atoi(f[1])
	return v[0] + v[1], v[2] + v[3], ppid, err
}

// childrenCPU is the CPU of the waited-for children of the process whose
// stat file is path (cutime+cstime), in seconds.
func childrenCPU(path string) (float64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	_, c, _, err := cpuOf(string(b))
	return c, err
}

// postgresCPU is a PostgreSQL server's CPU in seconds, read under proc:
// its postmaster's own and reaped children's time, and the time of every
// live child (backends, the WAL writer, the checkpointer, autovacuum).
func postgresCPU(proc string, postmaster int) (float64, error) {
	b, err := os.ReadFile(filepath.Join(proc, strconv.Itoa(postmaster), "stat"))
	if err != nil {
		return 0, fmt.Errorf("the postmaster %d: %w", postmaster, err)
	}
	own, reaped, _, err := cpuOf(string(b))
	if err != nil {
		return 0, err
	}
	total := own + reaped
	ents, err := os.ReadDir(proc)
	if err != nil {
		return 0, err
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == postmaster {
			continue
		}
		b, err := os.ReadFile(filepath.Join(proc, e.Name(), "stat"))
		if err != nil {
			continue // exited meanwhile: the postmaster's reaped time has it
		}
		own, _, ppid, err := cpuOf(string(b))
		if err == nil && ppid == postmaster {
			total += own
		}
	}
	return total, nil
}

// cdfProbs are the probabilities at which a run's latencies are kept:
// every percent, every tenth of a percent above 99%, and the maximum.
var cdfProbs = func() []float64 {
	var p []float64
	for i := 0; i <= 99; i++ {
		p = append(p, float64(i)/100)
	}
	for i := 991; i <= 999; i++ {
		p = append(p, float64(i)/1000)
	}
	return append(p, 1)
}()

// quantiles returns v's nearest-rank quantiles at cdfProbs (nil for no
// values).
func quantiles(v []float64) []float64 {
	if len(v) == 0 {
		return nil
	}
	s := slices.Clone(v)
	slices.Sort(s)
	out := make([]float64, len(cdfProbs))
	for i, p := range cdfProbs {
		k := int(math.Ceil(p*float64(len(s)))) - 1
		out[i] = s[max(0, min(k, len(s)-1))]
	}
	return out
}
