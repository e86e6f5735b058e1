package consumer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/bento-go/bento/driver"
	"github.com/bento-go/bento/outbox"
)

// Requeue publishes consumer's dead letters again — the given event ids,
// or all of them when ids is empty — and deletes each once the stream
// acknowledged it. It returns how many it requeued.
//
// A requeued message carries its event id in the header Bento-Requeued
// (its Nats-Msg-Id is new, so the stream's duplicate window does not drop
// it). The consumer applies it whatever its aggregate's order (the
// aggregate's later events went on without it) and still exactly once: the
// inbox skips it for every consumer that applied it already, other durable
// consumers of the stream included.
func Requeue(ctx context.Context, js jetstream.JetStream, drv *driver.Driver, names outbox.Names, consumer string, ids ...uuid.UUID) (int, error) {
	if err := validName(consumer); err != nil {
		return 0, err
	}
	q := newQueries(drv.Dialect(), TablesFor(names))
	want := map[uuid.UUID]bool{}
	for _, id := range ids {
		want[id] = true
	}
	rows, err := drv.QueryContext(ctx, q.listDead, consumer)
	if err != nil {
		return 0, fmt.Errorf("consumer: reading the dead letters of %s: %w", consumer, err)
	}
	type dead struct {
		id      uuid.UUID
		subject string
		headers []byte
		payload []byte
	}
	var all []dead
	for rows.Next() {
		var d dead
		var id string
		var headers any
		if err := rows.Scan(&id, &d.subject, &headers, &d.payload); err != nil {
			rows.Close()
			return 0, fmt.Errorf("consumer: reading the dead letters of %s: %w", consumer, err)
		}
		switch h := headers.(type) {
		case []byte:
			d.headers = h
		case string:
			d.headers = []byte(h)
		}
		if d.id, err = uuid.Parse(id); err != nil {
			rows.Close()
			return 0, fmt.Errorf("consumer: dead letter of %s with id %q: %w", consumer, id, err)
		}
		if len(want) == 0 || want[d.id] {
			all = append(all, d)
		}
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return 0, fmt.Errorf("consumer: reading the dead letters of %s: %w", consumer, err)
	}
	n := 0
	for _, d := range all {
		m := nats.NewMsg(d.subject)
		m.Data = d.payload
		if len(d.headers) > 0 {
			var h map[string]string
			if err := json.Unmarshal(d.headers, &h); err != nil {
				return n, fmt.Errorf("consumer: headers of dead letter %s: %w", d.id, err)
			}
			for k, v := range h {
				if len(k) >= 5 && strings.EqualFold(k[:5], "Nats-") {
					continue // broker instructions of the first publish
				}
				m.Header.Set(k, v)
			}
		}
		m.Header.Set(HeaderRequeued, d.id.String())
		m.Header.Set(jetstream.MsgIDHeader, d.id.String()+"/requeue/"+uuid.NewString())
		if _, err := js.PublishMsg(ctx, m); err != nil {
			return n, fmt.Errorf("consumer: requeueing %s to %s: %w", d.id, d.subject, err)
		}
		if _, err := drv.ExecContext(ctx, q.deleteDead, consumer, d.id.String()); err != nil {
			return n, fmt.Errorf("consumer: deleting requeued dead letter %s: %w", d.id, err)
		}
		n++
	}
	return n, nil
}
