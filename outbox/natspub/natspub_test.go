package natspub_test

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/bento-go/bento/internal/testnats"
	"github.com/bento-go/bento/outbox"
	"github.com/bento-go/bento/outbox/natspub"
)

const stream = "BENTO_NATSPUB_TEST"

// connect connects a publisher to srv, creating the test stream unless
// cfg says otherwise.
func connect(t *testing.T, srv *testnats.Server, cfg natspub.Config) *natspub.Publisher {
	t.Helper()
	cfg.URL = srv.URL()
	if cfg.Stream == "" {
		cfg.Stream, cfg.CreateStream = stream, true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p, err := natspub.Connect(ctx, cfg)
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func message(aggType, aggID, typ string, seq int64) outbox.Message {
	return outbox.Message{ID: uuid.Must(uuid.NewV7()), AggregateType: aggType, AggregateID: aggID, Type: typ,
		Payload: []byte(`{"n":` + strconv.FormatInt(seq, 10) + `}`), Sequence: seq,
		OccurredAt: time.Date(2026, 3, 4, 5, 6, 7, 891011000, time.FixedZone("X", 3600))}
}

func publish(t *testing.T, p *natspub.Publisher, msgs ...outbox.Message) []error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res := p.Publish(ctx, msgs)
	if len(res) != len(msgs) {
		t.Fatalf("Publish returned %d results for %d messages", len(res), len(msgs))
	}
	return res
}

func mustPublish(t *testing.T, p *natspub.Publisher, msgs ...outbox.Message) {
	t.Helper()
	for i, err := range publish(t, p, msgs...) {
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
}

func streamMsgs(t *testing.T, js jetstream.JetStream, name string) []*jetstream.RawStreamMsg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, name)
	if err != nil {
		t.Fatalf("stream %s: %v", name, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("message %d of %s: %v", seq, name, err)
		}
		out = append(out, m)
	}
	return out
}

// TestSubjects: <prefix>.<aggregate type>.<event type>, with each token
// made valid (no dots, spaces or wildcards), or the configured function.
func TestSubjects(t *testing.T) {
	srv := testnats.Start(t)
	def := connect(t, srv, natspub.Config{})
	prefixed := connect(t, srv, natspub.Config{SubjectPrefix: "shop.events", Stream: "SHOP", CreateStream: true})
	custom := connect(t, srv, natspub.Config{Subject: func(m outbox.Message) string { return "custom." + m.AggregateID }})
	for _, c := range []struct {
		p                   *natspub.Publisher
		aggType, aggID, typ string
		want                string
		publish             bool
	}{
		{p: def, aggType: "Order", typ: "OrderPlaced", want: "bento.Order.OrderPlaced", publish: true},
		{p: prefixed, aggType: "Order", typ: "OrderPaid", want: "shop.events.Order.OrderPaid"},
		{p: def, aggType: "billing.Invoice", typ: "Invoice Sent", want: "bento.billing_Invoice.Invoice_Sent", publish: true},
		{p: def, aggType: "A*", typ: ">\tx\r\ny", want: "bento.A_.__x__y", publish: true},
		{p: custom, aggType: "Order", aggID: "42", typ: "OrderPlaced", want: "custom.42"},
	} {
		m := message(c.aggType, c.aggID, c.typ, 1)
		if got := c.p.Subject(m); got != c.want {
			t.Errorf("Subject(%q, %q) = %q, want %q", c.aggType, c.typ, got, c.want)
		}
		if c.publish {
			mustPublish(t, c.p, m)
		}
	}
	// The sanitised subjects are valid: the stream stored each under it.
	var subjects []string
	for _, m := range streamMsgs(t, def.JetStream(), stream) {
		subjects = append(subjects, m.Subject)
	}
	if strings.Join(subjects, " ") != "bento.Order.OrderPlaced bento.billing_Invoice.Invoice_Sent bento.A_.__x__y" {
		t.Errorf("stored subjects %q", subjects)
	}
}

