// Package config loads Bento's settings from defaults, an optional YAML
// file, the environment and command-line flags, in that order of
// precedence, using koanf.
//
// Every setting has one name, its environment variable (DB_POOL_SIZE); the
// same setting is the flag --db-pool-size and the file key DB_POOL_SIZE or
// db.pool_size. Every bad value is an *Error that names the setting, shows the
// value (passwords redacted) and says what is accepted. A Config never
// renders a password: its String, LogValue and MarshalText forms redact it.
//
//	cfg, err := config.Load(config.Source{})
//	if err != nil { ... } // e.g. DB_POOL_SIZE="abc" (environment): not an integer; accepted: ...
package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/knadh/koanf/parsers/yaml"
	"github.com/knadh/koanf/providers/confmap"
	"github.com/knadh/koanf/providers/env/v2"
	"github.com/knadh/koanf/providers/file"
	"github.com/knadh/koanf/v2"
)

// Config is the whole of Bento's configuration. Default returns one that
// works with no setup: an embedded SQLite file bento.db in the working
// directory.
type Config struct {
	DB     DB
	Retry  Retry
	Drain  Drain
	Outbox Outbox
	Inbox  Inbox
}

// Inbox holds the event consumer settings (INBOX_*); the consumer reads
// the stream of OUTBOX_STREAM on OUTBOX_NATS_URL.
type Inbox struct {
	// Consumer is the durable JetStream consumer's name (INBOX_CONSUMER).
	Consumer string
	// MaxDeliver bounds the deliveries of a failing event before it is
	// dead-lettered (INBOX_MAX_DELIVER).
	MaxDeliver int
	// Backoff and BackoffMax bound the delay between deliveries of a
	// failing event (INBOX_BACKOFF, INBOX_BACKOFF_MAX).
	Backoff    time.Duration
	BackoffMax time.Duration
	// DeferDelay is the delay before redelivering an event whose
	// predecessor is not applied yet (INBOX_DEFER_DELAY).
	DeferDelay time.Duration
	// MaxAckPending bounds the events delivered and not acked
	// (INBOX_MAX_ACK_PENDING).
	MaxAckPending int
	// AckWait is how long the broker waits for an ack (INBOX_ACK_WAIT).
	AckWait time.Duration
	// Batch is how many events an instance pulls ahead (INBOX_BATCH).
	Batch int
	// Workers is how many events an instance handles at once
	// (INBOX_WORKERS).
	Workers int
	// Ordered applies each aggregate's events in sequence order
	// (INBOX_ORDERED).
	Ordered bool
}

// Drain holds the shutdown settings (DB_DRAIN_*).
type Drain struct {
	// Mode is graceful, immediate or force (DB_DRAIN_MODE).
	Mode string
	// Timeout bounds the wait for in-flight work (DB_DRAIN_TIMEOUT).
	Timeout time.Duration
	// CheckInterval is how often the drain looks at in-flight work
	// (DB_DRAIN_CHECK_INTERVAL).
	CheckInterval time.Duration
	// PreStopDelay keeps serving, not ready, this long after SIGTERM
	// (DB_DRAIN_PRESTOP_DELAY).
	PreStopDelay time.Duration
}

