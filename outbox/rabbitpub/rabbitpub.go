// Package rabbitpub publishes Bento outbox messages to RabbitMQ (AMQP
// 0-9-1, with github.com/rabbitmq/amqp091-go).
//
// Each message goes to a durable topic exchange ("bento.outbox", declared
// if missing) with routing key <aggregate type>.<event type>
// (Order.OrderPlaced), so a queue bound with "Order.*" gets every event of
// orders and one bound with "*.OrderPlaced" every placed order. Messages
// are persistent (delivery mode 2), of content type application/json,
// with message_id set to the event id and Bento's headers besides the
// event's own: Bento-Event-Id, and Bento-Aggregate-Type,
// Bento-Aggregate-Id, Bento-Event-Type, Bento-Sequence and
// Bento-Occurred-At as the NATS publisher names them.
//
// The channel is in confirm mode and every message is published with the
// mandatory flag: a batch is published whole, then its confirms are
// awaited together; a message counts as published only when RabbitMQ
// acknowledged it and did not return it. A returned message (no queue is
// bound for its routing key) is a PermanentError; a nack is an ordinary
// failure. A closed connection or channel (the broker stopped, the
// network failed) fails the messages not yet confirmed with
// outbox.ErrUnavailable, so the relay retries them without spending their
// attempts, and the next Publish connects again.
//
// RabbitMQ does not deduplicate: a message the broker received but whose
// confirm was lost (the connection closed first, or the relay crashed
// before marking the row) is published again. Consumers deduplicate by
// message_id.
package rabbitpub

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/outbox"
)

// Config configures a Publisher. Zero fields take the defaults shown.
type Config struct {
	// URL of the broker (amqp://guest:guest@127.0.0.1:5672/); amqps://
	// for TLS. The vhost is the URL's path; the query takes amqp091-go's
	// parameters (heartbeat, cacertfile, certfile, keyfile, …).
	URL string
	// Exchange is the durable topic exchange messages are published to
	// ("bento.outbox"); it is declared on every (re)connection, which
	// fails if an exchange of that name exists with another type.
	Exchange string
	// RoutingKey, if set, replaces the routing key naming.
	RoutingKey func(m outbox.Message) string
	// Name is the connection's name, sent as the client property
	// connection_name, which the management UI shows ("bento-relay").
	Name string
	// DialTimeout bounds establishing a connection, the AMQP handshake
	// included (5 s); a Publish's context bounds it too.
	DialTimeout time.Duration
}

// DefaultURL is the broker URL of a zero Config.
const DefaultURL = "amqp://guest:guest@127.0.0.1:5672/"

// Header names set on every message, besides the message_id property.
// All but HeaderEventID are natspub's (which carries the event id in
// Nats-Msg-Id).
const (
	HeaderEventID       = "Bento-Event-Id"
	HeaderAggregateType = "Bento-Aggregate-Type"
	HeaderAggregateID   = "Bento-Aggregate-Id"
	HeaderEventType     = "Bento-Event-Type"
	HeaderSequence      = "Bento-Sequence"
	HeaderOccurredAt    = "Bento-Occurred-At"
)

// Publisher is an outbox.Publisher to a RabbitMQ topic exchange. It is
// safe for concurrent use; publishes are serialised on one channel.
type Publisher struct {
	cfg Config

	mu   sync.Mutex // held by Publish; guards the rest
	s    *session   // nil until the next Publish connects
	done bool       // Close was called
	// suspects were unconfirmed when RabbitMQ closed the channel over
	// a message of their batch: each is published alone.
	suspects map[uuid.UUID]bool
}

// session is one connection and its confirm-mode channel.
type session struct {
	conn    *amqp.Connection
	ch      *amqp.Channel
	returns chan amqp.Return
	closes  chan *amqp.Error
	blocked chan amqp.Blocking
	reason  *amqp.Error // why the channel closed, once known
	block   bool        // the broker blocked publishing (resource alarm)
}

