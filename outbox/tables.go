package outbox

import (
	"entgo.io/ent/dialect"
	"entgo.io/ent/dialect/sql/schema"
	"entgo.io/ent/schema/field"
)

// DefaultTable is the outbox table's default name (OUTBOX_TABLE).
const DefaultTable = "bento_outbox"

// Statuses of an outbox row.
const (
	StatusPending   = "pending"
	StatusPublished = "published"
	StatusDead      = "dead"
)

// Names are the framework's table names derived from the outbox table's.
type Names struct {
	Outbox      string // the outbox: <table>
	Sequences   string // per-aggregate sequences: <table>_sequences
	Idempotency string // idempotency keys: <table>_idempotency
	Inbox       string // consumer inbox: <table>_inbox
	Relayed     string // how far relays published hot aggregates: <table>_relayed
}

// NamesFor returns the table names for an outbox table name ("" means
// DefaultTable).
func NamesFor(table string) Names {
	if table == "" {
		table = DefaultTable
	}
	return Names{Outbox: table, Sequences: table + "_sequences", Idempotency: table + "_idempotency", Inbox: table + "_inbox",
		Relayed: table + "_relayed"}
}

// microTime is a timestamp with microseconds on every dialect.
var microTime = map[string]string{dialect.MySQL: "datetime(6)", dialect.Postgres: "timestamptz"}

// Tables returns the framework's tables for bento.WithTables, so that
// Migrate creates them with the application's own.
func Tables(n Names) []*schema.Table {
	id := &schema.Column{Name: "id", Type: field.TypeUUID}
	aggType := &schema.Column{Name: "aggregatetype", Type: field.TypeString, Size: 255}
	aggID := &schema.Column{Name: "aggregateid", Type: field.TypeString, Size: 255}
	seq := &schema.Column{Name: "sequence", Type: field.TypeInt64}
	status := &schema.Column{Name: "status", Type: field.TypeString, Size: 16, Default: StatusPending}
	next := &schema.Column{Name: "next_attempt_at", Type: field.TypeInt64,
		Comment: "unix microseconds before which the relay does not try the row"}
	outbox := schema.NewTable(n.Outbox).
		AddPrimary(id).
		AddColumn(aggType).
		AddColumn(aggID).
		AddColumn(&schema.Column{Name: "type", Type: field.TypeString, Size: 255}).
		AddColumn(&schema.Column{Name: "payload", Type: field.TypeJSON}).
		AddColumn(seq).
		AddColumn(&schema.Column{Name: "headers", Type: field.TypeJSON, Nullable: true}).
		AddColumn(&schema.Column{Name: "occurred_at", Type: field.TypeTime, SchemaType: microTime}).
		AddColumn(status).
		AddColumn(&schema.Column{Name: "attempts", Type: field.TypeInt32, Default: 0}).
		AddColumn(next).
		AddColumn(&schema.Column{Name: "last_error", Type: field.TypeString, Size: 2048, Nullable: true}).
		AddColumn(&schema.Column{Name: "published_at", Type: field.TypeTime, Nullable: true, SchemaType: microTime})
	// The relay's claim (claim.go): the due index orders the window of
	// pending rows by due time, with the id as a tie-breaker for its
	// cursor; the pending index finds an aggregate's head and run without
	// reading its published or dead rows.
	outbox.AddIndex(n.Outbox+"_due", false, []string{"status", "next_attempt_at", "id"})
	outbox.AddIndex(n.Outbox+"_pending", false, []string{"aggregatetype", "aggregateid", "status", "sequence"})
	outbox.AddIndex(n.Outbox+"_aggregate_sequence", true, []string{"aggregatetype", "aggregateid", "sequence"})
	outbox.SetComment("Bento transactional outbox (Debezium outbox event router compatible)")

	sAggType := &schema.Column{Name: "aggregatetype", Type: field.TypeString, Size: 255}
	sAggID := &schema.Column{Name: "aggregateid", Type: field.TypeString, Size: 255}
	sequences := schema.NewTable(n.Sequences).
		AddPrimary(sAggType).
		AddPrimary(sAggID).
		AddColumn(&schema.Column{Name: "last_sequence", Type: field.TypeInt64})

	key := &schema.Column{Name: "idempotency_key", Type: field.TypeString, Size: 255}
	idem := schema.NewTable(n.Idempotency).
		AddPrimary(key).
		AddColumn(&schema.Column{Name: "result", Type: field.TypeJSON, Nullable: true}).
		AddColumn(&schema.Column{Name: "created_at", Type: field.TypeTime, SchemaType: microTime}).
		AddColumn(&schema.Column{Name: "fingerprint", Type: field.TypeString, Size: 64, Nullable: true})
	idem.AddIndex(n.Idempotency+"_created_at", false, []string{"created_at"})

	consumer := &schema.Column{Name: "consumer", Type: field.TypeString, Size: 255}
	eventID := &schema.Column{Name: "event_id", Type: field.TypeUUID}
	inbox := schema.NewTable(n.Inbox).
		AddPrimary(consumer).
		AddPrimary(eventID).
		AddColumn(&schema.Column{Name: "processed_at", Type: field.TypeTime, SchemaType: microTime})

	// The last sequence a relay published of an aggregate it published a
	// run of (PostgreSQL relays keep it, see claim.go): the head probe of
	// every relay starts after it instead of walking the index entries of
	// the aggregate's deleted rows.
	rAggType := &schema.Column{Name: "aggregatetype", Type: field.TypeString, Size: 255}
	rAggID := &schema.Column{Name: "aggregateid", Type: field.TypeString, Size: 255}
	relayed := schema.NewTable(n.Relayed).
		AddPrimary(rAggType).
		AddPrimary(rAggID).
		AddColumn(&schema.Column{Name: "sequence", Type: field.TypeInt64})

	return []*schema.Table{outbox, sequences, idem, inbox, relayed}
}
