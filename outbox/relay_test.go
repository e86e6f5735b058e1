package outbox_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/bento-go/bento"
	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/ent"
	"github.com/bento-go/bento/internal/testdb"
	"github.com/bento-go/bento/internal/testnats"
	"github.com/bento-go/bento/outbox"
	"github.com/bento-go/bento/outbox/natspub"
	"github.com/bento-go/bento/shop"
)

// stepped is the event the relay tests raise on aggregates of their own.
type stepped struct {
	N int `json:"n"`
}

func (stepped) EventType() string { return "Stepped" }

// testStream is the JetStream stream of the relay tests (on a private
// server, so it never collides with anyone's).
const testStream = "BENTO_TEST"

// relayEnv is a migrated test database with the shop service over it, and
// a sink that records what was published: the channel publisher on SQLite,
// a private JetStream server elsewhere.
type relayEnv struct {
	*writeEnv
	uow  *ent.UnitOfWork
	svc  *shop.Service
	sink *sink
}

func openRelayEnv(t *testing.T, cfg config.Config) *relayEnv {
	t.Helper()
	w := openWriteEnv(t, cfg)
	uow := ent.NewUnitOfWork(w.client)
	return &relayEnv{writeEnv: w, uow: uow, svc: shop.NewService(uow, w.client), sink: newSink(t, w.db.Dialect())}
}

// relay returns a relay over e's database publishing to the sink, with
// the default settings adjusted by adjust.
func (e *relayEnv) relay(adjust func(*outbox.RelayConfig)) *outbox.Relay {
	e.t.Helper()
	return newRelay(e.t, e.db, e.sink, adjust)
}