// Connect connects to the broker and declares the exchange. Later, a
// Publish that finds the connection closed connects again.
func Connect(ctx context.Context, cfg Config) (*Publisher, error) {
	if cfg.URL == "" {
		cfg.URL = DefaultURL
	}
	if cfg.Exchange == "" {
		cfg.Exchange = "bento.outbox"
	}
	if cfg.Name == "" {
		cfg.Name = "bento-relay"
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if _, err := amqp.ParseURI(cfg.URL); err != nil {
		return nil, fmt.Errorf("rabbitpub: %s is not an AMQP URL: %w", config.Redact(cfg.URL), withoutURL(err))
	}
	p := &Publisher{cfg: cfg}
	s, err := p.connect(ctx)
	if err != nil {
		return nil, err
	}
	p.s = s
	return p, nil
}

// withoutURL drops the URL (and its password) that a url.Error repeats.
func withoutURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return errors.New(ue.Err.Error())
	}
	return err
}

// connect dials, opens a channel in confirm mode and declares the
// exchange.
func (p *Publisher) connect(ctx context.Context) (*session, error) {
	where := config.Redact(p.cfg.URL)
	timeout := p.cfg.DialTimeout
	if d, ok := ctx.Deadline(); ok {
		timeout = min(timeout, time.Until(d))
	}
	if timeout <= 0 {
		return nil, fmt.Errorf("rabbitpub: connecting to %s: %w", where, context.DeadlineExceeded)
	}
	conn, err := amqp.DialConfig(p.cfg.URL, amqp.Config{
		Properties: amqp.Table{"connection_name": p.cfg.Name, "product": "bento"},
		Dial: func(network, addr string) (net.Conn, error) {
			d := net.Dialer{Timeout: timeout}
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			// The handshake's deadline; cleared once the connection is open.
			if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
				c.Close()
				return nil, err
			}
			return c, nil
		},
	})
	if err != nil {
		return nil, fmt.Errorf("rabbitpub: connecting to %s: %w", where, withoutURL(err))
	}
	s := &session{conn: conn}
	fail := func(what string, err error) (*session, error) {
		conn.Close()
		return nil, fmt.Errorf("rabbitpub: %s on %s: %w", what, where, err)
	}
	if s.ch, err = conn.Channel(); err != nil {
		return fail("opening a channel", err)
	}
	if err := s.ch.Confirm(false); err != nil {
		return fail("turning on publisher confirms", err)
	}
	if err := s.ch.ExchangeDeclare(p.cfg.Exchange, amqp.ExchangeTopic, true, false, false, false, nil); err != nil {
		return fail(fmt.Sprintf("declaring the durable topic exchange %q", p.cfg.Exchange), err)
	}
	// Returns are read while publishing and while confirms are awaited;
	// the buffer lets the connection's reader hand them over in between.
	s.returns = s.ch.NotifyReturn(make(chan amqp.Return, 1024))
	s.closes = s.ch.NotifyClose(make(chan *amqp.Error, 1))
	s.blocked = conn.NotifyBlocked(make(chan amqp.Blocking, 4))
	return s, nil
}

// closed reports whether the session's channel is closed, noting why.
func (s *session) closed() bool {
	if s.reason == nil {
		select {
		case e, ok := <-s.closes:
			if ok && e != nil {
				s.reason = e
			}
		default:
		}
	}
	return s.ch.IsClosed() || s.conn.IsClosed()
}

// isBlocked reports whether the broker last said it blocks publishing on
// the connection (a memory or disk alarm): publishes would wait in
// socket buffers until it lifts.
func (s *session) isBlocked() bool {
	for {
		select {
		case b, ok := <-s.blocked:
			if !ok {
				return s.block
			}
			s.block = b.Active
		default:
			return s.block
		}
	}
}

// closeErr describes the closed channel's failure: ErrUnavailable unless
// the broker closed it over something a publish sent (a precondition or
// a malformed frame), which retrying the same messages would repeat.
func (s *session) closeErr() error {
	if s.reason == nil {
		return fmt.Errorf("%w: the connection to RabbitMQ closed", outbox.ErrUnavailable)
	}
	switch s.reason.Code {
	case amqp.PreconditionFailed, amqp.SyntaxError, amqp.CommandInvalid, amqp.FrameError, amqp.NotImplemented:
		if s.reason.Server {
			return fmt.Errorf("RabbitMQ closed the channel: %w", s.reason)
		}
	}
	return fmt.Errorf("%w: RabbitMQ closed the channel: %w", outbox.ErrUnavailable, s.reason)
}

