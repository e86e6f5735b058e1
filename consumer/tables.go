package consumer

import (
	"strconv"

	"entgo.io/ent/dialect"
	"entgo.io/ent/dialect/sql/schema"
	"entgo.io/ent/schema/field"

	"github.com/bento-go/bento/dialects"
	"github.com/bento-go/bento/outbox"
)

// Tables names the consumer's tables, derived from the outbox table's
// name like the inbox's (outbox.Names.Inbox, <table>_inbox).
type Tables struct {
	// Inbox records the events each consumer applied: <table>_inbox.
	Inbox string
	// Applied holds the last sequence each consumer applied per
	// aggregate: <table>_inbox_seq.
	Applied string
	// Dead holds the dead letters: <table>_inbox_dead.
	Dead string
}

// TablesFor returns the consumer's table names for the framework's names.
func TablesFor(n outbox.Names) Tables {
	if n.Outbox == "" {
		n = outbox.NamesFor("")
	}
	return Tables{Inbox: n.Inbox, Applied: n.Outbox + "_inbox_seq", Dead: n.Outbox + "_inbox_dead"}
}

// microTime is a timestamp with microseconds on every dialect.
var microTime = map[string]string{dialect.MySQL: "datetime(6)", dialect.Postgres: "timestamptz"}

// Schema returns the consumer's own tables (the inbox is the outbox's,
// outbox.Tables) for bento.WithTables, so that Migrate creates them:
//
//	db, err := bento.Open(cfg, bento.WithTables(consumer.Schema(outbox.NamesFor(cfg.Outbox.Table))...))
func Schema(n outbox.Names) []*schema.Table {
	t := TablesFor(n)
	applied := schema.NewTable(t.Applied).
		AddPrimary(&schema.Column{Name: "consumer", Type: field.TypeString, Size: 128}).
		AddPrimary(&schema.Column{Name: "aggregatetype", Type: field.TypeString, Size: 255}).
		AddPrimary(&schema.Column{Name: "aggregateid", Type: field.TypeString, Size: 255}).
		AddColumn(&schema.Column{Name: "last_sequence", Type: field.TypeInt64})
	applied.SetComment("Bento consumers: last event sequence applied per aggregate")

	dead := schema.NewTable(t.Dead).
		AddPrimary(&schema.Column{Name: "consumer", Type: field.TypeString, Size: 128}).
		AddPrimary(&schema.Column{Name: "event_id", Type: field.TypeUUID}).
		AddColumn(&schema.Column{Name: "subject", Type: field.TypeString, Size: 1024}).
		AddColumn(&schema.Column{Name: "type", Type: field.TypeString, Size: 255}).
		AddColumn(&schema.Column{Name: "aggregatetype", Type: field.TypeString, Size: 255}).
		AddColumn(&schema.Column{Name: "aggregateid", Type: field.TypeString, Size: 255}).
		AddColumn(&schema.Column{Name: "sequence", Type: field.TypeInt64}).
		AddColumn(&schema.Column{Name: "headers", Type: field.TypeJSON, Nullable: true}).
		AddColumn(&schema.Column{Name: "payload", Type: field.TypeBytes, SchemaType: map[string]string{dialect.MySQL: "longblob"}}).
		AddColumn(&schema.Column{Name: "error", Type: field.TypeString, Size: 2048}).
		AddColumn(&schema.Column{Name: "category", Type: field.TypeString, Size: 16}).
		AddColumn(&schema.Column{Name: "deliveries", Type: field.TypeInt64}).
		AddColumn(&schema.Column{Name: "dead_at", Type: field.TypeTime, SchemaType: microTime})
	dead.SetComment("Bento consumers: events dead-lettered (requeue with bento consume requeue)")
	return []*schema.Table{applied, dead}
}

// queries holds a dialect's statements.
type queries struct {
	dialect    string
	advance    string // UPDATE applied: last+1
	first      string // INSERT applied row for sequence 1, ignoring a conflict
	last       string // SELECT last_sequence, locking the row
	dead       string // INSERT a dead letter, ignoring a conflict
	listDead   string
	deleteDead string
}

func newQueries(d string, t Tables) queries {
	q := func(s string) string { return dialects.QuoteIdent(d, s) }
	applied, dead := q(t.Applied), q(t.Dead)
	qs := queries{dialect: d}
	insertIgnore, onConflict, lock := "INSERT OR IGNORE INTO ", "", ""
	switch d {
	case dialect.Postgres:
		insertIgnore, onConflict, lock = "INSERT INTO ", " ON CONFLICT DO NOTHING", " FOR UPDATE"
	case dialect.MySQL:
		insertIgnore, lock = "INSERT IGNORE INTO ", " FOR UPDATE"
	}
	qs.advance = "UPDATE " + applied + " SET last_sequence = ? WHERE consumer = ? AND aggregatetype = ? AND aggregateid = ? AND last_sequence = ?"
	qs.first = insertIgnore + applied + " (consumer, aggregatetype, aggregateid, last_sequence) VALUES (?, ?, ?, 1)" + onConflict
	qs.last = "SELECT last_sequence FROM " + applied + " WHERE consumer = ? AND aggregatetype = ? AND aggregateid = ?" + lock
	qs.dead = insertIgnore + dead + " (consumer, event_id, subject, " + q("type") + ", aggregatetype, aggregateid, " + q("sequence") +
		", headers, payload, " + q("error") + ", category, deliveries, dead_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)" + onConflict
	qs.listDead = "SELECT event_id, subject, headers, payload FROM " + dead + " WHERE consumer = ? ORDER BY dead_at"
	qs.deleteDead = "DELETE FROM " + dead + " WHERE consumer = ? AND event_id = ?"
	if d == dialect.Postgres {
		for _, s := range []*string{&qs.advance, &qs.first, &qs.last, &qs.dead, &qs.listDead, &qs.deleteDead} {
			*s = dollars(*s)
		}
	}
	return qs
}

// dollars numbers the ? placeholders of s for PostgreSQL.
func dollars(s string) string {
	out := make([]byte, 0, len(s)+16)
	n := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '?' {
			n++
			out = append(out, '$')
			out = strconv.AppendInt(out, int64(n), 10)
			continue
		}
		out = append(out, s[i])
	}
	return string(out)
}