func newRelay(t testing.TB, db *bento.DB, pub outbox.Publisher, adjust func(*outbox.RelayConfig)) *outbox.Relay {
	t.Helper()
	cfg := db.RelayConfig()
	if adjust != nil {
		adjust(&cfg)
	}
	r, err := db.NewRelay(pub, cfg)
	if err != nil {
		t.Fatalf("NewRelay: %v", err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// place places n orders and returns their ids.
func (e *relayEnv) place(ctx context.Context, n int) []int {
	e.t.Helper()
	ids := make([]int, n)
	for i := range ids {
		o, err := e.svc.Place(ctx, shop.PlaceOrder{Customer: fmt.Sprintf("c%d@example.com", i),
			Lines: []shop.Line{{SKU: "SKU-" + strconv.Itoa(i), Quantity: i%3 + 1, UnitPriceCents: 250}}}, "")
		if err != nil {
			e.t.Fatalf("Place: %v", err)
		}
		ids[i] = o.ID
	}
	return ids
}

// record commits one unit of work recording events on aggregates of type
// aggType: for each id, the given number of stepped events.
func (e *relayEnv) record(ctx context.Context, aggType string, events map[string][]int) {
	e.t.Helper()
	err := e.uow.Do(ctx, func(ctx context.Context, _ *ent.Client) error {
		for _, id := range slices.Sorted(maps.Keys(events)) {
			evs := make([]outbox.Event, len(events[id]))
			for i, n := range events[id] {
				evs[i] = stepped{n}
			}
			if err := outbox.Record(ctx, aggType, id, evs...); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		e.t.Fatalf("recording events: %v", err)
	}
}

func (e *relayEnv) stats() outbox.Stats {
	e.t.Helper()
	st, err := outbox.ReadStats(context.Background(), e.db.Driver(), e.db.Names())
	if err != nil {
		e.t.Fatalf("ReadStats: %v", err)
	}
	return st
}

// outboxRow is an outbox row with the relay's columns.
type outboxRow struct {
	ID, AggregateType, AggregateID, Status string
	Sequence                               int64
	Attempts                               int
	LastError                              *string
}

// outboxRows returns the rows of the outbox matching where (a condition
// written with ? and `quotes`), by aggregate and sequence.
func (e *relayEnv) outboxRows(where string, args ...any) []outboxRow {
	e.t.Helper()
	id := "id"
	if e.db.Dialect() == testdb.Postgres {
		id = "id::text"
	}
	q := "SELECT " + id + ", aggregatetype, aggregateid, status, `sequence`, attempts, last_error FROM bento_outbox"
	if where != "" {
		q += " WHERE " + where
	}
	rs, err := e.db.Driver().DB().Query(e.q(q+" ORDER BY aggregatetype, aggregateid, `sequence`"), args...)
	if err != nil {
		e.t.Fatal(err)
	}
	defer rs.Close()
	var out []outboxRow
	for rs.Next() {
		var r outboxRow
		if err := rs.Scan(&r.ID, &r.AggregateType, &r.AggregateID, &r.Status, &r.Sequence, &r.Attempts, &r.LastError); err != nil {
			e.t.Fatal(err)
		}
		out = append(out, r)
	}
	if err := rs.Err(); err != nil {
		e.t.Fatal(err)
	}
	return out
}

// auditRow is an event as the audit trigger saw it committed.
type auditRow struct {
	ID, AggregateType, AggregateID string
	Sequence                       int64
}

// audit installs a trigger that copies every outbox row inserted into
// bento_test_audit, so a test knows every committed event id even after
// the relay deleted the row. It counts what committed, not what Bento
// reports.
func audit(t testing.TB, w *writeEnv) {
	t.Helper()
	var stmts []string
	switch w.db.Dialect() {
	case testdb.Postgres:
		stmts = []string{
			`CREATE TABLE bento_test_audit (id uuid PRIMARY KEY, aggregatetype text NOT NULL, aggregateid text NOT NULL, seq bigint NOT NULL)`,
			`CREATE FUNCTION bento_test_audit() RETURNS trigger LANGUAGE plpgsql AS $$
			BEGIN INSERT INTO bento_test_audit VALUES (NEW.id, NEW.aggregatetype, NEW.aggregateid, NEW.sequence); RETURN NEW; END $$`,
			`CREATE TRIGGER bento_test_audit AFTER INSERT ON bento_outbox FOR EACH ROW EXECUTE FUNCTION bento_test_audit()`,
		}
	case testdb.MySQL:
		stmts = []string{
			"CREATE TABLE bento_test_audit (id char(36) PRIMARY KEY, aggregatetype varchar(255) NOT NULL, aggregateid varchar(255) NOT NULL, seq bigint NOT NULL)",
			"CREATE TRIGGER bento_test_audit AFTER INSERT ON bento_outbox FOR EACH ROW " +
				"INSERT INTO bento_test_audit VALUES (NEW.id, NEW.aggregatetype, NEW.aggregateid, NEW.`sequence`)",
		}
	default:
		stmts = []string{
			`CREATE TABLE bento_test_audit (id text PRIMARY KEY, aggregatetype text NOT NULL, aggregateid text NOT NULL, seq integer NOT NULL)`,
			`CREATE TRIGGER bento_test_audit AFTER INSERT ON bento_outbox BEGIN
			INSERT INTO bento_test_audit VALUES (NEW.id, NEW.aggregatetype, NEW.aggregateid, NEW."sequence"); END`,
		}
	}
	for _, s := range stmts {
		if _, err := w.db.Driver().DB().Exec(s); err != nil {
			t.Fatalf("audit trigger: %s: %v", s, err)
		}
	}
}

// audited returns every committed event, by id.
func audited(t testing.TB, w *writeEnv) map[string]auditRow {
	t.Helper()
	id := "id"
	if w.db.Dialect() == testdb.Postgres {
		id = "id::text"
	}
	rs, err := w.db.Driver().DB().Query("SELECT " + id + ", aggregatetype, aggregateid, seq FROM bento_test_audit")
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	out := map[string]auditRow{}
	for rs.Next() {
		var r auditRow
		if err := rs.Scan(&r.ID, &r.AggregateType, &r.AggregateID, &r.Sequence); err != nil {
			t.Fatal(err)
		}
		out[r.ID] = r
	}
	if err := rs.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// delivery is one message as the broker got it.
type delivery struct {
	ID                         uuid.UUID
	Subject                    string
	AggregateType, AggregateID string
	Type                       string
	Sequence                   int64
	Payload                    json.RawMessage
	Headers                    map[string]string // the event's own headers
}

// sink is the tests' publisher: the channel publisher on SQLite, or a
// natspub publisher on a private JetStream server. reject, if set, fails
// the messages it returns an error for (through ChannelPublisher.Reject on
// SQLite, before the broker elsewhere).
type sink struct {
	t      testing.TB
	ch     *outbox.ChannelPublisher
	srv    *testnats.Server
	js     *natspub.Publisher
	mu     sync.Mutex
	reject func(outbox.Message) error
	got    []delivery // channel deliveries drained so far
}

func newSink(t testing.TB, dialect string) *sink {
	t.Helper()
	s := &sink{t: t}
	if dialect == testdb.SQLite {
		s.ch = outbox.NewChannelPublisher(1 << 15)
		s.ch.Reject = s.rejected
		return s
	}
	s.srv = testnats.Start(t)
	s.js = connectJS(t, s.srv.URL())
	return s
}

// connectJS connects a natspub publisher to a private server and creates
// the test stream.
func connectJS(t testing.TB, url string) *natspub.Publisher {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p, err := natspub.Connect(ctx, natspub.Config{URL: url, Stream: testStream, CreateStream: true})
	if err != nil {
		t.Fatalf("natspub.Connect: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func (s *sink) setReject(f func(outbox.Message) error) {
	s.mu.Lock()
	s.reject = f
	s.mu.Unlock()
}

func (s *sink) rejected(m outbox.Message) error {
	s.mu.Lock()
	f := s.reject
	s.mu.Unlock()
	if f == nil {
		return nil
	}
	return f(m)
}

// Publish implements outbox.Publisher.
func (s *sink) Publish(ctx context.Context, msgs []outbox.Message) []error {
	if s.ch != nil {
		return s.ch.Publish(ctx, msgs)
	}
	out := make([]error, len(msgs))
	var pass []outbox.Message
	var at []int
	var guard outbox.RunGuard
	for i, m := range msgs {
		if guard.Blocked(m) {
			out[i] = outbox.ErrSkipped
			continue
		}
		if out[i] = s.rejected(m); out[i] == nil {
			pass = append(pass, m)
			at = append(at, i)
		} else {
			guard.Fail(m)
		}
	}
	if len(pass) > 0 {
		for j, err := range s.js.Publish(ctx, pass) {
			out[at[j]] = err
		}
	}
	return out
}

// deliveries returns everything the broker stored so far, in order.
func (s *sink) deliveries() []delivery {
	s.t.Helper()
	if s.ch != nil {
		s.mu.Lock()
		defer s.mu.Unlock()
		for {
			select {
			case m := <-s.ch.C():
				s.got = append(s.got, delivery{ID: m.ID, AggregateType: m.AggregateType, AggregateID: m.AggregateID,
					Type: m.Type, Sequence: m.Sequence, Payload: m.Payload, Headers: m.Headers})
			default:
				return slices.Clone(s.got)
			}
		}
	}
	return readStream(s.t, s.js.JetStream(), testStream)
}

// count returns how many messages the broker stored.
func (s *sink) count() int {
	s.t.Helper()
	if s.ch != nil {
		return len(s.deliveries())
	}
	return streamCount(s.t, s.js.JetStream(), testStream)
}

func streamCount(t testing.TB, js jetstream.JetStream, stream string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return testnats.StreamCount(ctx, t, js, stream)
}

// readStream reads the whole stream, each message once, in stream order
// (testnats.ReadStream).
func readStream(t testing.TB, js jetstream.JetStream, stream string) []delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	msgs := testnats.ReadStream(ctx, t, js, stream)
	out := make([]delivery, 0, len(msgs))
	for _, m := range msgs {
		out = append(out, decodeNATS(t, m.Subject, m.Header, m.Data))
	}
	return out
}

// decodeNATS turns a stored message back into a delivery; every message
// must carry Nats-Msg-Id and the Bento-* headers.
func decodeNATS(t testing.TB, subject string, h nats.Header, data []byte) delivery {
	t.Helper()
	d := delivery{Subject: subject, Payload: json.RawMessage(data), AggregateType: h.Get(natspub.HeaderAggregateType),
		AggregateID: h.Get(natspub.HeaderAggregateID), Type: h.Get(natspub.HeaderEventType)}
	var err error
	if d.ID, err = uuid.Parse(h.Get(jetstream.MsgIDHeader)); err != nil {
		t.Fatalf("message on %s: Nats-Msg-Id %q: %v", subject, h.Get(jetstream.MsgIDHeader), err)
	}
	if d.Sequence, err = strconv.ParseInt(h.Get(natspub.HeaderSequence), 10, 64); err != nil {
		t.Fatalf("message %s: %s %q: %v", d.ID, natspub.HeaderSequence, h.Get(natspub.HeaderSequence), err)
	}
	for k := range h {
		if !strings.HasPrefix(k, "Nats-") && !strings.HasPrefix(k, "Bento-") {
			if d.Headers == nil {
				d.Headers = map[string]string{}
			}
			d.Headers[k] = h.Get(k)
		}
	}
	return d
}

// exactlyOnce checks that every audited event was delivered exactly once
// and nothing else was, and that each aggregate's events arrived in
// sequence order.
func exactlyOnce(t testing.TB, want map[string]auditRow, got []delivery) {
	t.Helper()
	seen := map[uuid.UUID]int{}
	for _, d := range got {
		seen[d.ID]++
	}
	missing, dups, unknown := 0, 0, 0
	for id := range want {
		switch n := seen[uuid.MustParse(id)]; {
		case n == 0:
			missing++
			if missing <= 3 {
				t.Errorf("event %s (%+v) was never delivered", id, want[id])
			}
		case n > 1:
			dups++
			if dups <= 3 {
				t.Errorf("event %s was delivered %d times", id, n)
			}
		}
	}
	for id := range seen {
		if _, ok := want[id.String()]; !ok {
			unknown++
		}
	}
	if missing+dups+unknown > 0 || len(got) != len(want) {
		t.Fatalf("%d events committed, %d messages delivered: %d missing, %d delivered more than once, %d unknown ids",
			len(want), len(got), missing, dups, unknown)
	}
	inOrder(t, got)
}

// inOrder checks that each aggregate's deliveries have increasing
// sequences, starting where that aggregate's first delivery starts.
func inOrder(t testing.TB, got []delivery) {
	t.Helper()
	last := map[[2]string]int64{}
	bad := 0
	for i, d := range got {
		k := [2]string{d.AggregateType, d.AggregateID}
		if prev, ok := last[k]; ok && d.Sequence <= prev {
			bad++
			if bad <= 3 {
				t.Errorf("delivery %d: %s %s sequence %d after %d", i, d.AggregateType, d.AggregateID, d.Sequence, prev)
			}
		}
		last[k] = d.Sequence
	}
	if bad > 0 {
		t.Fatalf("%d deliveries out of per-aggregate order", bad)
	}
}

// waitFor polls cond every few milliseconds until it holds or timeout
// passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	if !waitUntil(timeout, cond) {
		t.Fatalf("timed out after %s waiting for %s", timeout, what)
	}
}

// waitUntil reports whether cond held within timeout.
func waitUntil(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

func byAggregate(ds []delivery) map[string][]delivery {
	out := map[string][]delivery{}
	for _, d := range ds {
		k := d.AggregateType + "/" + d.AggregateID
		out[k] = append(out[k], d)
	}
	return out
}

func sequences(ds []delivery) []int64 {
	out := make([]int64, len(ds))
	for i, d := range ds {
		out[i] = d.Sequence
	}
	return out
}

// TestRelayPublishes: placed orders are published by one RunOnce, each
// with its event id, aggregate, type, sequence, payload and headers, and
// the outbox is empty afterwards.
func TestRelayPublishes(t *testing.T) {
	testdb.Each(t, func(t *testing.T, cfg config.Config) {
		e := openRelayEnv(t, cfg)
		ctx := outbox.WithCorrelationID(context.Background(), "corr-42")
		const n = 25
		ids := e.place(ctx, n)
		rows := e.outboxRows("")
		if len(rows) != n {
			t.Fatalf("%d outbox rows after placing %d orders", len(rows), n)
		}
		if st := e.stats(); st.Pending != n || st.Dead != 0 || st.OldestAge <= 0 {
			t.Fatalf("stats before the relay: %+v, want %d pending with an age", st, n)
		}
		r := e.relay(nil)
		start := time.Now()
		res, err := r.RunOnce(context.Background())
		if err != nil {
			t.Fatalf("RunOnce: %v", err)
		}
		t.Logf("RunOnce published %d in %s", res.Published, time.Since(start))
		if res.Published != n || res.Failed != 0 || res.Dead != 0 {
			t.Errorf("RunOnce = %+v, want %d published", res, n)
		}
		if st := e.stats(); st.Pending != 0 || st.Dead != 0 || st.Published != 0 {
			t.Errorf("stats after the relay: %+v, want all zero", st)
		}
		if c := e.count("SELECT COUNT(*) FROM bento_outbox"); c != 0 {
			t.Errorf("%d outbox rows left; without retention published rows are deleted", c)
		}

		got := e.sink.deliveries()
		if len(got) != n {
			t.Fatalf("%d messages delivered, want %d", len(got), n)
		}
		rowByID := map[uuid.UUID]outboxRow{}
		for _, r := range rows {
			rowByID[uuid.MustParse(r.ID)] = r
		}
		orders := map[string]bool{}
		for _, id := range ids {
			orders[strconv.Itoa(id)] = true
		}
		for _, d := range got {
			row, ok := rowByID[d.ID]
			if !ok {
				t.Fatalf("delivered event id %s is no outbox row's", d.ID)
			}
			delete(rowByID, d.ID)
			if d.AggregateType != "Order" || d.AggregateID != row.AggregateID || !orders[d.AggregateID] ||
				d.Type != "OrderPlaced" || d.Sequence != 1 {
				t.Errorf("delivery %+v does not match its row %+v", d, row)
			}
			var ev shop.OrderPlaced
			if err := json.Unmarshal(d.Payload, &ev); err != nil {
				t.Fatalf("payload %s: %v", d.Payload, err)
			}
			if strconv.Itoa(ev.OrderID) != d.AggregateID || len(ev.Lines) != 1 || ev.TotalCents <= 0 ||
				!strings.HasSuffix(ev.Customer, "@example.com") {
				t.Errorf("payload %s does not describe order %s", d.Payload, d.AggregateID)
			}
			if d.Headers[outbox.HeaderCorrelationID] != "corr-42" {
				t.Errorf("delivery %s headers %v, want correlation_id corr-42", d.ID, d.Headers)
			}
			if e.sink.js != nil && d.Subject != "bento.Order.OrderPlaced" {
				t.Errorf("subject %q, want bento.Order.OrderPlaced", d.Subject)
			}
		}

		// Nothing pending: another run claims nothing.
		if res, err := r.RunOnce(context.Background()); err != nil || res.Claimed != 0 {
			t.Errorf("second RunOnce = %+v, %v; want nothing claimed", res, err)
		}
	})
}

// TestRelayPerAggregateOrder: invariant — an aggregate's events reach the
// broker in sequence order, whether raised in one unit of work or several;
// while an aggregate's head event fails, none of its later events is
// published, and other aggregates are not held up.
func TestRelayPerAggregateOrder(t *testing.T) {
	testdb.Each(t, func(t *testing.T, cfg config.Config) {
		e := openRelayEnv(t, cfg)
		ctx := context.Background()
		orders := e.place(ctx, 3) // each order: OrderPlaced, sequence 1
		// Three more events per order: two in one unit of work, one in
		// another, all through outbox.Raise on the loaded aggregate.
		for _, batch := range [][]int{{2, 3}, {4}} {
			err := e.uow.Do(ctx, func(ctx context.Context, tx *ent.Client) error {
				for _, id := range orders {
					o, err := tx.Order.Get(ctx, id)
					if err != nil {
						return err
					}
					for _, n := range batch {
						if err := outbox.Raise(ctx, o, stepped{n}); err != nil {
							return err
						}
					}
				}
				return nil
			})
			if err != nil {
				t.Fatalf("raising events: %v", err)
			}
		}
		held := strconv.Itoa(orders[0])
		var rejections atomic.Int64
		e.sink.setReject(func(m outbox.Message) error {
			if m.AggregateID == held {
				if m.Sequence != 1 {
					t.Errorf("event %d of the held order was offered before its head was published", m.Sequence)
				}
				rejections.Add(1)
				return errors.New("broker says no")
			}
			return nil
		})
		r := e.relay(func(c *outbox.RelayConfig) { c.Backoff, c.MaxBackoff = 20*time.Millisecond, 20*time.Millisecond })
		for range 3 {
			if _, err := r.RunOnce(ctx); err != nil {
				t.Fatalf("RunOnce: %v", err)
			}
			time.Sleep(30 * time.Millisecond)
		}
		if _, err := r.RunOnce(ctx); err != nil {
			t.Fatalf("RunOnce: %v", err)
		}
		got := byAggregate(e.sink.deliveries())
		if d := got["Order/"+held]; len(d) != 0 {
			t.Fatalf("the held order had %d events published while its head failed", len(d))
		}
		for _, id := range orders[1:] {
			if s := sequences(got["Order/"+strconv.Itoa(id)]); !slices.Equal(s, []int64{1, 2, 3, 4}) {
				t.Fatalf("order %d: published sequences %v while another order was held, want [1 2 3 4]", id, s)
			}
		}
		head := e.outboxRows("aggregateid = ? AND `sequence` = 1", held)
		if len(head) != 1 || head[0].Status != outbox.StatusPending || head[0].Attempts < 3 ||
			head[0].LastError == nil || !strings.Contains(*head[0].LastError, "broker says no") {
			t.Fatalf("held head row %+v: want pending, >= 3 attempts, last_error set", head)
		}
		if int64(head[0].Attempts) != rejections.Load() {
			t.Errorf("attempts %d, but the publisher rejected %d times", head[0].Attempts, rejections.Load())
		}
		if n := len(e.outboxRows("aggregateid = ? AND attempts > 0 AND `sequence` > 1", held)); n != 0 {
			t.Errorf("%d later events of the held order were attempted", n)
		}

		e.sink.setReject(nil)
		time.Sleep(30 * time.Millisecond)
		if _, err := r.RunOnce(ctx); err != nil {
			t.Fatalf("RunOnce: %v", err)
		}
		all := e.sink.deliveries()
		got = byAggregate(all)
		if s := sequences(got["Order/"+held]); !slices.Equal(s, []int64{1, 2, 3, 4}) {
			t.Fatalf("held order after recovery: sequences %v, want [1 2 3 4]", s)
		}
		if len(all) != 12 {
			t.Fatalf("%d deliveries, want 12", len(all))
		}
		for _, d := range got["Order/"+held][1:] {
			var ev stepped
			if err := json.Unmarshal(d.Payload, &ev); err != nil || int64(ev.N) != d.Sequence || d.Type != "Stepped" {
				t.Errorf("event %d of the held order: type %s payload %s", d.Sequence, d.Type, d.Payload)
			}
		}
		if st := e.stats(); st.Pending != 0 || st.Dead != 0 {
			t.Errorf("stats %+v, want nothing pending or dead", st)
		}
	})
}

// TestRelayPoison: invariant — an event the broker always rejects is
// dead-lettered after MaxAttempts with its last error, while 2,000 other
// events flow past it and are each published exactly once; its
// aggregate's later events go on; Requeue makes it pending again with
// fresh attempts.
func TestRelayPoison(t *testing.T) {
	testdb.Each(t, func(t *testing.T, cfg config.Config) {
		e := openRelayEnv(t, cfg)
		audit(t, e.writeEnv)
		ctx := context.Background()
		// The poison events come first, so they are in the first batch and
		// are retried while the rest is published.
		e.record(ctx, "Poison", map[string][]int{"P1": {1, 2, 3}, "P2": {1}})
		const others = 2000
		start := time.Now()
		for u := 0; u < others/100; u++ {
			evs := map[string][]int{}
			for i := 0; i < 100; i++ {
				evs[strconv.Itoa(u*100+i)] = []int{1}
			}
			e.record(ctx, "Item", evs)
		}
		t.Logf("wrote %d events in %s", others+4, time.Since(start))
		poison := map[string]bool{}
		for _, r := range e.outboxRows("aggregatetype = 'Poison' AND `sequence` = 1") {
			poison[r.ID] = true
		}
		if len(poison) != 2 {
			t.Fatalf("%d poison rows", len(poison))
		}
		e.sink.setReject(func(m outbox.Message) error {
			if poison[m.ID.String()] {
				return fmt.Errorf("poison %s", m.ID)
			}
			return nil
		})
		const maxAttempts = 3
		r := e.relay(func(c *outbox.RelayConfig) {
			c.MaxAttempts, c.Backoff, c.MaxBackoff = maxAttempts, time.Millisecond, time.Millisecond
		})
		start = time.Now()
		waitFor(t, 60*time.Second, "the outbox to have nothing pending", func() bool {
			if _, err := r.RunOnce(ctx); err != nil {
				t.Fatalf("RunOnce: %v", err)
			}
			return e.stats().Pending == 0
		})
		t.Logf("relayed %d events past the poison in %s", others+2, time.Since(start))

		dead := e.outboxRows("status = 'dead'")
		if len(dead) != 2 {
			t.Fatalf("%d dead rows, want the 2 poison events: %+v", len(dead), dead)
		}
		for _, d := range dead {
			if !poison[d.ID] || d.Attempts != maxAttempts || d.LastError == nil || *d.LastError != "poison "+d.ID {
				t.Errorf("dead row %+v: want a poison event, %d attempts, its last error", d, maxAttempts)
			}
		}
		if st := e.stats(); st.Dead != 2 || st.Pending != 0 {
			t.Errorf("stats %+v, want 2 dead letters and nothing pending", st)
		}
		want := audited(t, e.writeEnv)
		for id := range poison {
			delete(want, id)
		}
		got := e.sink.deliveries()
		exactlyOnce(t, want, got)
		if s := sequences(byAggregate(got)["Poison/P1"]); !slices.Equal(s, []int64{2, 3}) {
			t.Errorf("after its head was dead-lettered, P1 published %v, want [2 3]", s)
		}

		// Requeue one by id, then the rest; each gets fresh attempts.
		ids := slices.Sorted(maps.Keys(poison))
		n, err := outbox.Requeue(ctx, e.db.Driver(), e.db.Names(), uuid.MustParse(ids[0]))
		if err != nil || n != 1 {
			t.Fatalf("Requeue(%s) = %d, %v; want 1", ids[0], n, err)
		}
		if rows := e.outboxRows("status = 'pending'"); len(rows) != 1 || rows[0].ID != ids[0] || rows[0].Attempts != 0 || rows[0].LastError != nil {
			t.Fatalf("after Requeue: pending rows %+v, want %s with 0 attempts and no error", rows, ids[0])
		}
		if st := e.stats(); st.Dead != 1 || st.Pending != 1 {
			t.Errorf("stats after one requeue %+v, want 1 dead, 1 pending", st)
		}
		if n, err := outbox.Requeue(ctx, e.db.Driver(), e.db.Names()); err != nil || n != 1 {
			t.Fatalf("Requeue() = %d, %v; want the 1 remaining dead letter", n, err)
		}
		if n, err := outbox.Requeue(ctx, e.db.Driver(), e.db.Names()); err != nil || n != 0 {
			t.Fatalf("Requeue() with no dead letters = %d, %v; want 0", n, err)
		}
		e.sink.setReject(nil)
		if _, err := r.RunOnce(ctx); err != nil {
			t.Fatal(err)
		}
		exactlyOnceIDs(t, audited(t, e.writeEnv), e.sink.deliveries())
		if st := e.stats(); st.Dead != 0 || st.Pending != 0 {
			t.Errorf("stats after requeue and relay %+v, want all zero", st)
		}
	})
}

// exactlyOnceIDs is exactlyOnce without the order check (a requeued dead
// letter is published after its aggregate's later events, by design).
func exactlyOnceIDs(t testing.TB, want map[string]auditRow, got []delivery) {
	t.Helper()
	seen := map[string]int{}
	for _, d := range got {
		seen[d.ID.String()]++
	}
	for id := range want {
		if seen[id] != 1 {
			t.Errorf("event %s delivered %d times, want once", id, seen[id])
		}
	}
	if len(got) != len(want) || len(seen) != len(want) {
		t.Fatalf("%d events committed; %d messages delivered with %d distinct ids", len(want), len(got), len(seen))
	}
}

// TestRelaySQLiteSingle: a second relay on the same SQLite database fails
// with a clear error, whether from the same bento.DB or another one on the
// same file; after Close of the first, it starts.
func TestRelaySQLiteSingle(t *testing.T) {
	cfg := testdb.Config(t, testdb.SQLite)
	w := openWriteEnv(t, cfg)
	pub := outbox.NewChannelPublisher(1)
	first, err := w.db.NewRelay(pub, w.db.RelayConfig())
	if err != nil {
		t.Fatalf("first relay: %v", err)
	}
	other, err := bento.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	for name, db := range map[string]*bento.DB{"same DB": w.db, "another DB on the file": other} {
		r, err := db.NewRelay(pub, db.RelayConfig())
		if err == nil {
			r.Close()
			t.Fatalf("%s: a second relay started while the first runs", name)
		}
		if !strings.Contains(err.Error(), "another relay is running on this SQLite database") ||
			!strings.Contains(err.Error(), "pid") {
			t.Errorf("%s: error %q does not say another relay runs, and which process", name, err)
		}
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	second, err := other.NewRelay(pub, other.RelayConfig())
	if err != nil {
		t.Fatalf("a relay after the first closed: %v", err)
	}
	second.Close()

	// An in-memory database: one relay per database too.
	mem := config.Default()
	if mem.DB.URL, err = config.ParseURL(":memory:"); err != nil {
		t.Fatal(err)
	}
	mdb, err := bento.Open(mem)
	if err != nil {
		t.Fatal(err)
	}
	defer mdb.Close()
	r1, err := mdb.NewRelay(pub, mdb.RelayConfig())
	if err != nil {
		t.Fatal(err)
	}
	if r, err := mdb.NewRelay(pub, mdb.RelayConfig()); err == nil || !strings.Contains(err.Error(), "another relay") {
		if r != nil {
			r.Close()
		}
		t.Fatalf("second relay on an in-memory database: %v, want an error", err)
	}
	r1.Close()
	r2, err := mdb.NewRelay(pub, mdb.RelayConfig())
	if err != nil {
		t.Fatalf("relay after Close on an in-memory database: %v", err)
	}
	r2.Close()
}

// TestRelayRetention: with a retention, published rows stay, marked
// published with their time, and Cleanup deletes those older than the
// retention (in batches of at most 1000, all of them), never a pending
// row or a dead letter.
func TestRelayRetention(t *testing.T) {
	testdb.Each(t, func(t *testing.T, cfg config.Config) {
		e := openRelayEnv(t, cfg)
		ctx := context.Background()
		const retention = 2 * time.Second // longer than RunOnce takes on a busy machine
		const old = 1200
		for u := 0; u < old/200; u++ {
			evs := map[string][]int{}
			for i := 0; i < 200; i++ {
				evs[fmt.Sprint(u*200+i)] = []int{1}
			}
			e.record(ctx, "Old", evs)
		}
		e.record(ctx, "Dead", map[string][]int{"D": {1}})
		e.sink.setReject(func(m outbox.Message) error {
			if m.AggregateType == "Dead" {
				return &outbox.PermanentError{Err: errors.New("unroutable")}
			}
			return nil
		})
		r := e.relay(func(c *outbox.RelayConfig) { c.Retention, c.BatchSize = retention, 500 })
		if _, err := r.RunOnce(ctx); err != nil {
			t.Fatal(err)
		}
		if st := e.stats(); st.Published != old || st.Pending != 0 || st.Dead != 1 {
			t.Fatalf("stats %+v, want %d published rows kept, 1 dead (a permanent error dead-letters at once)", st, old)
		}
		if n := e.count("SELECT COUNT(*) FROM bento_outbox WHERE status = 'published' AND published_at IS NOT NULL"); n != old {
			t.Fatalf("%d published rows with published_at, want %d", n, old)
		}
		if n, err := r.Cleanup(ctx); err != nil || n != 0 {
			t.Fatalf("Cleanup right after publishing = %d, %v; want nothing older than the retention", n, err)
		}
		time.Sleep(retention + 100*time.Millisecond)
		e.record(ctx, "New", map[string][]int{"N1": {1}, "N2": {1}})
		e.record(ctx, "Waiting", map[string][]int{"W": {1}})
		e.sink.setReject(func(m outbox.Message) error {
			if m.AggregateType == "Waiting" {
				return errors.New("not now")
			}
			return nil
		})
		if _, err := r.RunOnce(ctx); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		n, err := r.Cleanup(ctx)
		if err != nil || n != old {
			t.Fatalf("Cleanup = %d, %v; want the %d rows older than the retention", n, err, old)
		}
		t.Logf("Cleanup deleted %d rows in %s", n, time.Since(start))
		rows := e.outboxRows("")
		kinds := map[string]string{}
		for _, r := range rows {
			kinds[r.AggregateType+"/"+r.AggregateID] = r.Status
		}
		want := map[string]string{"New/N1": "published", "New/N2": "published", "Dead/D": "dead", "Waiting/W": "pending"}
		if !maps.Equal(kinds, want) {
			t.Fatalf("rows after Cleanup %v, want %v", kinds, want)
		}
		// Without a retention, Cleanup has nothing to do.
		r.Close() // SQLite: one relay at a time
		if n, err := e.relay(nil).Cleanup(ctx); err != nil || n != 0 {
			t.Fatalf("Cleanup without retention = %d, %v", n, err)
		}
	})
}

// openDB opens another handle on cfg's database, as another process
// would.
func openDB(t testing.TB, cfg config.Config) *bento.DB {
	t.Helper()
	db, err := bento.Open(cfg)
	if err != nil {
		t.Fatalf("bento.Open: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// runRelay runs r until the test ends (or stop is called).
func runRelay(t testing.TB, r *outbox.Relay, listen <-chan struct{}) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx, listen) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Errorf("Run did not return within 30s of its context's end")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// publishedCounter is a RelayObserver counting published messages.
type publishedCounter struct{ n atomic.Int64 }

func (c *publishedCounter) Batch(claimed, published, failed, dead int, took time.Duration) {}
func (c *publishedCounter) Published(m outbox.Message, at time.Time)                       { c.n.Add(1) }

func deref(s *string) string {
	if s == nil {
		return "<nil>"
	}
	return *s
}

// slowestBatch is a RelayObserver keeping the longest batch.
type slowestBatch struct{ ns atomic.Int64 }

func (s *slowestBatch) Batch(claimed, published, failed, dead int, took time.Duration) {
	for {
		cur := s.ns.Load()
		if int64(took) <= cur || s.ns.CompareAndSwap(cur, int64(took)) {
			return
		}
	}
}
func (s *slowestBatch) Published(m outbox.Message, at time.Time) {}
func (s *slowestBatch) get() time.Duration                       { return time.Duration(s.ns.Load()) }

// TestRelayExactlyOnceConcurrent: invariant — with three relays (three
// pools and three NATS connections, as three processes would have) running
// while eight writers commit 20,000 events, the stream holds every
// committed event exactly once, each aggregate's in sequence order, and
// nothing stays pending. A tenth of the events go to 16 shared aggregates,
// so the relays compete for the heads of the same aggregates.
func TestRelayExactlyOnceConcurrent(t *testing.T) {
	for _, d := range []string{testdb.Postgres, testdb.MySQL} {
		t.Run(d, func(t *testing.T) {
			cfg := testdb.Config(t, d)
			w := openWriteEnv(t, cfg)
			audit(t, w)
			srv := testnats.Start(t)
			reader := connectJS(t, srv.URL())
			uow := ent.NewUnitOfWork(w.client)

			var counters [3]publishedCounter
			var stops []func()
			for i := range counters {
				db := openDB(t, cfg)
				r := newRelay(t, db, connectJS(t, srv.URL()), func(c *outbox.RelayConfig) {
					c.PollInterval, c.Backoff, c.Observer = 20*time.Millisecond, 50*time.Millisecond, &counters[i]
				})
				stops = append(stops, runRelay(t, r, nil))
			}

			const total, writers = 20000, 8
			start := time.Now()
			var next atomic.Int64
			var wg sync.WaitGroup
			errs := make(chan error, writers)
			for range writers {
				wg.Go(func() {
					ctx := context.Background()
					for {
						i := next.Add(1)
						if i > total {
							return
						}
						err := uow.Do(ctx, func(ctx context.Context, tx *ent.Client) error {
							if i%10 == 0 {
								return outbox.Record(ctx, "Counter", strconv.Itoa(int(i/10%16)), stepped{int(i)})
							}
							o, err := tx.Order.Create().SetCustomer("w@example.com").SetTotalCents(i).Save(ctx)
							if err != nil {
								return err
							}
							return outbox.Raise(ctx, o, shop.OrderPlaced{OrderID: o.ID, Customer: o.Customer, TotalCents: i})
						})
						if err != nil {
							errs <- fmt.Errorf("unit %d: %w", i, err)
							return
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatalf("writer: %v", err)
			}
			wrote := time.Since(start)
			if !waitUntil(60*time.Second, func() bool { return w.count("SELECT COUNT(*) FROM bento_outbox") == 0 }) {
				st, _ := outbox.ReadStats(context.Background(), w.db.Driver(), w.db.Names())
				var lastErr *string
				_ = w.db.Driver().DB().QueryRow("SELECT MAX(last_error) FROM bento_outbox").Scan(&lastErr)
				t.Fatalf("60s after the writers finished (%s), the outbox still has %+v; max attempts %d; a last error: %v",
					time.Since(start), st, w.count("SELECT MAX(attempts) FROM bento_outbox"), deref(lastErr))
			}
			drained := time.Since(start)
			for _, stop := range stops {
				stop()
			}
			want := audited(t, w)
			if len(want) != total {
				t.Fatalf("%d events committed, want %d", len(want), total)
			}
			readStart := time.Now()
			got := readStream(t, reader.JetStream(), testStream)
			t.Logf("%d events: written by %d writers in %s (%.0f/s), all published %s after the start; relays published %d, %d, %d (duplicates dropped by the stream); stream read in %s",
				total, writers, wrote.Round(time.Millisecond), total/wrote.Seconds(), drained.Round(time.Millisecond),
				counters[0].n.Load(), counters[1].n.Load(), counters[2].n.Load(), time.Since(readStart).Round(time.Millisecond))
			exactlyOnce(t, want, got)
			for i := range counters {
				if counters[i].n.Load() == 0 {
					t.Errorf("relay %d published nothing: the relays did not run side by side", i+1)
				}
			}
		})
	}
}

// TestRelayBrokerDown: invariant — while the broker is down, commits
// succeed and their events stay pending (retried without spending their
// attempts: nothing can be dead-lettered by an outage); once it is back,
// every event is published exactly once, each aggregate's in sequence order.
func TestRelayBrokerDown(t *testing.T) {
	for _, d := range []string{testdb.Postgres, testdb.MySQL} {
		t.Run(d, func(t *testing.T) {
			e := openRelayEnv(t, testdb.Config(t, d))
			audit(t, e.writeEnv)
			ctx := context.Background()
			var slowest slowestBatch
			r := e.relay(func(c *outbox.RelayConfig) {
				c.PollInterval, c.Backoff, c.MaxBackoff = 50*time.Millisecond, 100*time.Millisecond, 400*time.Millisecond
				c.MaxAttempts, c.PublishTimeout, c.Observer = 1000, time.Second, &slowest
			})
			stop := runRelay(t, r, nil)
			before := e.place(ctx, 20)
			waitFor(t, 10*time.Second, "the first orders to be published", func() bool { return e.sink.count() == 20 })

			e.sink.srv.Stop()
			start := time.Now()
			placed := e.place(ctx, 100)
			for _, id := range append(before[:10], placed[:50]...) {
				if _, err := e.svc.Pay(ctx, id); err != nil {
					t.Fatalf("Pay while the broker is down: %v", err)
				}
			}
			for k := 1; k <= 5; k++ {
				chains := map[string][]int{}
				for c := range 10 {
					chains[fmt.Sprintf("C%d", c)] = []int{k}
				}
				e.record(ctx, "Chain", chains)
			}
			const down = 100 + 60 + 50
			t.Logf("committed %d events with the broker down in %s", down, time.Since(start).Round(time.Millisecond))
			// Rounds of failed publishes of 210 events: more than the
			// publisher keeps acks in flight (256), so a publisher that queued
			// them for later would stall here. An unavailable broker spends no
			// attempts (outbox.ErrUnavailable): the events keep their place.
			time.Sleep(3 * time.Second)
			if n := e.count("SELECT MAX(attempts) FROM bento_outbox"); n != 0 {
				t.Fatalf("an unavailable broker spent %d attempts of an event, want 0", n)
			}
			if st := e.stats(); st.Pending != down || st.Dead != 0 {
				t.Fatalf("stats with the broker down: %+v, want %d pending, none dead", st, down)
			}
			if n := e.count("SELECT COUNT(*) FROM bento_outbox WHERE last_error LIKE '%broker unavailable%'"); n == 0 {
				t.Fatalf("no failed publish recorded as 'broker unavailable' while the broker was down")
			}
			t.Logf("broker down for %s; max attempts %d; slowest batch %s", time.Since(start).Round(time.Millisecond),
				e.count("SELECT MAX(attempts) FROM bento_outbox"), slowest.get())
			// A batch is bounded by PublishTimeout: the relay holds its
			// claim (row locks) and its shutdown waits for no longer.
			if s := slowest.get(); s > 2*time.Second {
				t.Fatalf("a batch took %s with the broker down; PublishTimeout is 1s", s)
			}

			e.sink.srv.Restart()
			up := time.Now()
			waitFor(t, 60*time.Second, "the backlog to be published after the restart", func() bool {
				return e.count("SELECT COUNT(*) FROM bento_outbox") == 0
			})
			t.Logf("backlog published %s after the restart", time.Since(up).Round(time.Millisecond))
			stop()
			got := e.sink.deliveries()
			exactlyOnce(t, audited(t, e.writeEnv), got)
			if s := sequences(byAggregate(got)["Chain/C3"]); !slices.Equal(s, []int64{1, 2, 3, 4, 5}) {
				t.Errorf("chain C3 arrived as %v, want [1 2 3 4 5]", s)
			}
			if s := sequences(byAggregate(got)["Order/"+strconv.Itoa(before[0])]); !slices.Equal(s, []int64{1, 2}) {
				t.Errorf("order %d arrived as %v, want [1 2]", before[0], s)
			}
		})
	}
}

// TestRelayWakeLatency: with a 10 s poll interval, an event committed in
// the relay's process is published within 500 ms: the commit wakes the
// relay (RelayConfig.Wake from db.Notifier()).
func TestRelayWakeLatency(t *testing.T) {
	testdb.Each(t, func(t *testing.T, cfg config.Config) {
		e := openRelayEnv(t, cfg)
		r := e.relay(func(c *outbox.RelayConfig) { c.PollInterval = 10 * time.Second })
		runRelay(t, r, nil)
		time.Sleep(200 * time.Millisecond) // past the first poll
		worst := latencies(t, e, 5)
		t.Logf("worst wake-up latency in process: %s", worst)
	})
}

// latencies places n orders one at a time and returns the longest time
// from a commit to its event in the sink; more than 500 ms fails.
func latencies(t *testing.T, e *relayEnv, n int) time.Duration {
	t.Helper()
	base := e.sink.count()
	var worst time.Duration
	for i := 1; i <= n; i++ {
		e.place(context.Background(), 1)
		committed := time.Now()
		waitFor(t, 2*time.Second, "the event to be published", func() bool { return e.sink.count() == base+i })
		if l := time.Since(committed); l > worst {
			worst = l
		}
	}
	if worst > 500*time.Millisecond {
		t.Fatalf("an event committed was published %s later; want within 500ms of the commit", worst)
	}
	return worst
}

// TestRelayWakeAcrossProcesses: on PostgreSQL a relay on another DB (as in
// another process), with a 10 s poll interval, is woken by the writer's
// NOTIFY (db.RunNotify, after commit) through db.Listen and publishes
// within 500 ms.
func TestRelayWakeAcrossProcesses(t *testing.T) {
	cfg := testdb.Config(t, testdb.Postgres)
	e := openRelayEnv(t, cfg) // the writer: it runs no relay
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	notifyDone := make(chan struct{})
	go func() { e.db.RunNotify(ctx); close(notifyDone) }()
	t.Cleanup(func() { cancel(); <-notifyDone })

	other := openDB(t, cfg)
	listen, err := other.Listen(ctx)
	if err != nil || listen == nil {
		t.Fatalf("Listen = %v, %v; want a channel on PostgreSQL", listen, err)
	}
	r := newRelay(t, other, e.sink, func(c *outbox.RelayConfig) { c.PollInterval = 10 * time.Second })
	runRelay(t, r, listen)
	time.Sleep(300 * time.Millisecond) // the listener connects, the first poll passes
	worst := latencies(t, e, 5)
	t.Logf("worst wake-up latency through LISTEN/NOTIFY: %s", worst)

	// Without RunNotify, nothing wakes it before the poll interval.
	cancel()
	<-notifyDone
	// A NOTIFY already on its way when RunNotify stopped (the relay may
	// have published the last event before its NOTIFY went out) wakes the
	// relay for nothing now, not after the order below.
	time.Sleep(300 * time.Millisecond)
	base := e.sink.count()
	e.place(context.Background(), 1)
	time.Sleep(time.Second)
	if n := e.sink.count(); n != base {
		t.Fatalf("published without a NOTIFY (%d new): the test does not measure the wake-up", n-base)
	}
}

// preload inserts n pending events, one per aggregate, straight into the
// outbox table (no sequences rows: the relay does not read them).
func preload(t testing.TB, db *bento.DB, n int) {
	t.Helper()
	var q string
	switch db.Dialect() {
	case testdb.Postgres:
		q = `INSERT INTO bento_outbox (id, aggregatetype, aggregateid, type, payload, sequence, occurred_at, status, attempts, next_attempt_at)
			SELECT gen_random_uuid(), 'Load', g::text, 'Loaded', '{}', 1, now(), 'pending', 0, 0 FROM generate_series(1, $1) g`
	case testdb.MySQL:
		q = "INSERT INTO bento_outbox (id, aggregatetype, aggregateid, `type`, payload, `sequence`, occurred_at, status, attempts, next_attempt_at) " +
			"SELECT UUID(), 'Load', seq, 'Loaded', '{}', 1, UTC_TIMESTAMP(6), 'pending', 0, 0 FROM seq_1_to_" + strconv.Itoa(n)
	default:
		q = `WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < ?)
			INSERT INTO bento_outbox (id, aggregatetype, aggregateid, type, payload, sequence, occurred_at, status, attempts, next_attempt_at)
			SELECT lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-' || hex(randomblob(2)) || '-' || hex(randomblob(2)) || '-' || hex(randomblob(6))),
			'Load', i, 'Loaded', '{}', 1, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), 'pending', 0, 0 FROM g`
	}
	var args []any
	if db.Dialect() != testdb.MySQL {
		args = append(args, n)
	}
	if _, err := db.Driver().DB().Exec(q, args...); err != nil {
		t.Fatalf("preloading %d events: %v", n, err)
	}
}

// TestRelayBacklogDrains: a backlog that built up while the table was
// small (the claim statement already planned and cached, no statistics
// yet) drains at batch speed: each claim walks the claim index and stops
// at the batch size instead of scanning the whole backlog. Invariant:
// 20,000 pending events are all published, once each, within 30 s.
func TestRelayBacklogDrains(t *testing.T) {
	testdb.Each(t, func(t *testing.T, cfg config.Config) {
		e := openRelayEnv(t, cfg)
		ctx := context.Background()
		r := e.relay(nil)
		// Claims on a near-empty table, as a relay does before a burst:
		// PostgreSQL caches the prepared claim's plan after five runs.
		for i := range 8 {
			e.record(ctx, "Warm", map[string][]int{strconv.Itoa(i): {1}})
			if _, err := r.Batch(ctx); err != nil {
				t.Fatal(err)
			}
		}
		const n = 20000
		preload(t, e.db, n)
		start := time.Now()
		first, err := r.Batch(ctx)
		if err != nil {
			t.Fatal(err)
		}
		firstTook := time.Since(start)
		deadline := time.Now().Add(30 * time.Second)
		total := first.Published
		for total < n && time.Now().Before(deadline) {
			res, err := r.Batch(ctx)
			if err != nil {
				t.Fatal(err)
			}
			total += res.Published
		}
		took := time.Since(start)
		t.Logf("%d backlogged events published in %s (%.0f/s); first batch %s", total, took.Round(time.Millisecond),
			float64(total)/took.Seconds(), firstTook.Round(time.Microsecond))
		if total < n {
			t.Fatalf("only %d of %d backlogged events were published in 30 s (first batch took %s): the claim does not stop at the batch size",
				total, n, firstTook)
		}
		if c := e.count("SELECT COUNT(*) FROM bento_outbox"); c != 0 {
			t.Fatalf("%d rows left", c)
		}
		got := e.sink.deliveries()
		seen := map[uuid.UUID]bool{}
		for _, d := range got {
			seen[d.ID] = true
		}
		if len(got) != n+8 || len(seen) != n+8 {
			t.Fatalf("%d deliveries, %d distinct, want %d", len(got), len(seen), n+8)
		}
		if cfg.DB.URL.Dialect() != testdb.Postgres {
			return
		}
		// Again with the claim planned from the backlog's statistics
		// (ANALYZE invalidates the cached plan): it must still stop at the
		// batch size, not anti-join the whole backlog.
		preload(t, e.db, n)
		if _, err := e.db.Driver().DB().Exec("ANALYZE bento_outbox"); err != nil {
			t.Fatal(err)
		}
		start = time.Now()
		deadline = start.Add(30 * time.Second)
		total = 0
		for total < n && time.Now().Before(deadline) {
			res, err := r.Batch(ctx)
			if err != nil {
				t.Fatal(err)
			}
			total += res.Published
		}
		t.Logf("analyzed: %d backlogged events published in %s", total, time.Since(start).Round(time.Millisecond))
		if total < n {
			t.Fatalf("after ANALYZE only %d of %d backlogged events were published in 30 s", total, n)
		}
		if got := len(e.sink.deliveries()); got != 2*n+8 {
			t.Fatalf("%d deliveries, want %d", got, 2*n+8)
		}
	})
}

// BenchmarkRelayBurnDown measures how fast one relay drains a backlog of
// 100,000 pending events (one per aggregate) into a private JetStream,
// with batches of 100 and 1,000:
//
//	go test -run '^$' -bench RelayBurnDown -benchtime 1x ./outbox/
func BenchmarkRelayBurnDown(b *testing.B) {
	const backlog = 100_000
	for _, d := range testdb.Dialects() {
		for _, batch := range []int{100, 1000} {
			b.Run(fmt.Sprintf("%s/batch=%d", d, batch), func(b *testing.B) {
				db := openDB(b, testdb.Config(b, d))
				ctx := context.Background()
				if err := db.Migrate(ctx); err != nil {
					b.Fatal(err)
				}
				pub := connectJS(b, testnats.Start(b).URL())
				r := newRelay(b, db, pub, func(c *outbox.RelayConfig) { c.BatchSize = batch })
				var published int
				var took time.Duration
				for b.Loop() {
					b.StopTimer()
					preload(b, db, backlog)
					b.StartTimer()
					start := time.Now()
					res, err := r.RunOnce(ctx)
					took += time.Since(start)
					if err != nil {
						b.Fatal(err)
					}
					if res.Published != backlog {
						b.Fatalf("published %d of %d", res.Published, backlog)
					}
					published += res.Published
				}
				b.ReportMetric(float64(published)/took.Seconds(), "events/s")
			})
		}
	}
}

// TestRelayRunOrderWhileWriting: Run, with small batches on the relay's
// own connection, keeps each aggregate's order and publishes every event
// once while writers keep adding events to the same aggregates. Invariant: per aggregate the published sequences are exactly
// 1..10 in order; the stream of deliveries has no duplicate.
func TestRelayRunOrderWhileWriting(t *testing.T) {
	testdb.Each(t, func(t *testing.T, cfg config.Config) {
		e := openRelayEnv(t, cfg)
		ctx := context.Background()
		r := e.relay(func(c *outbox.RelayConfig) { c.BatchSize = 7 })
		runRelay(t, r, nil)
		const writers, aggregates, steps = 4, 10, 10
		var wg sync.WaitGroup
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for step := 1; step <= steps; step++ {
					evs := map[string][]int{}
					for a := range aggregates {
						evs[fmt.Sprintf("w%d-a%d", w, a)] = []int{step}
					}
					e.record(ctx, "Ordered", evs)
				}
			}()
		}
		wg.Wait()
		const want = writers * aggregates * steps
		deadline := time.Now().Add(30 * time.Second)
		for e.sink.count() < want && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		got := e.sink.deliveries()
		if len(got) != want {
			for _, row := range e.outboxRows("") {
				t.Logf("left: %s/%s seq %d status %s attempts %d err %s", row.AggregateType, row.AggregateID, row.Sequence, row.Status, row.Attempts, deref(row.LastError))
			}
			t.Fatalf("%d deliveries, want %d", len(got), want)
		}
		for agg, ds := range byAggregate(got) {
			if s := sequences(ds); !slices.Equal(s, []int64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}) {
				t.Fatalf("%s: published sequences %v, want 1..10 in order", agg, s)
			}
		}
		// The last batch is marked after its publish was acknowledged:
		// give it the time to commit.
		pending := func() int { return e.count("SELECT COUNT(*) FROM bento_outbox WHERE status = 'pending'") }
		for pending() != 0 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if c := pending(); c != 0 {
			t.Fatalf("%d rows still pending", c)
		}
	})
}

// TestRelayHostileErrorText: invariant — a publisher's error text that no
// column can hold as it is (invalid UTF-8, NUL, a 4-byte character, 5,000
// bytes of 2-byte characters whose cut at a byte count splits one) never
// stops the relay: the event is retried and dead-lettered after its
// attempts with a storable last_error, and the healthy events of its
// batches are published exactly once each.
func TestRelayHostileErrorText(t *testing.T) {
	hostile := "\xff\xfe broken \x00 nul 😀 " + strings.Repeat("é", 2500)
	testdb.Each(t, func(t *testing.T, cfg config.Config) {
		e := openRelayEnv(t, cfg)
		audit(t, e.writeEnv)
		ctx := context.Background()
		e.record(ctx, "Poison", map[string][]int{"P": {1}})
		e.record(ctx, "Healthy", map[string][]int{"H1": {1}, "H2": {1}})
		poison := e.outboxRows("aggregatetype = 'Poison'")[0].ID
		e.sink.setReject(func(m outbox.Message) error {
			if m.ID.String() == poison {
				return errors.New(hostile)
			}
			return nil
		})
		const maxAttempts = 3
		r := e.relay(func(c *outbox.RelayConfig) {
			c.MaxAttempts, c.Backoff, c.MaxBackoff = maxAttempts, time.Millisecond, time.Millisecond
		})
		waitFor(t, 30*time.Second, "nothing pending", func() bool {
			if _, err := r.RunOnce(ctx); err != nil {
				t.Fatalf("RunOnce: %v", err)
			}
			return e.stats().Pending == 0
		})
		dead := e.outboxRows("status = 'dead'")
		if len(dead) != 1 || dead[0].ID != poison || dead[0].Attempts != maxAttempts || dead[0].LastError == nil {
			t.Fatalf("dead rows %+v, want the poison event with %d attempts and its error", dead, maxAttempts)
		}
		text := *dead[0].LastError
		if !utf8.ValidString(text) || strings.ContainsRune(text, 0) || utf8.RuneCountInString(text) > 2048 ||
			!strings.Contains(text, "broken") || !strings.HasSuffix(text, "…") {
			t.Errorf("stored last_error %q… (%d characters): want valid UTF-8, no NUL, at most 2,048 characters, cut with …",
				string([]rune(text)[:40]), utf8.RuneCountInString(text))
		}
		want := audited(t, e.writeEnv)
		delete(want, poison)
		got := e.sink.deliveries()
		exactlyOnce(t, want, got)
	})
}