// drop closes the session, if any; the next Publish connects again.
func (p *Publisher) drop() {
	if p.s != nil {
		_ = p.s.conn.CloseDeadline(time.Now().Add(time.Second))
		p.s = nil
	}
}

// Close closes the connection, waiting at most 5 s for the broker to
// agree. Publish fails with ErrUnavailable afterwards.
func (p *Publisher) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done = true
	if p.s == nil {
		return nil
	}
	err := p.s.conn.CloseDeadline(time.Now().Add(5 * time.Second))
	p.s = nil
	if errors.Is(err, amqp.ErrClosed) {
		return nil
	}
	return err
}

// Exchange returns the exchange messages are published to.
func (p *Publisher) Exchange() string { return p.cfg.Exchange }

// RoutingKey returns the routing key of m.
func (p *Publisher) RoutingKey(m outbox.Message) string {
	if p.cfg.RoutingKey != nil {
		return p.cfg.RoutingKey(m)
	}
	return word(m.AggregateType) + "." + word(m.Type)
}

// word makes s one word of a topic routing key: no dots (which separate
// words) and no wildcards or spaces (which bindings would read
// differently).
func word(s string) string {
	return strings.Map(func(r rune) rune {
		switch r {
		case '.', ' ', '*', '#', '\t', '\r', '\n':
			return '_'
		}
		return r
	}, s)
}

// publishing builds the AMQP message of m. It refuses what AMQP cannot
// carry (a header name over 255 bytes): a frame that fails to encode
// half-way would end the whole connection.
func publishing(m outbox.Message) (amqp.Publishing, error) {
	h := make(amqp.Table, len(m.Headers)+6)
	// The event's own headers first, so they cannot replace Bento's; and
	// none RabbitMQ reads as instructions: CC and BCC route the message
	// to more queues, x-* are for the broker and its plugins.
	for k, v := range m.Headers {
		if strings.EqualFold(k, "CC") || strings.EqualFold(k, "BCC") || (len(k) >= 2 && strings.EqualFold(k[:2], "x-")) {
			continue
		}
		if len(k) > 255 {
			return amqp.Publishing{}, fmt.Errorf("header name %.40q… is %d bytes; AMQP allows 255", k, len(k))
		}
		h[k] = v
	}
	h[HeaderEventID] = m.ID.String()
	h[HeaderAggregateType] = m.AggregateType
	h[HeaderAggregateID] = m.AggregateID
	h[HeaderEventType] = m.Type
	h[HeaderSequence] = strconv.FormatInt(m.Sequence, 10)
	h[HeaderOccurredAt] = m.OccurredAt.UTC().Format(time.RFC3339Nano)
	pub := amqp.Publishing{
		Headers:      h,
		ContentType:  "application/json",
		DeliveryMode: amqp.Persistent,
		MessageId:    m.ID.String(),
		Timestamp:    m.OccurredAt,
		AppId:        "bento",
		Body:         m.Payload,
	}
	// Properties are short strings (255 bytes); the headers carry both
	// in full anyway.
	if len(m.Type) <= 255 {
		pub.Type = m.Type
	}
	if c := m.Headers[outbox.HeaderCorrelationID]; len(c) <= 255 {
		pub.CorrelationId = c
	}
	return pub, nil
}