// TestPublishHeaders: the payload is the body; Nats-Msg-Id is the event
// id; the Bento-* headers describe the event; the event's own headers
// (correlation id, trace context) are passed on as they are, but can
// neither replace Bento's nor give JetStream instructions (Nats-*).
func TestPublishHeaders(t *testing.T) {
	srv := testnats.Start(t)
	p := connect(t, srv, natspub.Config{})
	m := message("Order", "17", "OrderPlaced", 3)
	m.Headers = map[string]string{
		outbox.HeaderCorrelationID: "corr-1",
		outbox.HeaderTraceParent:   "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
		"Tenant":                   "acme",
		// Spoofing and instructions: none may reach the stream.
		natspub.HeaderSequence:        "999",
		natspub.HeaderAggregateID:     "other",
		jetstream.MsgIDHeader:         "not-the-event-id",
		"Nats-Rollup":                 "all",
		"Nats-Expected-Last-Sequence": "12345",
	}
	plain := message("Order", "18", "OrderPlaced", 1)
	mustPublish(t, p, m, plain)
	got := streamMsgs(t, p.JetStream(), stream)
	if len(got) != 2 {
		t.Fatalf("%d messages stored, want 2", len(got))
	}
	h := got[0].Header
	want := map[string]string{
		jetstream.MsgIDHeader:       m.ID.String(),
		natspub.HeaderAggregateType: "Order",
		natspub.HeaderAggregateID:   "17",
		natspub.HeaderEventType:     "OrderPlaced",
		natspub.HeaderSequence:      "3",
		natspub.HeaderOccurredAt:    "2026-03-04T04:06:07.891011Z",
		outbox.HeaderCorrelationID:  "corr-1",
		outbox.HeaderTraceParent:    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
		"Tenant":                    "acme",
	}
	for k, v := range want {
		if h.Get(k) != v {
			t.Errorf("header %s = %q, want %q", k, h.Get(k), v)
		}
	}
	for _, k := range []string{"Nats-Rollup", "Nats-Expected-Last-Sequence"} {
		if vs, ok := h[k]; ok {
			t.Errorf("the event's header %s reached JetStream: %q", k, vs)
		}
	}
	if string(got[0].Data) != `{"n":3}` || got[0].Subject != "bento.Order.OrderPlaced" {
		t.Errorf("stored %s %s", got[0].Subject, got[0].Data)
	}
	if h2 := got[1].Header; h2.Get(jetstream.MsgIDHeader) != plain.ID.String() || h2.Get(outbox.HeaderCorrelationID) != "" {
		t.Errorf("second message headers %v", h2)
	}
}

// TestPublishDuplicate: the same event id published twice — in two calls,
// or twice in one — is stored once; the second publish is acknowledged as
// a duplicate and counts as published.
func TestPublishDuplicate(t *testing.T) {
	srv := testnats.Start(t)
	p := connect(t, srv, natspub.Config{})
	a, b := message("Order", "1", "OrderPlaced", 1), message("Order", "2", "OrderPlaced", 1)
	mustPublish(t, p, a)
	mustPublish(t, p, a, b, b)
	got := streamMsgs(t, p.JetStream(), stream)
	if len(got) != 2 || got[0].Header.Get(jetstream.MsgIDHeader) != a.ID.String() || got[1].Header.Get(jetstream.MsgIDHeader) != b.ID.String() {
		t.Fatalf("stored %d messages, want a then b once each", len(got))
	}
	// What the publisher relies on: JetStream says "duplicate".
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ack, err := p.JetStream().PublishMsg(ctx, &nats.Msg{Subject: "bento.Order.OrderPlaced", Data: []byte("{}")}, jetstream.WithMsgID(a.ID.String()))
	if err != nil || !ack.Duplicate {
		t.Fatalf("republishing event %s: ack %+v, %v; want a duplicate ack", a.ID, ack, err)
	}
	if n := len(streamMsgs(t, p.JetStream(), stream)); n != 2 {
		t.Fatalf("%d messages after the duplicate, want 2", n)
	}
}

