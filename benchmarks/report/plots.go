package main

import (
	"bufio"
	"encoding/csv"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// writePlots draws the PNG plots of a run into dir and returns their file
// names: the commit→published latency CDF per arm, throughput against
// workers, and the relay's burn-down per backlog shape (from the
// relay-shapes raw file, when there is one).
func writePlots(rn run, shapesPath, dir string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var names []string
	subtitle := fmt.Sprintf("%s, commit %s", rn.meta.Date, rn.meta.Commit)
	if rn.meta.Quick {
		subtitle += ", QUICK smoke run"
	}
	if p, err := latencyPlot(rn, subtitle); err != nil {
		return nil, err
	} else if p != nil {
		names = append(names, "latency-cdf.png")
		if err := p.Save(8*vg.Inch, 5*vg.Inch, filepath.Join(dir, names[len(names)-1])); err != nil {
			return nil, err
		}
	}
	if p, err := workersPlot(rn, subtitle); err != nil {
		return nil, err
	} else if p != nil {
		names = append(names, "throughput-workers.png")
		if err := p.Save(8*vg.Inch, 5*vg.Inch, filepath.Join(dir, names[len(names)-1])); err != nil {
			return nil, err
		}
	}
	if shapesPath != "" {
		f, err := os.Open(shapesPath)
		if err != nil {
			return nil, err
		}
		rs, header, err := parseShapes(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", shapesPath, err)
		}
		p, err := shapesPlot(rs, header)
		if err != nil {
			return nil, err
		}
		names = append(names, "relay-shapes.png")
		if err := p.Save(9*vg.Inch, 5*vg.Inch, filepath.Join(dir, names[len(names)-1])); err != nil {
			return nil, err
		}
	}
	return names, nil
}

// readSeries reads the latencies (ms) of the events a relaybench -series
// file measured (committed after the warm-up).
func readSeries(path string) ([]float64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := csv.NewReader(bufio.NewReader(f))
	r.FieldsPerRecord = -1
	var out []float64
	header := true
	for {
		rec, err := r.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if header {
			header = false
			continue
		}
		if len(rec) < 3 {
			continue
		}
		at, err1 := strconv.ParseFloat(rec[0], 64)
		lat, err2 := strconv.ParseFloat(rec[2], 64)
		if err1 != nil || err2 != nil || at < 0 {
			continue
		}
		out = append(out, lat)
	}
	return out, nil
}

// latencyPlot draws each latency arm's distribution: at every probability
// of cdfProbs, the median over the rounds of the round's quantile.
func latencyPlot(rn run, subtitle string) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = "Commit→published latency, median CDF of the rounds\n" + subtitle
	p.X.Label.Text = "latency (ms, log scale)"
	p.Y.Label.Text = "fraction of events"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Y.Min, p.Y.Max = 0, 1.3 // room for the legend above the curves
	p.Y.Tick.Marker = plot.ConstantTicks([]plot.Tick{{Value: 0, Label: "0"}, {Value: 0.25, Label: "0.25"}, {Value: 0.5, Label: "0.5"},
		{Value: 0.75, Label: "0.75"}, {Value: 0.9, Label: "0.9"}, {Value: 0.99, Label: "0.99"}, {Value: 1, Label: ""}})
	p.Legend.Top, p.Legend.Left = true, true
	i := 0
	for _, a := range append([]string{"bento-inproc", "watermill-1s"}, watermillTuned...) {
		var rounds [][]float64
		for _, r := range rn.of("latency", a, 0) {
			if len(r.Quantiles) == len(cdfProbs) {
				rounds = append(rounds, r.Quantiles)
			}
		}
		if len(rounds) == 0 {
			continue
		}
		var xys plotter.XYs
		for k, pr := range cdfProbs {
			var at []float64
			for _, q := range rounds {
				at = append(at, q[k])
			}
			xys = append(xys, plotter.XY{X: math.Max(summarize(at).med, 0.1), Y: pr}) // a log axis: 0.1 ms at least
		}
		l, err := plotter.NewLine(xys)
		if err != nil {
			return nil, err
		}
		l.Color, l.Dashes, l.Width = plotutil.Color(i), plotutil.Dashes(i), vg.Points(1.5)
		p.Add(l)
		p.Legend.Add(fmt.Sprintf("%s (%d rounds)", plainName(a), len(rounds)), l)
		i++
	}
	if i == 0 {
		return nil, nil
	}
	p.Add(plotter.NewGrid())
	return p, nil
}

// plainName is an arm's description without Markdown.
func plainName(a string) string {
	n := armNames[a]
	if i := strings.Index(n, " (`"); i >= 0 {
		n = n[:i]
	}
	return strings.ReplaceAll(n, "`", "")
}