// Publish publishes every message with the mandatory flag, then waits for
// their confirms (or ctx). A message is published (nil) when RabbitMQ
// acknowledged it and did not return it. While the broker is down every
// message fails at once with outbox.ErrUnavailable; the next call
// connects again. If ctx ends first, the messages not yet confirmed fail
// with ErrUnavailable and the connection is closed, so that no late
// confirm or return is taken for a later batch's.
//
// When RabbitMQ closes the channel over something a publish sent (406
// PRECONDITION_FAILED: a message over its max_message_size), it does not
// say which message: the batch's unconfirmed messages then fail with
// ErrUnavailable, spending no attempts, and the next Publish sends each of
// them alone, so that only the culprit fails (an ordinary failure) and no
// innocent message is dead-lettered with it.
func (p *Publisher) Publish(ctx context.Context, msgs []outbox.Message) []error {
	if len(msgs) == 0 {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.suspects) == 0 {
		return p.publish(ctx, msgs)
	}
	// In order: the messages before a suspect go as one batch, then the
	// suspect alone, so each aggregate's run keeps its order; after a
	// failure the rest of its aggregate's run is not sent.
	out := make([]error, len(msgs))
	var guard outbox.RunGuard
	var chunk []int
	flush := func() {
		if len(chunk) == 0 {
			return
		}
		batch := make([]outbox.Message, len(chunk))
		for k, i := range chunk {
			batch[k] = msgs[i]
		}
		for k, err := range p.publish(ctx, batch) {
			out[chunk[k]] = err
			if err != nil {
				guard.Fail(msgs[chunk[k]])
			}
		}
		chunk = chunk[:0]
	}
	for i, m := range msgs {
		if !p.suspects[m.ID] {
			chunk = append(chunk, i)
			continue
		}
		flush()
		if guard.Blocked(m) {
			out[i] = outbox.ErrSkipped
			continue
		}
		out[i] = p.publish(ctx, msgs[i:i+1])[0]
		if out[i] == nil {
			delete(p.suspects, m.ID)
		} else {
			guard.Fail(m)
		}
	}
	flush()
	return out
}

// suspect notes a message to publish alone next time.
func (p *Publisher) suspect(id uuid.UUID) {
	if p.suspects == nil || len(p.suspects) >= 10000 {
		// Dead-lettered culprits never come back: forget them all now and
		// then rather than keep them for ever.
		p.suspects = map[uuid.UUID]bool{}
	}
	p.suspects[id] = true
}

// How a message failed because its channel closed.
const (
	notClosed   = iota
	notSent     // the channel was closed before it was sent
	unconfirmed // sent, but the channel closed before its confirm
)