// Outbox holds the transactional outbox and relay settings (OUTBOX_*).
type Outbox struct {
	// Table is the outbox table's name; the framework's other tables are
	// named after it (OUTBOX_TABLE).
	Table string
	// Publisher is where the relay publishes: "log", "nats", "rabbitmq"
	// or "none" (OUTBOX_PUBLISHER).
	Publisher string
	// NATSURL is the NATS server (OUTBOX_NATS_URL).
	NATSURL string
	// SubjectPrefix starts every NATS subject (OUTBOX_SUBJECT_PREFIX).
	SubjectPrefix string
	// Stream is the JetStream stream (OUTBOX_STREAM).
	Stream string
	// RabbitMQURL is the RabbitMQ broker of the rabbitmq publisher
	// (OUTBOX_RABBITMQ_URL).
	RabbitMQURL string
	// RabbitMQExchange is the durable topic exchange the rabbitmq publisher
	// publishes to, declared if missing (OUTBOX_RABBITMQ_EXCHANGE).
	RabbitMQExchange string
	// StreamReplicas is the stream's number of replicas, 1 to 5, when
	// Bento creates or updates it (OUTBOX_STREAM_REPLICAS).
	StreamReplicas int
	// BatchSize is the most rows a relay claims at once (OUTBOX_BATCH_SIZE).
	BatchSize int
	// PollInterval is the longest a relay sleeps without a wake-up
	// (OUTBOX_POLL_INTERVAL).
	PollInterval time.Duration
	// MaxAttempts bounds the publish attempts of an event before it is
	// dead-lettered (OUTBOX_MAX_ATTEMPTS).
	MaxAttempts int
	// Backoff and BackoffMax bound the delay between publish attempts of an
	// event (OUTBOX_BACKOFF, OUTBOX_BACKOFF_MAX).
	Backoff    time.Duration
	BackoffMax time.Duration
	// Retention keeps published rows this long; 0 deletes them once
	// published (OUTBOX_RETENTION).
	Retention time.Duration
	// IdempotencyRetention keeps idempotency keys this long; 0 keeps them
	// for ever (OUTBOX_IDEMPOTENCY_RETENTION).
	IdempotencyRetention time.Duration
	// Notify wakes relays in other processes with LISTEN/NOTIFY on
	// PostgreSQL (OUTBOX_NOTIFY).
	Notify bool
	// OwnConnection gives a relay a connection pool of its own (one
	// connection) on PostgreSQL and MySQL, so application traffic that
	// fills the main pool never delays publishing (OUTBOX_OWN_CONNECTION).
	// SQLite relays always share the pool: its writers are serialised in it.
	OwnConnection bool
}

// Retry holds the retry policy (DB_RETRY_*) for work that is safe to
// repeat: reads and BEGIN outside a transaction, and whole units of work.
type Retry struct {
	// Attempts bounds the attempts, the first included (DB_RETRY_ATTEMPTS).
	Attempts int
	// BaseDelay is the first backoff delay; later ones double
	// (DB_RETRY_BASE_DELAY).
	BaseDelay time.Duration
	// MaxDelay caps one backoff delay (DB_RETRY_MAX_DELAY).
	MaxDelay time.Duration
	// MaxElapsed bounds one operation with all its retries
	// (DB_RETRY_MAX_ELAPSED).
	MaxElapsed time.Duration
}

// DB holds the database settings (DB_*).
type DB struct {
	// URL is the primary database (DB_URL).
	URL URL
	// PoolSize is the number of connections kept open (DB_POOL_SIZE).
	PoolSize int
	// MaxOverflow is how many connections may be opened beyond PoolSize
	// under load (DB_MAX_OVERFLOW). The pool never holds more than
	// PoolSize+MaxOverflow connections.
	MaxOverflow int
	// PoolTimeout bounds the wait for a free connection when the pool is
	// exhausted (DB_POOL_TIMEOUT).
	PoolTimeout time.Duration
	// PoolRecycle is the maximum lifetime of a connection; 0 keeps them
	// forever (DB_POOL_RECYCLE).
	PoolRecycle time.Duration
	// PoolOverflowIdle is how long the connections opened beyond PoolSize
	// stay open after load drops back to PoolSize connections or fewer
	// (DB_POOL_OVERFLOW_IDLE); 0 closes each as soon as it is returned.
	// While they stay, a burst reuses them instead of opening new ones.
	PoolOverflowIdle time.Duration
	// PoolPrePing checks that a pooled connection is alive before reusing it
	// (DB_POOL_PRE_PING).
	PoolPrePing bool
	// ConnectTimeout bounds establishing one connection (DB_CONNECT_TIMEOUT).
	ConnectTimeout time.Duration
	// CommandTimeout bounds one statement on the server; 0 means no limit
	// (DB_COMMAND_TIMEOUT).
	CommandTimeout time.Duration
	// Echo logs every statement with its arguments at debug level (DB_ECHO).
	Echo bool
	// ApplicationName is reported to the server (DB_APPLICATION_NAME).
	ApplicationName string
	// ReplicaURLs are streaming replicas that take reads (DB_REPLICA_URLS).
	ReplicaURLs []URL
	// ReplicaMaxLag takes a replica out of rotation when it is further
	// behind (DB_REPLICA_MAX_LAG).
	ReplicaMaxLag time.Duration
	// ReplicaCheckInterval is how often replicas are checked
	// (DB_REPLICA_CHECK_INTERVAL).
	ReplicaCheckInterval time.Duration
	// ReplicaPoolSize and ReplicaMaxOverflow size each replica's pool; -1
	// follows the primary's (DB_REPLICA_POOL_SIZE, DB_REPLICA_MAX_OVERFLOW).
	ReplicaPoolSize    int
	ReplicaMaxOverflow int
	// ReadYourWritesWindow bounds how long after a commit a request's reads
	// avoid replicas that have not replayed it; 0: the whole request
	// (DB_READ_YOUR_WRITES_WINDOW).
	ReadYourWritesWindow time.Duration
}