func workersPlot(rn run, subtitle string) (*plot.Plot, error) {
	ws := workerCounts(rn)
	if len(ws) == 0 {
		return nil, nil
	}
	p := plot.New()
	p.Title.Text = "Throughput against workers, PostgreSQL (median of the rounds)\n" + subtitle
	p.X.Label.Text = "workers = connections (log scale)"
	p.Y.Label.Text = "transactions/s"
	p.X.Scale = plot.LogScale{}
	var ticks []plot.Tick
	for _, w := range ws {
		ticks = append(ticks, plot.Tick{Value: float64(w), Label: strconv.Itoa(w)})
	}
	p.X.Tick.Marker = plot.ConstantTicks(ticks)
	p.Y.Min = 0
	p.Legend.Top, p.Legend.Left = true, true
	top := 0.0
	for i, a := range []string{"uow", "pgx", "pgbench-same", "pgbench-1rt"} {
		var xys plotter.XYs
		for _, w := range ws {
			if s := summarize(each(rn.of("workers", a, w), tput)); s.n > 0 {
				xys = append(xys, plotter.XY{X: float64(w), Y: s.med})
				top = max(top, s.med)
			}
		}
		if len(xys) == 0 {
			continue
		}
		l, pts, err := plotter.NewLinePoints(xys)
		if err != nil {
			return nil, err
		}
		l.Color, l.Dashes, l.Width = plotutil.Color(i), plotutil.Dashes(i), vg.Points(1.5)
		pts.Color, pts.Shape = plotutil.Color(i), plotutil.Shape(i)
		p.Add(l, pts)
		p.Legend.Add(plainName(a), l, pts)
	}
	p.Y.Max = top * 1.3 // room for the legend
	p.Add(plotter.NewGrid())
	return p, nil
}

// shapeResult is one line of scripts/relay-shapes.sh's raw output.
type shapeResult struct {
	backlog        int
	dialect, shape string
	relays         int
	eventsPerSec   float64
}

// shapeLine is the line internal/benchtable reads (the same pattern: that
// program is in Bento's module, this one in its own).
var shapeLine = regexp.MustCompile(`^(?:backlog=(\d+) )?BenchmarkRelayShapes/([^/]+)/([^/]+)/relays=(\d+)(?:-\d+)?\s+\d+\s+\d+ ns/op\s+([\d.]+) cpu-µs/event\s+([\d.]+) events/s`)

func parseShapes(r io.Reader) ([]shapeResult, string, error) {
	var rs []shapeResult
	header := ""
	s := bufio.NewScanner(r)
	for s.Scan() {
		t := s.Text()
		if strings.HasPrefix(t, "# scripts/") && header == "" {
			header = strings.TrimPrefix(t, "# ")
		}
		m := shapeLine.FindStringSubmatch(t)
		if m == nil {
			continue
		}
		res := shapeResult{dialect: m[2], shape: m[3]}
		res.backlog, _ = strconv.Atoi(m[1])
		res.relays, _ = strconv.Atoi(m[4])
		res.eventsPerSec, _ = strconv.ParseFloat(m[6], 64)
		rs = append(rs, res)
	}
	if len(rs) == 0 {
		return nil, "", fmt.Errorf("no BenchmarkRelayShapes lines")
	}
	return rs, header, s.Err()
}

var shapeOrder = []string{"uniform", "aggregates=1000", "aggregates=20", "aggregates=1", "zipf=1.1"}

var shapeLabel = map[string]string{"uniform": "1 per aggregate", "aggregates=1000": "1,000 aggregates",
	"aggregates=20": "20 aggregates", "aggregates=1": "1 aggregate", "zipf=1.1": "Zipf 1.1 / 10,000"}

// shapesPlot draws the relay's burn-down (events/s, median of the rounds)
// per backlog shape: a bar per dialect and relay count.
func shapesPlot(rs []shapeResult, header string) (*plot.Plot, error) {
	type series struct {
		dialect string
		relays  int
	}
	var ss []series
	for _, r := range rs {
		s := series{r.dialect, r.relays}
		if r.backlog == 0 && !slices.Contains(ss, s) {
			ss = append(ss, s)
		}
	}
	p := plot.New()
	p.Title.Text = "Relay burn-down per backlog shape, 100,000 events pending, batch 100\n" + header
	p.Y.Label.Text = "events/s (median of the rounds)"
	p.Legend.Top = true
	width := vg.Points(80 / float64(len(ss)))
	top := 0.0
	for i, s := range ss {
		vals := make(plotter.Values, len(shapeOrder))
		for j, sh := range shapeOrder {
			var v []float64
			for _, r := range rs {
				if r.backlog == 0 && r.dialect == s.dialect && r.relays == s.relays && r.shape == sh {
					v = append(v, r.eventsPerSec)
				}
			}
			vals[j] = summarize(v).med
			top = max(top, vals[j])
		}
		bar, err := plotter.NewBarChart(vals, width)
		if err != nil {
			return nil, err
		}
		bar.LineStyle.Width = 0
		bar.Color = plotutil.Color(i)
		bar.Offset = width * vg.Length(float64(i)-float64(len(ss)-1)/2)
		p.Add(bar)
		label := fmt.Sprintf("%s, %d relay", s.dialect, s.relays)
		if s.relays > 1 {
			label += "s"
		}
		p.Legend.Add(label, bar)
	}
	var labels []string
	for _, sh := range shapeOrder {
		labels = append(labels, shapeLabel[sh])
	}
	p.NominalX(labels...)
	p.Y.Min, p.Y.Max = 0, top*1.4 // room for the legend
	p.Add(plotter.NewGrid())
	return p, nil
}
