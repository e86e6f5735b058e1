package outbox

import (
	"encoding/json"
	"fmt"
	"reflect"
	"sort"
)

// Registry maps event types to the Go types that decode their payloads. A
// consumer builds one with the events it understands. It is not safe to
// Register while decoding; build it first.
type Registry struct {
	types map[string]reflect.Type
}

// NewRegistry returns a registry of the given events (zero values will do).
func NewRegistry(events ...Event) *Registry {
	r := &Registry{types: map[string]reflect.Type{}}
	for _, e := range events {
		r.Register(e)
	}
	return r
}

// Register adds an event type. A value or a pointer registers the value
// type; decoding returns values.
func (r *Registry) Register(e Event) {
	t := reflect.TypeOf(e)
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	r.types[e.EventType()] = t
}

// Types returns the registered event types, sorted.
func (r *Registry) Types() []string {
	out := make([]string, 0, len(r.types))
	for k := range r.types {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Decode turns a payload of event type typ into its Go value.
func (r *Registry) Decode(typ string, payload []byte) (Event, error) {
	t, ok := r.types[typ]
	if !ok {
		return nil, fmt.Errorf("outbox: unknown event type %q; registered: %v", typ, r.Types())
	}
	v := reflect.New(t)
	if err := json.Unmarshal(payload, v.Interface()); err != nil {
		return nil, fmt.Errorf("outbox: decoding %s: %w", typ, err)
	}
	e, ok := v.Elem().Interface().(Event)
	if !ok {
		e, ok = v.Interface().(Event)
	}
	if !ok {
		return nil, fmt.Errorf("outbox: %s decodes to %s, which is not an Event", typ, t)
	}
	return e, nil
}
