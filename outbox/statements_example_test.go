package outbox_test

import (
	"fmt"

	"github.com/bento-go/bento/outbox"
)

// A benchmark or a tool that writes outbox rows without the writer uses
// the writer's own statements, so that it cannot drift from them.
func ExampleWriteStatements() {
	st := outbox.WriteStatements("sqlite3", outbox.NamesFor(""))
	fmt.Println(st.Sequence)
	fmt.Println(st.Insert)
	// Output:
	// INSERT INTO "bento_outbox_sequences" (aggregatetype, aggregateid, last_sequence) VALUES (?, ?, ?) ON CONFLICT (aggregatetype, aggregateid) DO UPDATE SET last_sequence = last_sequence + excluded.last_sequence RETURNING last_sequence
	// INSERT INTO "bento_outbox" (id, aggregatetype, aggregateid, "type", payload, "sequence", headers, occurred_at, status, attempts, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?)
}
