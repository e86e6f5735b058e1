// Package natspub publishes Bento outbox messages to NATS JetStream.
//
// Each message goes to subject <prefix>.<aggregate type>.<event type>
// (bento.Order.OrderPlaced) with the header Nats-Msg-Id set to the event
// id, so the stream drops a message published twice within its duplicate
// window (a relay that crashed between publish and mark publishes again).
// The event's own headers (correlation id, trace context) are copied too,
// except any named Nats-* and any that would replace a Bento-* header.
// Publishes are asynchronous with a bound on the acks in flight; a message
// counts as published only when its PubAck arrives.
package natspub

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/outbox"
)

// Config configures a Publisher. Zero fields take the defaults shown.
type Config struct {
	// URL of the NATS server (nats://127.0.0.1:4222), or of several
	// servers of one cluster separated by commas: the connection picks one
	// and, when it fails, reconnects to another.
	URL string
	// SubjectPrefix starts every subject ("bento").
	SubjectPrefix string
	// Stream is the JetStream stream the subjects belong to
	// ("BENTO_OUTBOX"); with CreateStream it is created (or updated) to
	// capture <prefix>.> with a duplicate window of Duplicates.
	Stream       string
	CreateStream bool
	// Replicas is the stream's number of replicas when EnsureStream
	// creates or updates it (1); on a JetStream cluster, 3 keeps the
	// stream available while one server is down. It cannot exceed the
	// cluster's size.
	Replicas int
	// Duplicates is the stream's duplicate window (2 min, JetStream's
	// default).
	Duplicates time.Duration
	// MaxInFlight bounds the publishes awaiting their ack (256).
	MaxInFlight int
	// Subject, if set, replaces the subject naming.
	Subject func(m outbox.Message) string
	// Name is the NATS connection's name ("bento-relay").
	Name string
}

// Publisher is an outbox.Publisher to JetStream. It is safe for
// concurrent use.
type Publisher struct {
	nc  *nats.Conn
	js  jetstream.JetStream
	cfg Config
}

// Connect connects to NATS and, with CreateStream, makes sure the stream
// exists. The connection reconnects on its own for ever; publishes fail
// (and are retried by the relay) while it is down.
func Connect(ctx context.Context, cfg Config) (*Publisher, error) {
	if cfg.URL == "" {
		cfg.URL = nats.DefaultURL
	}
	if cfg.SubjectPrefix == "" {
		cfg.SubjectPrefix = "bento"
	}
	if cfg.Stream == "" {
		cfg.Stream = "BENTO_OUTBOX"
	}
	if cfg.Duplicates <= 0 {
		cfg.Duplicates = 2 * time.Minute
	}
	if cfg.Replicas <= 0 {
		cfg.Replicas = 1
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 256
	}
	if cfg.Name == "" {
		cfg.Name = "bento-relay"
	}
	// No reconnect buffer: the outbox is the buffer. A publish while
	// disconnected fails at once (the relay retries the row later) rather
	// than waiting in memory for an ack that cannot come before the
	// reconnect.
	nc, err := nats.Connect(cfg.URL, nats.Name(cfg.Name), nats.MaxReconnects(-1), nats.ReconnectWait(250*time.Millisecond),
		nats.RetryOnFailedConnect(false), nats.ReconnectBufSize(-1))
	if err != nil {
		return nil, fmt.Errorf("natspub: connecting to %s: %w", config.Redact(cfg.URL), redactedError{err, cfg.URL})
	}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(cfg.MaxInFlight))
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("natspub: %w", err)
	}
	p := &Publisher{nc: nc, js: js, cfg: cfg}
	if cfg.CreateStream {
		if err := p.EnsureStream(ctx); err != nil {
			nc.Close()
			return nil, err
		}
	}
	return p, nil
}

// EnsureStream creates or updates the stream to capture <prefix>.>, with
// Config.Replicas replicas.
func (p *Publisher) EnsureStream(ctx context.Context) error {
	_, err := p.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:       p.cfg.Stream,
		Subjects:   []string{p.cfg.SubjectPrefix + ".>"},
		Duplicates: p.cfg.Duplicates,
		Storage:    jetstream.FileStorage,
		Replicas:   p.cfg.Replicas,
	})
	if err != nil {
		return fmt.Errorf("natspub: stream %s: %w", p.cfg.Stream, err)
	}
	return nil
}

// JetStream returns the JetStream context (tests read the stream with it).
func (p *Publisher) JetStream() jetstream.JetStream { return p.js }

// Close drains the connection.
func (p *Publisher) Close() error {
	if err := p.nc.Drain(); err != nil {
		p.nc.Close()
		return err
	}
	return nil
}

// Subject returns the subject of m.
func (p *Publisher) Subject(m outbox.Message) string {
	if p.cfg.Subject != nil {
		return p.cfg.Subject(m)
	}
	return p.cfg.SubjectPrefix + "." + token(m.AggregateType) + "." + token(m.Type)
}

// token makes s a valid subject token: no dots, spaces or wildcards.
func token(s string) string {
	return strings.Map(func(r rune) rune {
		switch r {
		case '.', ' ', '*', '>', '\t', '\r', '\n':
			return '_'
		}
		return r
	}, s)
}

