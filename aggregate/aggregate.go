// Package aggregate marks ent schemas as DDD aggregates and provides the
// ent hooks that version them and, optionally, emit their change events.
//
// A schema becomes an aggregate by using the Mixin:
//
//	func (Order) Mixin() []ent.Mixin {
//		return []ent.Mixin{aggregate.Mixin{Type: "Order"}}
//	}
//
// The mixin adds a version field for optimistic concurrency and an
// annotation that Bento's ent extension (package codegen) reads to generate
// AggregateType/AggregateID methods and the Specs that Hooks needs. The
// hooks are registered on the client, never through package state:
//
//	client.Use(aggregate.Hooks(ent.AggregateSpecs()...)...)
//
// (the generated NewUnitOfWork does this).
package aggregate

import (
	"context"
	"errors"
	"fmt"
	"reflect"

	"entgo.io/ent"
	"entgo.io/ent/dialect/sql"
	"entgo.io/ent/schema"
	"entgo.io/ent/schema/field"
	"entgo.io/ent/schema/mixin"

	"github.com/bento-go/bento/outbox"
	"github.com/bento-go/bento/resilience"
)

// VersionField is the name of the optimistic-concurrency field the Mixin
// adds.
const VersionField = "version"

// AnnotationName is the name under which the Annotation is stored in ent's
// graph.
const AnnotationName = "BentoAggregate"

// Annotation marks a schema as an aggregate root.
type Annotation struct {
	// Type is the aggregate type written to the outbox (Debezium's
	// aggregatetype); it defaults to the schema's name.
	Type string `json:"type,omitempty"`
	// AutoEvents makes the hooks emit <Type>Created, <Type>Updated and
	// <Type>Deleted events with the changed fields for every mutation,
	// bulk ones included.
	AutoEvents bool `json:"auto_events,omitempty"`
}

// Name implements schema.Annotation.
func (Annotation) Name() string { return AnnotationName }

// Mixin makes a schema an aggregate: a version field (int64, starting at
// 1, incremented by every update through the hooks) and the Annotation.
type Mixin struct {
	mixin.Schema
	// Type is the aggregate type; empty means the schema's name.
	Type string
	// AutoEvents turns on the created/updated/deleted events.
	AutoEvents bool
}

// Fields adds the version field.
func (Mixin) Fields() []ent.Field {
	return []ent.Field{
		field.Int64(VersionField).Default(1).Positive().
			Comment("optimistic concurrency: incremented by every update; an update of a stale version fails"),
	}
}

// Annotations adds the aggregate annotation.
func (m Mixin) Annotations() []schema.Annotation {
	return []schema.Annotation{Annotation{Type: m.Type, AutoEvents: m.AutoEvents}}
}

// Spec is what the hooks need to know of one aggregate schema; Bento's ent
// extension generates one per aggregate (AggregateSpecs).
type Spec struct {
	// Schema is the ent type name, as ent.Mutation.Type reports it.
	Schema string
	// Type is the aggregate type.
	Type string
	// AutoEvents as in the Annotation.
	AutoEvents bool
	// IDOf returns the id of an entity a mutation returned.
	IDOf func(v ent.Value) (string, bool)
	// MutationID returns the id a single-entity mutation targets.
	MutationID func(m ent.Mutation) (string, bool)
	// IDs returns the ids a mutation will affect (queried before it runs).
	IDs func(ctx context.Context, m ent.Mutation) ([]string, error)
	// IsNotFound reports ent's not-found error of the generated package.
	IsNotFound func(error) bool
}

// ConflictError is returned when an update found its aggregate changed by
// someone else since it was read: its version is stale. It arrives wrapped
// in a *resilience.Error of category transient, so a unit of work retries
// the whole unit, reading the aggregate afresh.
type ConflictError struct {
	Type    string
	ID      string
	Version int64 // the version the update expected
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("aggregate: %s %s was changed concurrently: version %d is stale (reload it and try again)", e.Type, e.ID, e.Version)
}

// ErrConflict is matched by every ConflictError (errors.Is).
var ErrConflict = errors.New("aggregate: version conflict")

// Is makes errors.Is(err, ErrConflict) true.
func (e *ConflictError) Is(target error) bool { return target == ErrConflict }

// Changed is the payload of the automatic events: the aggregate's id and,
// for created and updated events, what the mutation changed: the fields it
// set (new values), the numeric fields it incremented (by how much) and the
// fields it cleared.
type Changed struct {
	typ     string
	ID      string         `json:"id"`
	Fields  map[string]any `json:"fields,omitempty"`
	Added   map[string]any `json:"added,omitempty"`
	Cleared []string       `json:"cleared,omitempty"`
}

// EventType implements outbox.Event.
func (c Changed) EventType() string { return c.typ }

// Hooks returns the ent hooks for the given aggregates:
//
//   - UpdateOne: the update applies only if the row still has the version
//     the entity was read with (UpdateOne(entity)), or that it had when the
//     hook read it (UpdateOneID), and increments it; otherwise it fails with
//     a ConflictError. Setting the version explicitly skips the check.
//   - Update (bulk): increments every affected row's version.
//   - With AutoEvents: records <Type>Created/Updated/Deleted for every
//     affected aggregate in the unit of work of the mutation's context,
//     bulk updates and deletes included (their ids are read first). Such
//     mutations fail outside a unit of work: their events could not be
//     stored with them.
func Hooks(specs ...Spec) []ent.Hook {
	bySchema := make(map[string]Spec, len(specs))
	for _, s := range specs {
		if s.Type == "" {
			s.Type = s.Schema
		}
		bySchema[s.Schema] = s
	}
	return []ent.Hook{func(next ent.Mutator) ent.Mutator {
		return ent.MutateFunc(func(ctx context.Context, m ent.Mutation) (ent.Value, error) {
			spec, ok := bySchema[m.Type()]
			if !ok {
				return next.Mutate(ctx, m)
			}
			return mutate(ctx, spec, next, m)
		})
	}}
}

