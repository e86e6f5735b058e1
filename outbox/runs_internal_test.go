package outbox

import (
	"slices"
	"testing"
)

// TestRuns: runs keeps each aggregate's rows from the head the claim
// found, consecutive, in sequence order; a gap ends the run, and rows
// before the head (MySQL's lock by aggregate alone returns them) are left
// out rather than ending it.
func TestRuns(t *testing.T) {
	row := func(id string, seq, head int64) claimed {
		return claimed{m: Message{AggregateType: "A", AggregateID: id, Sequence: seq}, head: head}
	}
	for _, tc := range []struct {
		name string
		rows []claimed
		want []string
	}{
		{"in order", []claimed{row("x", 3, 3), row("x", 4, 3), row("y", 1, 1)}, []string{"x3", "x4", "y1"}},
		{"out of order", []claimed{row("x", 5, 3), row("x", 3, 3), row("x", 4, 3)}, []string{"x3", "x4", "x5"}},
		{"gap ends the run", []claimed{row("x", 3, 3), row("x", 5, 3), row("x", 6, 3)}, []string{"x3"}},
		{"not from the head", []claimed{row("x", 4, 3), row("x", 5, 3), row("y", 2, 2)}, []string{"y2"}},
		{"rows before the head", []claimed{row("x", 1, 3), row("x", 3, 3), row("x", 4, 3)}, []string{"x3", "x4"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msgs, attempts := runs(tc.rows)
			var got []string
			for _, m := range msgs {
				got = append(got, m.AggregateID+string(rune('0'+m.Sequence)))
			}
			if !slices.Equal(got, tc.want) || len(attempts) != len(msgs) {
				t.Fatalf("runs kept %v (%d attempts), want %v", got, len(attempts), tc.want)
			}
		})
	}
}
