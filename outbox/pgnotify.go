package outbox

import (
	"context"
	"log/slog"

	"time"

	"github.com/jackc/pgx/v5"

	"github.com/bento-go/bento/driver"
)

// DefaultChannel is the PostgreSQL LISTEN/NOTIFY channel of the outbox.
const DefaultChannel = "bento_outbox"

// NotifyInterval is the shortest time between two NOTIFYs of a PGNotifier.
const NotifyInterval = 5 * time.Millisecond

// PGNotifier tells relays in other processes that outbox rows committed,
// with NOTIFY on PostgreSQL. A transaction that issues NOTIFY takes a
// global lock at commit, which serialises commits; so NOTIFY is never
// issued inside the unit of work: Run waits for wake-ups after COMMIT (a
// Notifier subscription) and sends one pg_notify, outside any transaction,
// for all the wake-ups that arrived while it was busy.
type PGNotifier struct {
	drv     *driver.Driver
	channel string
	logger  *slog.Logger
}

// NewPGNotifier returns a notifier that sends NOTIFY channel through drv.
func NewPGNotifier(drv *driver.Driver, channel string, logger *slog.Logger) *PGNotifier {
	if channel == "" {
		channel = DefaultChannel
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &PGNotifier{drv: drv, channel: channel, logger: logger}
}

// Run sends a NOTIFY after each wake-up (coalesced) until ctx ends.
func (n *PGNotifier) Run(ctx context.Context, wake <-chan struct{}) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-wake:
		}
		if _, err := n.drv.ExecContext(driver.UsePrimary(ctx), "SELECT pg_notify($1, '')", n.channel); err != nil && ctx.Err() == nil {
			n.logger.Warn("bento: outbox NOTIFY failed; relays fall back to polling", "error", err.Error())
		}
		// At most one NOTIFY per NotifyInterval: under a high commit rate
		// the wake-ups of that interval share one, so NOTIFY adds at most
		// NotifyInterval of latency and 1/NotifyInterval statements per
		// second, whatever the rate.
		select {
		case <-ctx.Done():
			return
		case <-time.After(NotifyInterval):
		}
	}
}

// PGListener wakes a relay when another process NOTIFYs the channel. It
// holds one dedicated connection (not from the pool) and reconnects after
// failures; while it is down the relay still polls.
type PGListener struct {
	cfg     *pgx.ConnConfig
	channel string
	logger  *slog.Logger
	c       chan struct{}
}

// NewPGListener returns a listener on channel with the connection
// settings cfg (dialects.PostgresConnConfig).
func NewPGListener(cfg *pgx.ConnConfig, channel string, logger *slog.Logger) *PGListener {
	if channel == "" {
		channel = DefaultChannel
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &PGListener{cfg: cfg, channel: channel, logger: logger, c: make(chan struct{}, 1)}
}

// C returns the channel that becomes ready on a notification.
func (l *PGListener) C() <-chan struct{} { return l.c }

// Run listens until ctx ends.
func (l *PGListener) Run(ctx context.Context) {
	delay := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := l.listen(ctx)
		if ctx.Err() != nil {
			return
		}
		l.logger.Warn("bento: outbox LISTEN lost; reconnecting", "error", errString(err), "in", delay)
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		if delay < 5*time.Second {
			delay *= 2
		}
	}
}

func (l *PGListener) listen(ctx context.Context) error {
	conn, err := pgx.ConnectConfig(ctx, l.cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{l.channel}.Sanitize()); err != nil {
		return err
	}
	// A wake-up after (re)connecting catches what was missed meanwhile.
	l.notify()
	for {
		if _, err := conn.WaitForNotification(ctx); err != nil {
			return err
		}
		l.notify()
	}
}

func (l *PGListener) notify() {
	select {
	case l.c <- struct{}{}:
	default:
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