type wherer interface {
	WhereP(...func(*sql.Selector))
}

func mutate(ctx context.Context, spec Spec, next ent.Mutator, m ent.Mutation) (ent.Value, error) {
	op := m.Op()
	var (
		expected int64
		checked  bool
		ids      []string
		err      error
	)
	if spec.AutoEvents {
		// Refuse before anything is written: a change whose event cannot
		// be recorded must not happen (Record of no events only checks
		// that ctx has a collector bound to a transaction still open).
		if err := outbox.Record(ctx, spec.Type, spec.Type); err != nil {
			return nil, fmt.Errorf("aggregate: %s %s: %w", spec.Type, op, err)
		}
	}
	_, versionSet := m.Field(VersionField)
	switch {
	case op.Is(ent.OpUpdateOne) && !versionSet:
		old, err := m.OldField(ctx, VersionField)
		if err != nil {
			return nil, fmt.Errorf("aggregate: %s: reading the version: %w", spec.Type, err)
		}
		expected, _ = old.(int64)
		w, ok := m.(wherer)
		if !ok {
			return nil, fmt.Errorf("aggregate: %s mutation %T has no WhereP", spec.Type, m)
		}
		w.WhereP(sql.FieldEQ(VersionField, expected))
		if err := m.SetField(VersionField, expected+1); err != nil {
			return nil, err
		}
		checked = true
	case op.Is(ent.OpUpdate) && !versionSet:
		if _, added := m.AddedField(VersionField); !added {
			if err := m.AddField(VersionField, int64(1)); err != nil {
				return nil, err
			}
		}
	}
	if spec.AutoEvents && (op.Is(ent.OpUpdate) || op.Is(ent.OpDelete) || op.Is(ent.OpDeleteOne)) {
		if ids, err = spec.IDs(ctx, m); err != nil {
			return nil, fmt.Errorf("aggregate: %s: reading the affected ids: %w", spec.Type, err)
		}
	}
	var change Changed
	if spec.AutoEvents && !op.Is(ent.OpDelete|ent.OpDeleteOne) {
		change = changedFields(m)
	}
	v, err := next.Mutate(ctx, m)
	if err != nil {
		if checked && spec.IsNotFound != nil && spec.IsNotFound(err) {
			id, _ := spec.MutationID(m)
			return nil, &resilience.Error{Category: resilience.Transient, Code: "version_conflict", Op: "update",
				Err: &ConflictError{Type: spec.Type, ID: id, Version: expected}}
		}
		return nil, err
	}
	if checked {
		// Under MySQL/MariaDB REPEATABLE READ the UPDATE matches no row
		// when the version changed, but ent's existence check and its
		// read-back are snapshot reads that still see the old row, so no
		// error comes back. The entity read back tells: our own update is
		// visible to our snapshot, a skipped one is not.
		if got, ok := versionOf(v); ok && got != expected+1 {
			id, _ := spec.MutationID(m)
			return nil, &resilience.Error{Category: resilience.Transient, Code: "version_conflict", Op: "update",
				Err: &ConflictError{Type: spec.Type, ID: id, Version: expected}}
		}
	}
	if !spec.AutoEvents {
		return v, nil
	}
	var typ string
	switch {
	case op.Is(ent.OpCreate):
		typ = spec.Type + "Created"
	case op.Is(ent.OpUpdate | ent.OpUpdateOne):
		typ = spec.Type + "Updated"
	default:
		typ = spec.Type + "Deleted"
	}
	if op.Is(ent.OpCreate | ent.OpUpdateOne) {
		if id, ok := spec.IDOf(v); ok {
			ids = []string{id}
		}
	}
	for _, id := range ids {
		if err := outbox.Record(ctx, spec.Type, id, Changed{typ: typ, ID: id, Fields: change.Fields, Added: change.Added, Cleared: change.Cleared}); err != nil {
			return nil, fmt.Errorf("aggregate: %s %s: %w", spec.Type, id, err)
		}
	}
	return v, nil
}

// versionOf returns the version field of an entity an UpdateOne returned
// (the generated struct's Version field, which the Mixin adds).
func versionOf(v ent.Value) (int64, bool) {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() || rv.Elem().Kind() != reflect.Struct {
		return 0, false
	}
	f := rv.Elem().FieldByName("Version")
	if !f.IsValid() || f.Kind() != reflect.Int64 {
		return 0, false
	}
	return f.Int(), true
}

// changedFields returns what a mutation changes — the fields it sets, the
// ones it adds to and the ones it clears — the version excepted.
func changedFields(m ent.Mutation) Changed {
	var c Changed
	for _, n := range m.Fields() {
		if v, ok := m.Field(n); ok && n != VersionField {
			if c.Fields == nil {
				c.Fields = map[string]any{}
			}
			c.Fields[n] = v
		}
	}
	for _, n := range m.AddedFields() {
		if v, ok := m.AddedField(n); ok && n != VersionField {
			if c.Added == nil {
				c.Added = map[string]any{}
			}
			c.Added[n] = v
		}
	}
	for _, n := range m.ClearedFields() {
		if n != VersionField {
			c.Cleared = append(c.Cleared, n)
		}
	}
	return c
}