// Header names set on every message besides Nats-Msg-Id.
const (
	HeaderAggregateType = "Bento-Aggregate-Type"
	HeaderAggregateID   = "Bento-Aggregate-Id"
	HeaderEventType     = "Bento-Event-Type"
	HeaderSequence      = "Bento-Sequence"
	HeaderOccurredAt    = "Bento-Occurred-At"
)

// Publish sends the messages asynchronously, in order on one connection
// (so each aggregate's run reaches the stream in sequence order), and
// waits for every PubAck (or ctx). A duplicate ack (the stream already had
// the event id) counts as published. A message that cannot be sent stops
// its aggregate's run: the later ones are not sent (outbox.ErrSkipped).
// While the connection is down every message fails at once; waiting for
// room among the acks in flight is bounded by ctx too.
func (p *Publisher) Publish(ctx context.Context, msgs []outbox.Message) []error {
	out := make([]error, len(msgs))
	if !p.nc.IsConnected() {
		err := fmt.Errorf("natspub: not connected to NATS (%s): %w: %w", p.nc.Status(), outbox.ErrUnavailable, nats.ErrDisconnected)
		for i := range out {
			out[i] = err
		}
		return out
	}
	futures := make([]jetstream.PubAckFuture, len(msgs))
	var guard outbox.RunGuard
	for i, m := range msgs {
		if guard.Blocked(m) {
			out[i] = outbox.ErrSkipped
			continue
		}
		if err := ctx.Err(); err != nil {
			for j := i; j < len(msgs); j++ {
				out[j] = fmt.Errorf("natspub: %s: not sent: %w: %w", msgs[j].ID, outbox.ErrUnavailable, err)
			}
			break
		}
		opts := []jetstream.PublishOpt{jetstream.WithMsgID(m.ID.String()), jetstream.WithExpectStream(p.cfg.Stream)}
		if deadline, ok := ctx.Deadline(); ok {
			opts = append(opts, jetstream.WithStallWait(max(time.Until(deadline), time.Millisecond)))
		}
		nm := nats.NewMsg(p.Subject(m))
		nm.Data = m.Payload
		// The event's own headers first, so they cannot replace Bento's;
		// and none named Nats-*: JetStream reads those as instructions
		// (Nats-Expected-Last-Sequence, Nats-Rollup, …), which would fail
		// every attempt of the event or act on the stream.
		for k, v := range m.Headers {
			if len(k) >= 5 && strings.EqualFold(k[:5], "Nats-") {
				continue
			}
			nm.Header.Set(k, v)
		}
		nm.Header.Set(HeaderAggregateType, m.AggregateType)
		nm.Header.Set(HeaderAggregateID, m.AggregateID)
		nm.Header.Set(HeaderEventType, m.Type)
		nm.Header.Set(HeaderSequence, strconv.FormatInt(m.Sequence, 10))
		nm.Header.Set(HeaderOccurredAt, m.OccurredAt.UTC().Format(time.RFC3339Nano))
		f, err := p.js.PublishMsgAsync(nm, opts...)
		if err != nil {
			if unavailable(err) {
				err = fmt.Errorf("%w: %w", outbox.ErrUnavailable, err)
			}
			out[i] = fmt.Errorf("natspub: publishing %s to %s: %w", m.ID, nm.Subject, err)
			guard.Fail(m) // its aggregate's later events must not overtake it
			continue
		}
		futures[i] = f
	}
	for i, f := range futures {
		if f == nil {
			continue
		}
		select {
		case <-f.Ok():
		case err := <-f.Err():
			if unavailable(err) {
				err = fmt.Errorf("%w: %w", outbox.ErrUnavailable, err)
			}
			out[i] = fmt.Errorf("natspub: %s: %w", msgs[i].ID, err)
		case <-ctx.Done():
			out[i] = fmt.Errorf("natspub: %s: no ack: %w: %w", msgs[i].ID, outbox.ErrUnavailable, ctx.Err())
		}
	}
	return out
}

var _ outbox.Publisher = (*Publisher)(nil)

// unavailable reports errors that say the broker, not the message, is the
// problem: the relay then waits without spending the event's attempts.
func unavailable(err error) bool {
	return errors.Is(err, nats.ErrDisconnected) || errors.Is(err, nats.ErrConnectionClosed) ||
		errors.Is(err, nats.ErrConnectionReconnecting) || errors.Is(err, nats.ErrNoResponders) ||
		errors.Is(err, nats.ErrTimeout) || errors.Is(err, jetstream.ErrNoStreamResponse) ||
		errors.Is(err, jetstream.ErrAsyncPublishTimeout) || errors.Is(err, context.DeadlineExceeded)
}

// redactedError is err with the secrets of urls removed from its text: the
// NATS client quotes the URL it was given in some of its errors (a URL that
// does not parse, say). Unwrap returns err itself.
type redactedError struct {
	err  error
	urls string
}

func (e redactedError) Error() string { return config.RedactIn(e.err.Error(), e.urls) }
func (e redactedError) Unwrap() error { return e.err }
