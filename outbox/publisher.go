package outbox

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
)

// Publisher delivers outbox messages to a broker.
type Publisher interface {
	// Publish sends msgs and returns one result per message, in order: nil
	// when the broker acknowledged it, the error otherwise. A call holds
	// runs: the events of one aggregate come in sequence order, and must
	// reach the broker in that order (events of different aggregates may
	// be sent concurrently). Once an event fails before it was sent, the
	// later events of its aggregate in the call must not be sent: their
	// result is ErrSkipped (RunGuard keeps track). Publish must respect
	// ctx.
	Publish(ctx context.Context, msgs []Message) []error
}

// ErrUnavailable marks a publish error caused by the broker, not by the
// message: disconnected, no responders, no acknowledgement in time. The
// relay retries such events after OUTBOX_BACKOFF without spending their
// attempts, so an outage of any length dead-letters nothing and keeps
// per-aggregate order. Publishers wrap it (fmt.Errorf("%w: …",
// outbox.ErrUnavailable)).
var ErrUnavailable = errors.New("broker unavailable")

// PermanentError marks a publish error that retrying cannot fix (the
// message is dead-lettered at once).
type PermanentError struct{ Err error }

func (e *PermanentError) Error() string { return "permanent: " + e.Err.Error() }
func (e *PermanentError) Unwrap() error { return e.Err }

// errorsFor returns the same error for every message.
func errorsFor(n int, err error) []error {
	out := make([]error, n)
	for i := range out {
		out[i] = err
	}
	return out
}

// LogPublisher writes each message as one JSON log line through slog at
// info level: the default publisher of the embedded setup, with no broker.
type LogPublisher struct {
	Logger *slog.Logger
}

// Publish logs the messages; it always succeeds.
func (p LogPublisher) Publish(ctx context.Context, msgs []Message) []error {
	for _, m := range msgs {
		p.Logger.LogAttrs(ctx, slog.LevelInfo, "bento: event published",
			slog.String("event_id", m.ID.String()),
			slog.String("aggregate_type", m.AggregateType),
			slog.String("aggregate_id", m.AggregateID),
			slog.String("type", m.Type),
			slog.Int64("sequence", m.Sequence),
			slog.Any("payload", json.RawMessage(m.Payload)),
			slog.Any("headers", m.Headers))
	}
	return make([]error, len(msgs))
}

// ChannelPublisher hands messages to an in-process channel: for tests and
// for consumers in the same process. A message is acknowledged once it is
// in the channel.
type ChannelPublisher struct {
	c chan Message
	// Reject, if set, is asked for each message; a non-nil error fails it
	// (tests use it to make poison messages).
	Reject func(Message) error
}

// NewChannelPublisher returns a publisher with a channel of the given
// buffer size.
func NewChannelPublisher(buffer int) *ChannelPublisher {
	return &ChannelPublisher{c: make(chan Message, buffer)}
}

// C returns the channel messages arrive on.
func (p *ChannelPublisher) C() <-chan Message { return p.c }

// Publish sends each message to the channel, waiting for room as long as
// ctx allows.
func (p *ChannelPublisher) Publish(ctx context.Context, msgs []Message) []error {
	out := make([]error, len(msgs))
	var guard RunGuard
	for i, m := range msgs {
		if guard.Blocked(m) {
			out[i] = ErrSkipped
			continue
		}
		if p.Reject != nil {
			if err := p.Reject(m); err != nil {
				out[i] = err
				guard.Fail(m)
				continue
			}
		}
		select {
		case p.c <- m:
		case <-ctx.Done():
			for j := i; j < len(msgs); j++ {
				out[j] = ctx.Err()
			}
			return out
		}
	}
	return out
}

var (
	_ Publisher = LogPublisher{}
	_ Publisher = (*ChannelPublisher)(nil)
)
