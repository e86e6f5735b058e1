// Command bench-report is the measuring and reporting half of
// scripts/benchmarks.sh, in a module of its own so that its plotting
// library (gonum.org/v1/plot) never becomes a dependency of Bento.
//
// measure runs one arm of a benchmark — a command such as bento bench,
// pgbench or relaybench — reads the CPU used around it from /proc (the
// command's and its descendants' from this process's reaped children's
// time, the PostgreSQL server's from its postmaster and every child), reads
// the command's result from its output, and appends one JSON line to the
// raw file:
//
//	bench-report measure -out docs/benchmarks/report.jsonl -suite ceiling -arm uow -round 1 -workers 16 \
//	    -parse bento -server-pid 1234 -- bento bench --workers 16 --duration 20s --json
//
// render reads the raw file (its first line describes the run), writes the
// summary tables between the bench-report markers of BENCHMARKS.md with a
// verdict for every target computed from the figures, and draws the plots
// (PNG) into docs/benchmarks:
//
//	bench-report render -raw docs/benchmarks/report.jsonl -into BENCHMARKS.md -plots docs/benchmarks
package main

import (
	"fmt"
	"io"
	"math"
	"os"
)

func main() {
	if err := dispatch(os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "bench-report:", err)
		os.Exit(1)
	}
}

const usage = "usage: bench-report measure [flags] -- command args… | bench-report render [flags]"

func dispatch(args []string, stderr io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("%s", usage)
	}
	switch args[0] {
	case "measure":
		return measure(args[1:], stderr)
	case "render":
		return render(args[1:], stderr)
	}
	return fmt.Errorf("unknown command %q; %s", args[0], usage)
}

func round3(f float64) float64 { return math.Round(f*1000) / 1000 }
