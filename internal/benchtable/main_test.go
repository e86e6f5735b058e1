package main

import (
	"strings"
	"testing"
)

const sample = `# scripts/relay-shapes.sh, 2026-12-03T10:00Z, commit abc, 2 cores, go1.26
# round 1, relays 1,3
BenchmarkRelayShapes/postgres/uniform/relays=1-2         	       1	1045682361 ns/op	        28.37 cpu-µs/event	     20000 events/s
BenchmarkRelayShapes/postgres/uniform/relays=3-2         	       1	 763146195 ns/op	        21.82 cpu-µs/event	     26000 events/s
BenchmarkRelayShapes/postgres/aggregates=20/relays=1-2   	       1	1045682361 ns/op	        25.00 cpu-µs/event	     10000 events/s
BenchmarkRelayShapes/postgres/aggregates=20/relays=3-2   	       1	1045682361 ns/op	        25.00 cpu-µs/event	      9500 events/s
BenchmarkRelayShapes/postgres/aggregates=1/relays=1-2    	       1	1186278358 ns/op	        26.91 cpu-µs/event	      9000 events/s
BenchmarkRelayShapes/postgres/aggregates=1/relays=3-2    	       1	1535089536 ns/op	        41.41 cpu-µs/event	      8000 events/s
# round 2, relays 3,1
BenchmarkRelayShapes/postgres/aggregates=20/relays=3-2   	       1	1045682361 ns/op	        25.00 cpu-µs/event	     10500 events/s
BenchmarkRelayShapes/postgres/aggregates=20/relays=1-2   	       1	1045682361 ns/op	        25.00 cpu-µs/event	     10000 events/s
BenchmarkRelayShapes/postgres/uniform/relays=1-2         	       1	1045682361 ns/op	        30.00 cpu-µs/event	     18000 events/s
# backlog 100000, round 1
backlog=100000 BenchmarkRelayShapes/postgres/uniform/relays=1-2  	1	1 ns/op	 28 cpu-µs/event	 20000 events/s
# backlog 1000000, round 1
backlog=1000000 BenchmarkRelayShapes/postgres/uniform/relays=1-2 	1	1 ns/op	 28 cpu-µs/event	 15000 events/s
`

// TestRender: medians, ratios and verdicts come from the figures, and a
// shape that misses a target says which. Three relays against one are
// compared round by round: slower in every round is a miss (one
// aggregate), slower in one round and faster in the other is not (20
// aggregates).
func TestRender(t *testing.T) {
	rs, header, err := parse(strings.NewReader(sample))
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 11 || !strings.Contains(header, "commit abc") {
		t.Fatalf("parsed %d results, header %q", len(rs), header)
	}
	out := render(rs, header)
	for _, want := range []string{
		"| 1 per aggregate (100,000 aggregates) | **19,000** (18,000–20,000) | 1.00× | 29.2 | 26,000 | 1.30× | met |",
		"| 20 aggregates | 10,000 | 0.53× | 25.0 | **10,000** (9,500–10,500) | **1.00×** (0.95×–1.05×) | met |",
		"| 1 aggregate | 9,000 | 0.47× | 26.9 | 8,000 | 0.89× | **missed**: < 10,000/s, < 0.5× uniform, 3 relays slower than 1 |",
		"| 1 per aggregate (100,000 aggregates) | 20,000 | 15,000 | 0.75× | **missed** |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
	doc := "a\n" + begin + "\nold\n" + end + "\nb\n"
	got, err := splice(doc, "new\n")
	if err != nil || got != "a\n"+begin+"\nnew\n"+end+"\nb\n" {
		t.Fatalf("splice = %q, %v", got, err)
	}
	if _, err := splice("no markers", "x"); err == nil {
		t.Fatal("splice without markers succeeded")
	}
}

// TestScaleAndLatency: the scale-out lines stay out of the shapes table
// and make their own, with a miss where more relays were slower; latency
// lines give medians and the verdict on the 20-aggregate p99; a latency
// run without a result is an error.
func TestScaleAndLatency(t *testing.T) {
	raw := sample + `# scale-out, round 1, relays 1,2,4
scale BenchmarkRelayShapes/postgres/aggregates=20/relays=1-2 	1	1 ns/op	 30 cpu-µs/event	 12000 events/s
scale BenchmarkRelayShapes/postgres/aggregates=20/relays=2-2 	1	1 ns/op	 31 cpu-µs/event	 13200 events/s
scale BenchmarkRelayShapes/postgres/aggregates=20/relays=4-2 	1	1 ns/op	 32 cpu-µs/event	  9000 events/s
latency aggregates=20 {"p50_ms":5,"p99_ms":20,"max_ms":40,"stored_p99_ms":18,"cpu_busy":0.5,"committed":30000,"missing":0}
latency aggregates=20 {"p50_ms":7,"p99_ms":30,"max_ms":50,"stored_p99_ms":28,"cpu_busy":0.7,"committed":30000,"missing":0}
latency aggregates=20 {"p50_ms":6,"p99_ms":26,"max_ms":45,"stored_p99_ms":24,"cpu_busy":0.6,"committed":30000,"missing":1}
latency aggregates=1000000 {"p50_ms":6,"p99_ms":22,"max_ms":45,"stored_p99_ms":20,"cpu_busy":0.6,"committed":30000,"missing":0}
`
	rs, header, err := parse(strings.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	ls, err := parseLatency(strings.NewReader(raw))
	if err != nil || len(ls) != 4 {
		t.Fatalf("parsed %d latency runs: %v", len(ls), err)
	}
	out := render(rs, header) + renderLatency(ls)
	for _, want := range []string{
		"| 1 per aggregate (100,000 aggregates) | **19,000** (18,000–20,000) |",
		"| 20 aggregates | 12,000 | 13,200 | 9,000 | 1.10× | 0.75× | 30.0 / 31.0 / 32.0 | **missed** |",
		"| 20 aggregates | 10,000 | 0.53× | 25.0 | **10,000** (9,500–10,500) | **1.00×** (0.95×–1.05×) | met |",
		"| 20 hot aggregates | **6.0** (5.0–7.0) | **26.0** (20.0–30.0) | **45.0** (40.0–50.0) | **24.0** (18.0–28.0) | 60% | 1 | **missed** |",
		"| uniform (1,000,000 aggregates) | 6.0 | 22.0 | 45.0 | 20.0 | 60% | 0 | reported |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
	if strings.Count(out, "| 20 aggregates |") != 2 {
		t.Error("scale-out lines leaked into the shapes table")
	}
	if _, err := parseLatency(strings.NewReader("latency aggregates=20 \n")); err == nil {
		t.Error("a latency run without a result was accepted")
	}
}