// TestPublishResultsPerMessage: with no stream for a subject, or a stream
// other than the configured one, each message gets its own error naming
// its event id, and the others are published.
func TestPublishResultsPerMessage(t *testing.T) {
	srv := testnats.Start(t)
	good := connect(t, srv, natspub.Config{})

	missing := connect(t, srv, natspub.Config{SubjectPrefix: "nowhere", Stream: "MISSING"})
	msgs := []outbox.Message{message("Order", "1", "OrderPlaced", 1), message("Order", "2", "OrderPlaced", 1), message("Order", "3", "OrderPlaced", 1)}
	start := time.Now()
	for i, err := range publish(t, missing, msgs...) {
		if err == nil || !strings.Contains(err.Error(), msgs[i].ID.String()) {
			t.Errorf("message %d to a subject no stream captures: %v, want an error naming %s", i, err, msgs[i].ID)
		}
	}
	t.Logf("no stream: results in %s", time.Since(start).Round(time.Millisecond))

	// The subject is captured, but by another stream than the expected one.
	wrong := connect(t, srv, natspub.Config{Stream: "OTHER"})
	for i, err := range publish(t, wrong, msgs...) {
		if err == nil {
			t.Errorf("message %d stored by a stream other than the configured one", i)
		}
	}

	// One batch, mixed: a message routed nowhere fails alone.
	mixed := connect(t, srv, natspub.Config{Subject: func(m outbox.Message) string {
		if m.Type == "Lost" {
			return "lost." + m.AggregateID
		}
		return "bento." + m.AggregateType + "." + m.Type
	}})
	batch := []outbox.Message{message("Order", "4", "OrderPlaced", 1), message("Order", "5", "Lost", 1), message("Order", "6", "OrderPlaced", 1)}
	res := publish(t, mixed, batch...)
	if res[0] != nil || res[1] == nil || res[2] != nil {
		t.Fatalf("mixed batch results %v; want only the second to fail", res)
	}
	got := streamMsgs(t, good.JetStream(), stream)
	if len(got) != 2 || got[0].Header.Get(jetstream.MsgIDHeader) != batch[0].ID.String() || got[1].Header.Get(jetstream.MsgIDHeader) != batch[2].ID.String() {
		t.Fatalf("stored %d messages, want the two routable ones", len(got))
	}
}

// TestPublishWhileDisconnected: with the server down every message fails
// at once (the outbox keeps it; no in-memory buffer), and publishing works
// again once the connection is back.
func TestPublishWhileDisconnected(t *testing.T) {
	srv := testnats.Start(t)
	p := connect(t, srv, natspub.Config{})
	srv.Stop()
	time.Sleep(100 * time.Millisecond)
	msgs := []outbox.Message{message("Order", "1", "OrderPlaced", 1), message("Order", "2", "OrderPlaced", 1)}
	start := time.Now()
	for i, err := range publish(t, p, msgs...) {
		if !errors.Is(err, nats.ErrDisconnected) {
			t.Errorf("message %d with the server down: %v, want nats.ErrDisconnected", i, err)
		}
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("failing with the server down took %s", took)
	}
	srv.Restart()
	deadline := time.Now().Add(10 * time.Second)
	for {
		res := publish(t, p, msgs...)
		if res[0] == nil && res[1] == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("publishing 10 s after the restart: %v", res)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if n := len(streamMsgs(t, p.JetStream(), stream)); n != 2 {
		t.Fatalf("%d messages stored, want 2 (nothing buffered while down was sent later)", n)
	}
}

// TestConnectError: an unreachable server or a bad URL is an error that
// names the address and does not show the URL's secrets.
func TestConnectError(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// A password, a token (the whole userinfo), a secret parameter, and a
	// URL the client cannot parse, which its error quotes.
	for _, u := range []string{
		"nats://relay:s3cret@" + addr,
		"nats://s3cret@" + addr,
		"nats://" + addr + "?token=s3cret",
		"nats://s3cret@ho st:4222",
	} {
		p, err := natspub.Connect(ctx, natspub.Config{URL: u})
		if err == nil {
			p.Close()
			t.Fatalf("Connect(%q) succeeded", u)
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("Connect(%q): error %q shows the secret", u, err)
		}
		if !strings.Contains(u, " ") && !strings.Contains(err.Error(), addr) {
			t.Errorf("Connect(%q): error %q does not name the address", u, err)
		}
	}
}
