package rabbitpub_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/bento-go/bento/outbox"
	"github.com/bento-go/bento/outbox/natspub"
	"github.com/bento-go/bento/outbox/rabbitpub"
)

// connect connects a publisher to the test broker with a unique exchange
// unless cfg names one.
func connect(t *testing.T, cfg rabbitpub.Config) *rabbitpub.Publisher {
	t.Helper()
	if cfg.URL == "" {
		cfg.URL = brokerURL()
	}
	if cfg.Exchange == "" {
		cfg.Exchange = unique(t, "bento.test.x")
		t.Cleanup(func() {
			withChannel(t, func(ch *amqp.Channel) { _ = ch.ExchangeDelete(cfg.Exchange, false, false) })
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p, err := rabbitpub.Connect(ctx, cfg)
	if err != nil {
		t.Fatalf("Connect: %v (the tests need RabbitMQ at %s)", err, "127.0.0.1:5672 or BENTO_TEST_RABBITMQ_URL")
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func message(aggType, aggID, typ string, seq int64) outbox.Message {
	return outbox.Message{ID: uuid.Must(uuid.NewV7()), AggregateType: aggType, AggregateID: aggID, Type: typ,
		Payload: []byte(`{"n":` + strconv.FormatInt(seq, 10) + `}`), Sequence: seq,
		OccurredAt: time.Date(2026, 3, 4, 5, 6, 7, 891011000, time.FixedZone("X", 3600))}
}

func publish(t *testing.T, p *rabbitpub.Publisher, msgs ...outbox.Message) []error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res := p.Publish(ctx, msgs)
	if len(res) != len(msgs) {
		t.Fatalf("Publish returned %d results for %d messages", len(res), len(msgs))
	}
	return res
}

func mustPublish(t *testing.T, p *rabbitpub.Publisher, msgs ...outbox.Message) {
	t.Helper()
	for i, err := range publish(t, p, msgs...) {
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
}

// TestRoutingKeys: <aggregate type>.<event type>, each made one word of a
// topic key (no dots, spaces or wildcards), or the configured function;
// a queue bound with a pattern gets exactly the matching keys.
func TestRoutingKeys(t *testing.T) {
	p := connect(t, rabbitpub.Config{})
	all := bind(t, p.Exchange(), nil, "#")
	orders := bind(t, p.Exchange(), nil, "Order.*")
	custom := connect(t, rabbitpub.Config{RoutingKey: func(m outbox.Message) string { return "custom." + m.AggregateID }})
	for _, c := range []struct {
		p                   *rabbitpub.Publisher
		aggType, aggID, typ string
		want                string
	}{
		{p: p, aggType: "Order", typ: "OrderPlaced", want: "Order.OrderPlaced"},
		{p: p, aggType: "billing.Invoice", typ: "Invoice Sent", want: "billing_Invoice.Invoice_Sent"},
		{p: p, aggType: "A*", typ: "#\tx\r\ny", want: "A_.__x__y"},
		{p: custom, aggType: "Order", aggID: "42", typ: "OrderPlaced", want: "custom.42"},
	} {
		if got := c.p.RoutingKey(message(c.aggType, c.aggID, c.typ, 1)); got != c.want {
			t.Errorf("RoutingKey(%q, %q) = %q, want %q", c.aggType, c.typ, got, c.want)
		}
	}
	mustPublish(t, p, message("Order", "1", "OrderPlaced", 1), message("billing.Invoice", "2", "Invoice Sent", 1), message("Order", "3", "OrderPaid", 1))
	var keys []string
	for _, d := range drain(t, all) {
		keys = append(keys, d.RoutingKey)
	}
	if got := strings.Join(keys, " "); got != "Order.OrderPlaced billing_Invoice.Invoice_Sent Order.OrderPaid" {
		t.Errorf("routing keys in the queue bound with #: %q", got)
	}
	if n := len(drain(t, orders)); n != 2 {
		t.Errorf("the queue bound with Order.* got %d messages, want 2", n)
	}
}

// TestPublishProperties: the payload is the body; the message is
// persistent JSON with message_id = event id; the Bento-* headers
// describe the event (the same names as natspub's); the event's own
// headers are passed on, but can neither replace Bento's nor instruct the
// broker (CC, BCC, x-*).
func TestPublishProperties(t *testing.T) {
	for _, c := range [][2]string{
		{rabbitpub.HeaderAggregateType, natspub.HeaderAggregateType}, {rabbitpub.HeaderAggregateID, natspub.HeaderAggregateID},
		{rabbitpub.HeaderEventType, natspub.HeaderEventType}, {rabbitpub.HeaderSequence, natspub.HeaderSequence},
		{rabbitpub.HeaderOccurredAt, natspub.HeaderOccurredAt},
	} {
		if c[0] != c[1] {
			t.Errorf("header %q here, %q in natspub", c[0], c[1])
		}
	}
	p := connect(t, rabbitpub.Config{})
	q := bind(t, p.Exchange(), nil, "#")
	other := bind(t, p.Exchange(), nil, "Elsewhere.#")
	m := message("Order", "17", "OrderPlaced", 3)
	m.Headers = map[string]string{
		outbox.HeaderCorrelationID: "corr-1",
		outbox.HeaderTraceParent:   "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
		"Tenant":                   "acme",
		// Spoofing and instructions: none may reach the queue.
		rabbitpub.HeaderSequence:    "999",
		rabbitpub.HeaderAggregateID: "other",
		"CC":                        "Elsewhere.x",
		"bcc":                       "Elsewhere.y",
		"x-delay":                   "60000",
	}
	plain := message("Order", "18", "OrderPlaced", 1)
	mustPublish(t, p, m, plain)
	got := drain(t, q)
	if len(got) != 2 {
		t.Fatalf("%d messages in the queue, want 2", len(got))
	}
	d := got[0]
	if d.MessageId != m.ID.String() || d.ContentType != "application/json" || d.DeliveryMode != amqp.Persistent ||
		d.Type != "OrderPlaced" || d.CorrelationId != "corr-1" || string(d.Body) != `{"n":3}` || d.RoutingKey != "Order.OrderPlaced" {
		t.Errorf("delivered message_id %q, content type %q, delivery mode %d, type %q, correlation id %q, body %s, key %s",
			d.MessageId, d.ContentType, d.DeliveryMode, d.Type, d.CorrelationId, d.Body, d.RoutingKey)
	}
	want := map[string]string{
		rabbitpub.HeaderEventID:       m.ID.String(),
		rabbitpub.HeaderAggregateType: "Order",
		rabbitpub.HeaderAggregateID:   "17",
		rabbitpub.HeaderEventType:     "OrderPlaced",
		rabbitpub.HeaderSequence:      "3",
		rabbitpub.HeaderOccurredAt:    "2026-03-04T04:06:07.891011Z",
		outbox.HeaderCorrelationID:    "corr-1",
		outbox.HeaderTraceParent:      "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
		"Tenant":                      "acme",
	}
	for k, v := range want {
		if s, _ := d.Headers[k].(string); s != v {
			t.Errorf("header %s = %v, want %q", k, d.Headers[k], v)
		}
	}
	for _, k := range []string{"CC", "bcc", "x-delay"} {
		if v, ok := d.Headers[k]; ok {
			t.Errorf("the event's header %s reached the broker: %v", k, v)
		}
	}
	if n := len(drain(t, other)); n != 0 {
		t.Errorf("the event's CC/BCC headers routed %d copies elsewhere", n)
	}
	if d2 := got[1]; d2.MessageId != plain.ID.String() || d2.Headers[outbox.HeaderCorrelationID] != nil || d2.CorrelationId != "" {
		t.Errorf("second message: message_id %q, headers %v", d2.MessageId, d2.Headers)
	}
}

// TestReturnedIsPermanent: in one batch, a message no queue is bound for
// is returned (mandatory) and fails alone with a PermanentError naming
// its event id and routing key; the others are published. Invariant: the
// bound queue holds exactly the routable messages.
func TestReturnedIsPermanent(t *testing.T) {
	p := connect(t, rabbitpub.Config{})
	q := bind(t, p.Exchange(), nil, "Order.*")
	batch := []outbox.Message{message("Order", "1", "OrderPlaced", 1), message("Lost", "2", "Nowhere", 1), message("Order", "3", "OrderPlaced", 1)}
	res := publish(t, p, batch...)
	var permanent *outbox.PermanentError
	if res[0] != nil || res[2] != nil || !errors.As(res[1], &permanent) || errors.Is(res[1], outbox.ErrUnavailable) {
		t.Fatalf("results %v; want only the second to fail, permanently", res)
	}
	if s := res[1].Error(); !strings.Contains(s, batch[1].ID.String()) || !strings.Contains(s, "Lost.Nowhere") || !strings.Contains(s, "NO_ROUTE") {
		t.Errorf("error %q: want the event id, the routing key and the reason", s)
	}
	got := drain(t, q)
	if len(got) != 2 || got[0].MessageId != batch[0].ID.String() || got[1].MessageId != batch[2].ID.String() {
		t.Fatalf("%d messages in the queue, want the two routable ones", len(got))
	}
	// The publisher is still usable: the return did not close anything.
	mustPublish(t, p, message("Order", "4", "OrderPlaced", 1))
	if n := len(drain(t, q)); n != 1 {
		t.Fatalf("%d messages after the next publish, want 1", n)
	}

	// A large batch returned whole (more returns than the buffer holds):
	// every message fails, none is taken for published.
	lost := make([]outbox.Message, 3000)
	for i := range lost {
		lost[i] = message("Lost", strconv.Itoa(i), "Nowhere", 1)
	}
	for i, err := range publish(t, p, lost...) {
		if !errors.As(err, &permanent) {
			t.Fatalf("unroutable message %d of 3000: %v, want a PermanentError", i, err)
		}
	}
}

// TestNackIsFailure: a queue that rejects publishes once full
// (x-overflow reject-publish) makes RabbitMQ nack the excess. Each nacked
// message fails (an ordinary failure: attempts are spent), the others are
// published. Invariant: the queue holds exactly the acknowledged ones.
func TestNackIsFailure(t *testing.T) {
	p := connect(t, rabbitpub.Config{})
	q := bind(t, p.Exchange(), amqp.Table{"x-max-length": int32(2), "x-overflow": "reject-publish"}, "#")
	batch := []outbox.Message{message("Order", "1", "A", 1), message("Order", "2", "A", 1), message("Order", "3", "A", 1), message("Order", "4", "A", 1)}
	res := publish(t, p, batch...)
	var acked []string
	for i, err := range res {
		if err == nil {
			acked = append(acked, batch[i].ID.String())
			continue
		}
		var permanent *outbox.PermanentError
		if errors.Is(err, outbox.ErrUnavailable) || errors.As(err, &permanent) || !strings.Contains(err.Error(), "nack") {
			t.Errorf("message %d: %v; want a nack, neither unavailable nor permanent", i, err)
		}
	}
	if len(acked) != 2 || res[0] != nil || res[1] != nil {
		t.Fatalf("results %v; want the first two acknowledged, the rest nacked", res)
	}
	var got []string
	for _, d := range drain(t, q) {
		got = append(got, d.MessageId)
	}
	if strings.Join(got, " ") != strings.Join(acked, " ") {
		t.Fatalf("queue holds %v, want the acknowledged %v", got, acked)
	}
}

// TestPublishWhileBrokerDown: with RabbitMQ stopped every message fails
// at once with ErrUnavailable (nothing is buffered), and the next Publish
// after the restart connects again. Invariant: the queue holds exactly the
// messages published after the restart.
func TestPublishWhileBrokerDown(t *testing.T) {
	b := controlBroker(t)
	p := connect(t, rabbitpub.Config{})
	q := bind(t, p.Exchange(), nil, "#")
	mustPublish(t, p, message("Order", "0", "OrderPlaced", 1))
	b.Stop()
	msgs := []outbox.Message{message("Order", "1", "OrderPlaced", 1), message("Order", "2", "OrderPlaced", 1)}
	for range 2 { // the closed connection, then a refused reconnection
		start := time.Now()
		for i, err := range publish(t, p, msgs...) {
			if !errors.Is(err, outbox.ErrUnavailable) {
				t.Errorf("message %d with the broker down: %v, want ErrUnavailable", i, err)
			}
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("failing with the broker down took %s", took)
		}
	}
	b.Start()
	deadline := time.Now().Add(30 * time.Second)
	for {
		res := publish(t, p, msgs...)
		if res[0] == nil && res[1] == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("publishing 30 s after the restart: %v", res)
		}
		time.Sleep(100 * time.Millisecond)
	}
	got := drain(t, q)
	if len(got) != 3 || got[1].MessageId != msgs[0].ID.String() || got[2].MessageId != msgs[1].ID.String() {
		t.Fatalf("%d messages in the queue, want the one before the outage and the two after", len(got))
	}
}

// TestPublishContextEnds: a context that has ended fails every message
// with ErrUnavailable without sending it.
func TestPublishContextEnds(t *testing.T) {
	p := connect(t, rabbitpub.Config{})
	q := bind(t, p.Exchange(), nil, "#")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for i, err := range p.Publish(ctx, []outbox.Message{message("Order", "1", "A", 1), message("Order", "2", "A", 1)}) {
		if !errors.Is(err, outbox.ErrUnavailable) || !errors.Is(err, context.Canceled) {
			t.Errorf("message %d with an ended context: %v", i, err)
		}
	}
	mustPublish(t, p, message("Order", "3", "A", 1))
	if n := queueLength(t, q); n != 1 {
		t.Fatalf("%d messages in the queue, want 1", n)
	}
}

// TestConnectErrors: an unreachable broker, a bad URL and refused
// credentials are errors that never show the password; an exchange that
// exists with another type is refused.
func TestConnectErrors(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	u, err := amqp.ParseURI(brokerURL())
	if err != nil {
		t.Fatal(err)
	}
	broker := net.JoinHostPort(u.Host, strconv.Itoa(u.Port))
	for _, c := range []struct{ url, want string }{
		{"amqp://relay:s3cret@" + addr + "/", addr},
		{"amqp://relay:s3cret@" + addr + ":badport/", "not an AMQP URL"},
		{"amqp://relay:s3cret%zz@" + addr + "/", "not an AMQP URL"},
		{"amqp://guest:s3cret-wrong@" + broker + "/", "username or password"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		p, err := rabbitpub.Connect(ctx, rabbitpub.Config{URL: c.url})
		cancel()
		if err == nil {
			p.Close()
			t.Errorf("Connect(%s) succeeded", c.url)
			continue
		}
		if strings.Contains(err.Error(), "s3cret") || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Connect error %q: want %q, without the password", err, c.want)
		}
	}

	exchange := unique(t, "bento.test.fanout")
	withChannel(t, func(ch *amqp.Channel) {
		if err := ch.ExchangeDeclare(exchange, amqp.ExchangeFanout, false, true, false, false, nil); err != nil {
			t.Fatal(err)
		}
	})
	t.Cleanup(func() {
		withChannel(t, func(ch *amqp.Channel) { _ = ch.ExchangeDelete(exchange, false, false) })
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p, err := rabbitpub.Connect(ctx, rabbitpub.Config{URL: brokerURL(), Exchange: exchange})
	if err == nil {
		p.Close()
		t.Fatalf("Connect declared %s as a topic exchange over a fanout one", exchange)
	}
	if !strings.Contains(err.Error(), exchange) || strings.Contains(err.Error(), "guest:guest") {
		t.Errorf("error %q: want the exchange named, the password not", err)
	}
}

// TestPublishDeadline: a context that ends while a large batch is being
// published or confirmed fails the unconfirmed messages with
// ErrUnavailable and closes the connection; the next Publish connects
// again. Invariant: every message counted as published is in the queue,
// and the queue holds nothing that was not sent.
func TestPublishDeadline(t *testing.T) {
	p := connect(t, rabbitpub.Config{})
	q := bind(t, p.Exchange(), nil, "#")
	batch := make([]outbox.Message, 3000)
	for i := range batch {
		batch[i] = message("Order", strconv.Itoa(i), "OrderPlaced", 1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Millisecond)
	defer cancel()
	start := time.Now()
	res := p.Publish(ctx, batch)
	took := time.Since(start)
	published := map[string]bool{}
	unavailable := 0
	for i, err := range res {
		switch {
		case err == nil:
			published[batch[i].ID.String()] = true
		case errors.Is(err, outbox.ErrUnavailable):
			unavailable++
		default:
			t.Fatalf("message %d: %v, want published or ErrUnavailable", i, err)
		}
	}
	if unavailable == 0 {
		t.Fatalf("all 3000 messages confirmed within 3 ms (%s): the deadline was not reached, the test proves nothing", took)
	}
	if took > 2*time.Second {
		t.Errorf("Publish returned %s after its 3 ms deadline", took)
	}
	after := message("Order", "after", "OrderPlaced", 1)
	mustPublish(t, p, after)
	inQueue := map[string]bool{}
	for _, d := range drain(t, q) {
		inQueue[d.MessageId] = true
	}
	for id := range published {
		if !inQueue[id] {
			t.Errorf("message %s counted as published is not in the queue", id)
		}
	}
	if !inQueue[after.ID.String()] || len(inQueue) > len(batch)+1 {
		t.Errorf("queue: %d distinct messages, the one after the deadline present: %t", len(inQueue), inQueue[after.ID.String()])
	}
	t.Logf("3 ms deadline: %d confirmed, %d unavailable after %s; %d of the batch in the queue", len(published), unavailable, took.Round(time.Millisecond), len(inQueue)-1)
}

// TestChannelClosedOverMessage: a message over the broker's
// max_message_size (lowered to 4 KiB for the test, restored after) makes
// RabbitMQ close the channel with 406 PRECONDITION_FAILED, without saying
// which message. The batch's unconfirmed messages fail with
// ErrUnavailable (no attempt spent); published again, each goes alone:
// the oversized one fails as an ordinary failure (attempts spent, then a
// dead letter), the others are published. Invariant: every message
// counted as published is in the queue, the oversized one never is, and
// no innocent message ever gets an ordinary failure.
func TestChannelClosedOverMessage(t *testing.T) {
	controlBroker(t) // rabbitmqctl is needed
	out, err := exec.Command("rabbitmqctl", "eval", "application:get_env(rabbit, max_message_size).").CombinedOutput()
	if err != nil {
		t.Fatalf("rabbitmqctl eval: %v\n%s", err, out)
	}
	var orig int
	if _, err := fmt.Sscanf(strings.TrimSpace(string(out)), "{ok,%d}", &orig); err != nil {
		t.Fatalf("max_message_size: %q", out)
	}
	setMax := func(n int) {
		if out, err := exec.Command("rabbitmqctl", "eval", fmt.Sprintf("application:set_env(rabbit, max_message_size, %d).", n)).CombinedOutput(); err != nil {
			t.Fatalf("setting max_message_size: %v\n%s", err, out)
		}
	}
	setMax(4096)
	t.Cleanup(func() { setMax(orig) })

	p := connect(t, rabbitpub.Config{})
	q := bind(t, p.Exchange(), nil, "#")
	big := message("Order", "2", "OrderPlaced", 1)
	big.Payload = []byte(`{"pad":"` + strings.Repeat("x", 8192) + `"}`)
	batch := []outbox.Message{message("Order", "1", "OrderPlaced", 1), big, message("Order", "3", "OrderPlaced", 1)}
	published := map[string]bool{}
	check := func(round int, res []error) {
		t.Helper()
		for i, err := range res {
			var permanent *outbox.PermanentError
			switch {
			case err == nil:
				published[batch[i].ID.String()] = true
			case errors.As(err, &permanent):
				t.Errorf("round %d, message %d: %v; not a permanent failure", round, i, err)
			case !errors.Is(err, outbox.ErrUnavailable) && i != 1:
				t.Errorf("round %d, message %d (innocent): %v; want published or ErrUnavailable", round, i, err)
			}
		}
	}
	res := publish(t, p, batch...)
	check(1, res)
	if !errors.Is(res[1], outbox.ErrUnavailable) || !strings.Contains(res[1].Error(), "PRECONDITION_FAILED") {
		t.Fatalf("round 1, the oversized message in a batch: %v; want ErrUnavailable with the broker's 406", res[1])
	}
	for round := 2; round <= 3; round++ {
		res = publish(t, p, batch...)
		check(round, res)
		if res[0] != nil || res[2] != nil {
			t.Fatalf("round %d: %v; want the innocent messages published, each alone or in the batch", round, res)
		}
		if res[1] == nil || errors.Is(res[1], outbox.ErrUnavailable) || !strings.Contains(res[1].Error(), "PRECONDITION_FAILED") {
			t.Fatalf("round %d, the oversized message alone: %v; want an ordinary failure with the broker's 406", round, res[1])
		}
	}
	after := message("Order", "4", "OrderPlaced", 1)
	mustPublish(t, p, after)
	inQueue := map[string]bool{}
	for _, d := range drain(t, q) {
		inQueue[d.MessageId] = true
	}
	for id := range published {
		if !inQueue[id] {
			t.Errorf("message %s counted as published is not in the queue", id)
		}
	}
	if inQueue[big.ID.String()] || !inQueue[after.ID.String()] {
		t.Errorf("queue: the oversized message present: %t, the one after: %t", inQueue[big.ID.String()], inQueue[after.ID.String()])
	}
}
