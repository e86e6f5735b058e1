package outbox

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"sync"
	"time"
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

// LogPublisher writes each message as one log line, "bento: event
// published", through slog: the default publisher of the embedded setup,
// with no broker. It always succeeds.
//
// A LogPublisher built as a literal (LogPublisher{Logger: l}) logs every
// message at info level. One from NewLogPublisher summarises at volume:
// within a window of limit.Every, the first limit.Lines messages get their
// info line; the others are logged at debug level only, one info line
// ("bento: event log summarised") says so when the first is held back, and
// one more ("bento: events published", with count, logged and window)
// follows when the window ends. A backlog of thousands of events thus
// yields a dozen info lines, not thousands.
type LogPublisher struct {
	Logger *slog.Logger
	limit  *logLimiter // nil: every message at info level
}

// LogLimit bounds a LogPublisher's info lines (NewLogPublisher).
type LogLimit struct {
	// Lines is how many messages per window get their own info line
	// (default 10).
	Lines int
	// Every is the window (default 10 s).
	Every time.Duration
}

// NewLogPublisher returns a LogPublisher that summarises at volume; zero
// fields of limit take their defaults (10 lines per 10 s).
func NewLogPublisher(logger *slog.Logger, limit LogLimit) LogPublisher {
	if limit.Lines <= 0 {
		limit.Lines = 10
	}
	if limit.Every <= 0 {
		limit.Every = 10 * time.Second
	}
	return LogPublisher{Logger: logger, limit: &logLimiter{logger: logger, limit: limit}}
}

// Publish logs the messages; it always succeeds.
func (p LogPublisher) Publish(ctx context.Context, msgs []Message) []error {
	for _, m := range msgs {
		level := slog.LevelInfo
		if p.limit != nil && !p.limit.admit(ctx, time.Now()) {
			level = slog.LevelDebug
		}
		p.Logger.LogAttrs(ctx, level, "bento: event published",
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

// Flush ends the open window now and logs its summary, if messages were
// held back in it: call it before the process exits, or the last window's
// count is lost. It does nothing on a LogPublisher built as a literal.
func (p LogPublisher) Flush() {
	if p.limit == nil {
		return
	}
	p.limit.mu.Lock()
	count, logged := p.limit.closeLocked()
	p.limit.mu.Unlock()
	p.limit.summarise(context.Background(), count, logged)
}

// logLimiter counts a LogPublisher's messages per window.
type logLimiter struct {
	logger *slog.Logger
	limit  LogLimit

	mu     sync.Mutex
	start  time.Time // the open window's start; zero: none open
	window uint64    // the open window's number, so a late timer finds it gone
	logged int       // messages of the window logged at info level
	held   int       // messages of the window logged at debug level only
	timer  *time.Timer
}

// admit counts one message published at now and reports whether it gets
// an info line.
func (l *logLimiter) admit(ctx context.Context, now time.Time) bool {
	l.mu.Lock()
	if !l.start.IsZero() && now.Sub(l.start) >= l.limit.Every {
		// The window ended before its timer ran: summarise it here.
		count, logged := l.closeLocked()
		l.mu.Unlock()
		l.summarise(ctx, count, logged)
		l.mu.Lock()
	}
	if l.start.IsZero() {
		l.start, l.logged, l.held = now, 0, 0
		l.window++
	}
	if l.logged < l.limit.Lines {
		l.logged++
		l.mu.Unlock()
		return true
	}
	l.held++
	first := l.held == 1
	if first {
		w := l.window
		l.timer = time.AfterFunc(l.start.Add(l.limit.Every).Sub(now), func() { l.expire(w) })
	}
	l.mu.Unlock()
	if first {
		l.logger.LogAttrs(ctx, slog.LevelInfo, "bento: event log summarised",
			slog.Int("lines", l.limit.Lines), slog.Duration("window", l.limit.Every),
			slog.String("detail", "more events than lines in the window: the others are logged at debug level and counted in one line at the window's end"))
	}
	return false
}

// expire ends window w when its time is up, if it is still open.
func (l *logLimiter) expire(w uint64) {
	l.mu.Lock()
	if l.start.IsZero() || l.window != w {
		l.mu.Unlock()
		return
	}
	count, logged := l.closeLocked()
	l.mu.Unlock()
	l.summarise(context.Background(), count, logged)
}

// closeLocked ends the open window and returns its counts.
func (l *logLimiter) closeLocked() (count, logged int) {
	count, logged = l.logged+l.held, l.logged
	if l.timer != nil {
		l.timer.Stop()
		l.timer = nil
	}
	if l.held == 0 {
		count = 0 // nothing was held back: every message had its line
	}
	l.start, l.logged, l.held = time.Time{}, 0, 0
	return count, logged
}

// summarise logs a window's count, if messages were held back in it.
func (l *logLimiter) summarise(ctx context.Context, count, logged int) {
	if count == 0 {
		return
	}
	l.logger.LogAttrs(ctx, slog.LevelInfo, "bento: events published",
		slog.Int("count", count), slog.Int("logged", logged), slog.Duration("window", l.limit.Every))
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
