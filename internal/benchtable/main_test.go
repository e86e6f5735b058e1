package main

import (
	"strings"
	"testing"
)

const sample = `# scripts/relay-shapes.sh, 2026-12-03T10:00Z, commit abc, 2 cores, go1.26
BenchmarkRelayShapes/postgres/uniform/relays=1-2         	       1	1045682361 ns/op	        28.37 cpu-µs/event	     20000 events/s
BenchmarkRelayShapes/postgres/uniform/relays=3-2         	       1	 763146195 ns/op	        21.82 cpu-µs/event	     26000 events/s
BenchmarkRelayShapes/postgres/aggregates=1/relays=1-2    	       1	1186278358 ns/op	        26.91 cpu-µs/event	      9000 events/s
BenchmarkRelayShapes/postgres/aggregates=1/relays=3-2    	       1	1535089536 ns/op	        41.41 cpu-µs/event	      8000 events/s
BenchmarkRelayShapes/postgres/uniform/relays=1-2         	       1	1045682361 ns/op	        30.00 cpu-µs/event	     18000 events/s
backlog=100000 BenchmarkRelayShapes/postgres/uniform/relays=1-2  	1	1 ns/op	 28 cpu-µs/event	 20000 events/s
backlog=1000000 BenchmarkRelayShapes/postgres/uniform/relays=1-2 	1	1 ns/op	 28 cpu-µs/event	 15000 events/s
`

// TestRender: medians, ratios and verdicts come from the figures, and a
// shape that misses a target says which.
func TestRender(t *testing.T) {
	rs, header, err := parse(strings.NewReader(sample))
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 7 || !strings.Contains(header, "commit abc") {
		t.Fatalf("parsed %d results, header %q", len(rs), header)
	}
	out := render(rs, header)
	for _, want := range []string{
		"| 1 per aggregate (100,000 aggregates) | **19,000** (18,000–20,000) | 1.00× | 29.2 | 26,000 | 1.37× | met |",
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