// MaxOpen is the most connections the pool may hold: PoolSize+MaxOverflow.
func (d DB) MaxOpen() int { return d.PoolSize + d.MaxOverflow }

// Default returns the configuration used when nothing is set.
func Default() Config {
	var c Config
	for _, s := range Settings() {
		if err := s.apply(&c, s.Default); err != nil {
			panic(fmt.Sprintf("config: default of %s: %v", s.Name, err)) // a bug in the table
		}
	}
	return c
}

// Source says where Load reads settings from besides the defaults.
type Source struct {
	// File is an optional YAML file. Keys are setting names (DB_POOL_SIZE)
	// or their nested lower-case form (db: {pool_size: 5}).
	File string
	// Environ returns the environment as KEY=value strings; nil means
	// os.Environ. Only variables named like a setting are read.
	Environ func() []string
	// Flags holds values given on the command line, by setting name
	// (DB_POOL_SIZE); the CLI fills it with only the flags that were set.
	Flags map[string]string
	// Defaults replaces the defaults of some settings, by setting name: a
	// command's own defaults (bento bench's database). The file, the
	// environment and the flags still override them.
	Defaults map[string]string
}

// Source names used in errors.
const (
	fromDefault = "default"
	fromEnv     = "environment"
)

// Load builds a Config from defaults < file < environment < flags and
// validates every value. The error lists every bad setting; each part is an
// *Error.
func Load(src Source) (Config, error) {
	settings := Settings()
	known := make(map[string]Setting, len(settings))
	k := koanf.New("\x00") // keys are setting names; no nesting
	origin := map[string]string{}
	defaults := map[string]any{}
	for _, s := range settings {
		known[s.Name] = s
		defaults[s.Name] = s.Default
		origin[s.Name] = fromDefault
	}
	for name, v := range src.Defaults {
		if _, ok := known[name]; !ok {
			return Config{}, fmt.Errorf("config: unknown setting %q in Defaults", name)
		}
		defaults[name] = v
	}
	if err := k.Load(confmap.Provider(defaults, ""), nil); err != nil {
		return Config{}, fmt.Errorf("config: defaults: %w", err)
	}

	if src.File != "" {
		fk := koanf.New(".")
		if err := fk.Load(file.Provider(src.File), yaml.Parser()); err != nil {
			return Config{}, fmt.Errorf("config: reading file %s: %w; accepted: a YAML map of setting names to values", src.File, err)
		}
		values := map[string]any{}
		var unknown []string
		for key, v := range fk.All() {
			name := strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
			if _, ok := known[name]; !ok {
				unknown = append(unknown, key)
				continue
			}
			values[name] = fmt.Sprint(v)
			origin[name] = "file " + src.File
		}
		if len(unknown) > 0 {
			sort.Strings(unknown)
			return Config{}, fmt.Errorf("config: file %s: unknown settings %s; accepted: %s", src.File, strings.Join(unknown, ", "), strings.Join(names(settings), ", "))
		}
		if err := k.Load(confmap.Provider(values, ""), nil); err != nil {
			return Config{}, fmt.Errorf("config: file %s: %w", src.File, err)
		}
	}

	environ := src.Environ
	if environ == nil {
		environ = os.Environ
	}
	envProvider := env.Provider("", env.Opt{
		EnvironFunc: environ,
		TransformFunc: func(key, v string) (string, any) {
			if _, ok := known[key]; !ok {
				return "", nil
			}
			origin[key] = fromEnv
			return key, v
		},
	})
	if err := k.Load(envProvider, nil); err != nil {
		return Config{}, fmt.Errorf("config: environment: %w", err)
	}

	if len(src.Flags) > 0 {
		values := map[string]any{}
		for name, v := range src.Flags {
			s, ok := known[name]
			if !ok {
				return Config{}, fmt.Errorf("config: unknown flag for setting %q", name)
			}
			values[name] = v
			origin[name] = "flag --" + s.Flag()
		}
		if err := k.Load(confmap.Provider(values, ""), nil); err != nil {
			return Config{}, fmt.Errorf("config: flags: %w", err)
		}
	}

	var c Config
	var errs []error
	for _, s := range settings {
		v := k.String(s.Name)
		if err := s.apply(&c, v); err != nil {
			errs = append(errs, &Error{Setting: s.Name, Source: origin[s.Name], Value: s.show(v), Problem: err.Error(), Accepts: s.Accepts})
		}
	}
	if err := errors.Join(errs...); err != nil {
		return Config{}, err
	}
	return c, nil
}