// publish publishes a batch on the session (connecting first if there is
// none) and waits for its confirms. p.mu is held.
func (p *Publisher) publish(ctx context.Context, msgs []outbox.Message) []error {
	out := make([]error, len(msgs))
	closed := make([]int, len(msgs))
	failAll := func(from int, err error) {
		for j := from; j < len(msgs); j++ {
			if out[j] == nil {
				out[j] = fmt.Errorf("rabbitpub: %s: %w", msgs[j].ID, err)
			}
		}
	}
	if p.done {
		failAll(0, fmt.Errorf("%w: the publisher is closed", outbox.ErrUnavailable))
		return out
	}
	if err := ctx.Err(); err != nil {
		failAll(0, fmt.Errorf("not sent: %w: %w", outbox.ErrUnavailable, err))
		return out
	}
	if p.s != nil && p.s.closed() {
		p.drop()
	}
	if p.s == nil {
		s, err := p.connect(ctx)
		if err != nil {
			// Whatever keeps the relay from the broker (down, refusing
			// the credentials, an exchange of another type) is not the
			// messages' fault: it must not dead-letter them.
			failAll(0, fmt.Errorf("%w: %w", outbox.ErrUnavailable, err))
			return out
		}
		p.s = s
	}
	s := p.s
	if s.isBlocked() {
		failAll(0, fmt.Errorf("%w: RabbitMQ blocks publishing on this connection (a memory or disk alarm)", outbox.ErrUnavailable))
		return out
	}
	// A context that ends while a write waits (the broker stopped reading)
	// or while confirms are awaited closes the connection: the write
	// returns, and no confirm of this batch can reach a later one.
	stop := context.AfterFunc(ctx, func() { _ = s.conn.CloseDeadline(time.Now()) })
	defer func() {
		if !stop() {
			p.drop()
		}
	}()

	confirms := make([]*amqp.DeferredConfirmation, len(msgs))
	index := make(map[string]int, len(msgs))
	returned := make(map[int]amqp.Return)
	returns := s.returns
	// takeReturns notes the returns received so far. The connection's
	// reader waits for room in the buffer (and drops a return after 5 s),
	// so they are taken while publishing too, not only while waiting.
	takeReturns := func() {
		for returns != nil {
			select {
			case r, ok := <-returns:
				if !ok {
					returns = nil
					return
				}
				if i, ok := index[r.MessageId]; ok {
					returned[i] = r
				}
			default:
				return
			}
		}
	}
	var guard outbox.RunGuard // a run stops at its first message not sent
	for i, m := range msgs {
		takeReturns()
		if guard.Blocked(m) {
			out[i] = outbox.ErrSkipped
			continue
		}
		key := p.RoutingKey(m)
		if len(key) > 255 {
			out[i] = &outbox.PermanentError{Err: fmt.Errorf("rabbitpub: %s: routing key %.40q… is %d bytes; AMQP allows 255", m.ID, key, len(key))}
			guard.Fail(m)
			continue
		}
		pub, err := publishing(m)
		if err != nil {
			out[i] = &outbox.PermanentError{Err: fmt.Errorf("rabbitpub: %s: %w", m.ID, err)}
			guard.Fail(m)
			continue
		}
		dc, err := s.ch.PublishWithDeferredConfirm(p.cfg.Exchange, key, true, false, pub)
		if err != nil {
			// The message was checked: the connection failed (the
			// library shuts it down on a failed write).
			if s.closed() {
				err = s.closeErr()
			} else {
				err = fmt.Errorf("%w: %w", outbox.ErrUnavailable, err)
			}
			for j := i; j < len(msgs); j++ {
				if out[j] == nil {
					closed[j] = notSent
				}
			}
			failAll(i, fmt.Errorf("not sent: %w", err))
			p.drop()
			break
		}
		confirms[i] = dc
		index[pub.MessageId] = i
	}

wait:
	for i, dc := range confirms {
		if dc == nil {
			continue
		}
		for {
			select {
			case r, ok := <-returns:
				if !ok {
					returns = nil
				} else if j, ok := index[r.MessageId]; ok {
					returned[j] = r
				}
				continue
			case <-dc.Done():
			case <-ctx.Done():
				for j := i; j < len(confirms); j++ {
					if confirms[j] != nil && !confirms[j].Acked() {
						out[j] = fmt.Errorf("rabbitpub: %s: no confirm: %w: %w", msgs[j].ID, outbox.ErrUnavailable, ctx.Err())
					}
				}
				break wait
			}
			break
		}
		if !dc.Acked() {
			if s.closed() {
				closed[i] = unconfirmed
				out[i] = fmt.Errorf("rabbitpub: %s: not confirmed: %w", msgs[i].ID, s.closeErr())
			} else {
				out[i] = fmt.Errorf("rabbitpub: %s: RabbitMQ refused the message (nack)", msgs[i].ID)
			}
		}
	}
	// A message's return comes before its confirm, on the connection's one
	// reader: once every confirm is in, every return is in the buffer.
	takeReturns()
	for i, r := range returned {
		if out[i] == nil {
			out[i] = &outbox.PermanentError{Err: fmt.Errorf("rabbitpub: %s: returned by RabbitMQ (%d %s): no queue is bound to exchange %s for routing key %q",
				msgs[i].ID, r.ReplyCode, r.ReplyText, p.cfg.Exchange, r.RoutingKey)}
		}
	}
	if s.closed() {
		if reason := s.closeErr(); !errors.Is(reason, outbox.ErrUnavailable) {
			// Closed over one of the messages sent, but which one? Alone,
			// it is that one; in a batch, each unconfirmed one is sent
			// alone next time, and none spends an attempt now.
			for i, c := range closed {
				switch {
				case c == unconfirmed && len(msgs) == 1:
					p.suspect(msgs[i].ID)
				case c == unconfirmed:
					p.suspect(msgs[i].ID)
					out[i] = fmt.Errorf("rabbitpub: %s: not confirmed: %w: %w; each unconfirmed message of the batch is published alone next time",
						msgs[i].ID, outbox.ErrUnavailable, reason)
				case c == notSent:
					out[i] = fmt.Errorf("rabbitpub: %s: not sent: %w: %w", msgs[i].ID, outbox.ErrUnavailable, reason)
				}
			}
		}
		p.drop()
	}
	return out
}

var _ outbox.Publisher = (*Publisher)(nil)