func names(settings []Setting) []string {
	out := make([]string, len(settings))
	for i, s := range settings {
		out[i] = s.Name
	}
	return out
}

// Error is one bad setting value.
type Error struct {
	Setting string // the setting's name, e.g. DB_POOL_SIZE
	Source  string // where the value came from: environment, flag --x, file f, default
	Value   string // the value, with secrets redacted
	Problem string // what is wrong with it
	Accepts string // what is accepted
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s=%q (%s): %s; accepted: %s", e.Setting, e.Value, e.Source, e.Problem, e.Accepts)
}

// MarshalJSON encodes the outbox settings with the NATS URLs' secrets
// redacted, as String and LogValue show them.
func (o Outbox) MarshalJSON() ([]byte, error) {
	type plain Outbox // without this method
	p := plain(o)
	p.NATSURL = redactList(o.NATSURL)
	return json.Marshal(p)
}

// String renders the configuration on one line, with secrets redacted.
func (c Config) String() string { return c.render(all) }

// LogValue renders the configuration for log/slog, with secrets redacted.
func (c Config) LogValue() slog.Value { return c.logValue(all) }

func (c Config) render(include func(string) bool) string {
	var b strings.Builder
	for _, s := range Settings() {
		if !include(s.Name) {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s=%s", s.Name, s.get(c))
	}
	return b.String()
}

func (c Config) logValue(include func(string) bool) slog.Value {
	var attrs []slog.Attr
	for _, s := range Settings() {
		if include(s.Name) {
			attrs = append(attrs, slog.String(s.Name, s.get(c)))
		}
	}
	return slog.GroupValue(attrs...)
}

// String renders the database settings (DB_*, retry and drain excepted)
// with the URL redacted.
func (d DB) String() string { return Config{DB: d}.render(isDBSetting) }

// LogValue renders the database settings (DB_*, retry and drain excepted)
// with the URL redacted.
func (d DB) LogValue() slog.Value { return Config{DB: d}.logValue(isDBSetting) }

// isDBSetting selects the settings stored in DB.
func isDBSetting(name string) bool {
	return strings.HasPrefix(name, "DB_") && !strings.HasPrefix(name, "DB_RETRY_") && !strings.HasPrefix(name, "DB_DRAIN_")
}

func all(string) bool { return true }

var (
	_ slog.LogValuer = Config{}
	_ fmt.Stringer   = Config{}
)
