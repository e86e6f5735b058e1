package config

import (
	"errors"
	"fmt"
	"math"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Setting describes one configuration setting: its name (the environment
// variable), default, meaning and accepted values. Settings returns them all;
// the CLI derives its flags and the README its table from them.
type Setting struct {
	Name    string // environment variable, e.g. DB_POOL_SIZE
	Default string // default value, as text
	Usage   string // one-line meaning
	Accepts string // accepted values, as shown in errors

	secret bool
	list   bool // a comma-separated list of secrets, redacted one by one
	apply  func(c *Config, v string) error
	get    func(c Config) string
}

// Flag returns the command-line flag name of the setting: DB_POOL_SIZE →
// db-pool-size.
func (s Setting) Flag() string {
	return strings.ToLower(strings.ReplaceAll(s.Name, "_", "-"))
}

// show returns v as it may be displayed: secrets redacted.
func (s Setting) show(v string) string {
	if s.secret && s.list {
		return redactList(v)
	}
	if s.secret {
		// One URL: splitting it (on ",", say) would cut a password that
		// contains the separator out of its user:pass@ and show it.
		return redactString(v)
	}
	return v
}

// redactList redacts v, URLs separated by commas, one by one. A part without
// a scheme may be the tail of a password that held a comma: none of it is
// shown.
func redactList(v string) string {
	parts := strings.Split(v, ",")
	for i, p := range parts {
		if p = strings.TrimSpace(p); p != "" && !strings.Contains(p, "://") {
			parts[i] = redacted
			continue
		}
		parts[i] = redactString(p)
	}
	return strings.Join(parts, ",")
}

// Settings returns every setting in a stable order.
func Settings() []Setting {
	return []Setting{
		{
			Name: "DB_URL", Default: "sqlite://bento.db", secret: true,
			Usage:   "primary database URL; the scheme selects the dialect. PostgreSQL takes several hosts (postgres://h1:5432,h2:5432/db?target_session_attrs=read-write) and connects to the one that accepts writes",
			Accepts: acceptedURLs,
			apply: func(c *Config, v string) error {
				u, err := ParseURL(v)
				c.DB.URL = u
				if err != nil {
					// The *Error lists what is accepted; say it once.
					problem, _, _ := strings.Cut(err.Error(), "; accepted: ")
					return errors.New(problem)
				}
				return nil
			},
			get: func(c Config) string { return c.DB.URL.String() },
		},
		intSetting("DB_POOL_SIZE", 5, 1, "connections kept open in the pool (PostgreSQL, MySQL)",
			func(c *Config) *int { return &c.DB.PoolSize }),
		intSetting("DB_MAX_OVERFLOW", 10, 0, "connections opened beyond the pool size under load (PostgreSQL, MySQL; SQLite keeps 2 connections whatever the settings)",
			func(c *Config) *int { return &c.DB.MaxOverflow }),
		durationSetting("DB_POOL_TIMEOUT", "30s", false, "longest wait for a free connection before a pool-timeout error; on SQLite also the busy timeout (the wait for the file's write lock)",
			func(c *Config) *time.Duration { return &c.DB.PoolTimeout }),
		durationSetting("DB_POOL_RECYCLE", "3600s", true, "maximum connection lifetime; 0 keeps connections forever (MySQL: capped below 5 minutes; SQLite: ignored, connections are never recycled)",
			func(c *Config) *time.Duration { return &c.DB.PoolRecycle }),
		durationSetting("DB_POOL_OVERFLOW_IDLE", "60s", true, "how long a connection opened beyond the pool size stays open once no more than DB_POOL_SIZE are in use; 0 closes it as soon as it is returned (PostgreSQL, MySQL)",
			func(c *Config) *time.Duration { return &c.DB.PoolOverflowIdle }),
		boolSetting("DB_POOL_PRE_PING", true, "PostgreSQL: ping a connection idle for more than 1 s before reusing it. MySQL/MariaDB: ignored; the driver always checks a reused connection's socket for a close by the server, without a round trip. SQLite: ignored",
			func(c *Config) *bool { return &c.DB.PoolPrePing }),
		durationSetting("DB_CONNECT_TIMEOUT", "10s", false, "longest time to establish one connection (PostgreSQL, MySQL; SQLite: ignored)",
			func(c *Config) *time.Duration { return &c.DB.ConnectTimeout }),
		durationSetting("DB_COMMAND_TIMEOUT", "60s", true, "limit on one statement; 0 means none. PostgreSQL: statement_timeout, every statement. MariaDB: max_statement_time, every statement. MySQL: max_execution_time, which limits only SELECTs. MySQL/MariaDB also cut the connection of any statement silent for this long plus 5 s (client read/write timeouts). SQLite: ignored",
			func(c *Config) *time.Duration { return &c.DB.CommandTimeout }),
		boolSetting("DB_ECHO", false, "log every statement and its arguments at debug level",
			func(c *Config) *bool { return &c.DB.Echo }),
		{
			Name: "DB_APPLICATION_NAME", Default: "bento",
			Usage:   "name reported to the server (PostgreSQL application_name, MySQL program_name; SQLite: ignored)",
			Accepts: "1-63 printable ASCII characters",
			apply: func(c *Config, v string) error {
				c.DB.ApplicationName = v
				if v == "" || len(v) > 63 {
					return errors.New("must be 1-63 characters long")
				}
				for _, r := range v {
					if r < 0x20 || r > 0x7e {
						return fmt.Errorf("contains %q", r)
					}
				}
				return nil
			},
			get: func(c Config) string { return c.DB.ApplicationName },
		},
		{
			Name: "DB_REPLICA_URLS", Default: "", secret: true, list: true,
			Usage:   "streaming replicas that take reads outside transactions, comma-separated (same dialect as DB_URL)",
			Accepts: "empty, or database URLs of DB_URL's dialect separated by commas",
			apply: func(c *Config, v string) error {
				c.DB.ReplicaURLs = nil
				for i, part := range strings.Split(v, ",") {
					if strings.TrimSpace(part) == "" {
						continue
					}
					u, err := ParseURL(part)
					if err != nil {
						problem, _, _ := strings.Cut(err.Error(), "; accepted: ")
						return fmt.Errorf("replica %d: %s", i+1, problem)
					}
					switch {
					case u.Dialect() == SQLite:
						return fmt.Errorf("replica %d: SQLite has no replicas", i+1)
					case c.DB.URL.Dialect() != "" && u.Dialect() != c.DB.URL.Dialect():
						return fmt.Errorf("replica %d is %s but DB_URL is %s", i+1, u.Dialect(), c.DB.URL.Dialect())
					}
					c.DB.ReplicaURLs = append(c.DB.ReplicaURLs, u)
				}
				return nil
			},
			get: func(c Config) string {
				parts := make([]string, len(c.DB.ReplicaURLs))
				for i, u := range c.DB.ReplicaURLs {
					parts[i] = u.String()
				}
				return strings.Join(parts, ",")
			},
		},
		durationSetting("DB_REPLICA_MAX_LAG", "5s", false, "a replica further behind than this is taken out of rotation until it catches up",
			func(c *Config) *time.Duration { return &c.DB.ReplicaMaxLag }),
		durationSetting("DB_REPLICA_CHECK_INTERVAL", "1s", false, "how often each replica's health and lag are checked",
			func(c *Config) *time.Duration { return &c.DB.ReplicaCheckInterval }),
		optionalIntSetting("DB_REPLICA_POOL_SIZE", 1, "connections kept open per replica; empty follows DB_POOL_SIZE",
			func(c *Config) *int { return &c.DB.ReplicaPoolSize }),
		optionalIntSetting("DB_REPLICA_MAX_OVERFLOW", 0, "connections per replica beyond its pool size; empty follows DB_MAX_OVERFLOW",
			func(c *Config) *int { return &c.DB.ReplicaMaxOverflow }),
		durationSetting("DB_READ_YOUR_WRITES_WINDOW", "0", true, "after a commit, how long a request's reads avoid replicas that have not replayed it; 0 means for the whole request",
			func(c *Config) *time.Duration { return &c.DB.ReadYourWritesWindow }),
		intSetting("DB_RETRY_ATTEMPTS", 10, 1, "attempts at work that is safe to repeat (reads, BEGIN, whole units of work in bento serve), the first included; 1 disables the driver's retries",
			func(c *Config) *int { return &c.Retry.Attempts }),
		durationSetting("DB_RETRY_BASE_DELAY", "10ms", true, "first retry delay; each later one doubles (with ±50% jitter); 0 is taken as 1 ms, the smallest delay the backoff accepts",
			func(c *Config) *time.Duration { return &c.Retry.BaseDelay }),
		durationSetting("DB_RETRY_MAX_DELAY", "2s", true, "cap on one retry delay before the ±50% jitter; 0 means no cap",
			func(c *Config) *time.Duration { return &c.Retry.MaxDelay }),
		durationSetting("DB_RETRY_MAX_ELAPSED", "30s", true, "bound on one operation with all its retries; 0 means only the caller's deadline",
			func(c *Config) *time.Duration { return &c.Retry.MaxElapsed }),
		enumSetting("DB_DRAIN_MODE", "graceful", "shutdown: graceful (wait for in-flight work), immediate (close the pool now) or force (cancel in-flight work)",
			[]string{"graceful", "immediate", "force"}, func(c *Config) *string { return &c.Drain.Mode }),
		durationSetting("DB_DRAIN_TIMEOUT", "30s", false, "longest wait for in-flight work on shutdown before it is cancelled",
			func(c *Config) *time.Duration { return &c.Drain.Timeout }),
		durationSetting("DB_DRAIN_CHECK_INTERVAL", "50ms", false, "how often a drain checks in-flight work",
			func(c *Config) *time.Duration { return &c.Drain.CheckInterval }),
		durationSetting("DB_DRAIN_PRESTOP_DELAY", "0", true, "after SIGTERM, keep serving (not ready) this long before stopping intake (Kubernetes)",
			func(c *Config) *time.Duration { return &c.Drain.PreStopDelay }),
		{
			Name: "OUTBOX_TABLE", Default: "bento_outbox",
			Usage:   "outbox table name; the sequences, idempotency and inbox tables are named after it",
			Accepts: "an SQL identifier: a letter or _, then letters, digits or _ (at most 48)",
			apply: func(c *Config, v string) error {
				c.Outbox.Table = v
				return validIdentifier(v, 48)
			},
			get: func(c Config) string { return c.Outbox.Table },
		},
		enumSetting("OUTBOX_PUBLISHER", "log", "where the relay publishes events: log (JSON lines through the logger), nats (JetStream), rabbitmq (a RabbitMQ topic exchange) or none (no relay)",
			[]string{"log", "nats", "rabbitmq", "none"}, func(c *Config) *string { return &c.Outbox.Publisher }),
		{
			Name: "OUTBOX_NATS_URL", Default: "nats://127.0.0.1:4222", secret: true, list: true,
			Usage:   "NATS server of the nats publisher",
			Accepts: "nats://[user:pass@]host:port (tls:// too), several separated by commas",
			apply: func(c *Config, v string) error {
				c.Outbox.NATSURL = strings.TrimSpace(v)
				for _, part := range strings.Split(c.Outbox.NATSURL, ",") {
					u, err := url.Parse(strings.TrimSpace(part))
					if err != nil || u.Host == "" {
						return errors.New("not a NATS URL")
					}
					switch u.Scheme {
					case "nats", "tls", "ws", "wss":
					default:
						return fmt.Errorf("unknown scheme %q", u.Scheme)
					}
				}
				return nil
			},
			get: func(c Config) string { return redactList(c.Outbox.NATSURL) },
		},
		{
			Name: "OUTBOX_SUBJECT_PREFIX", Default: "bento",
			Usage:   "first tokens of every NATS subject: <prefix>.<aggregate type>.<event type>",
			Accepts: "NATS subject tokens separated by dots, without spaces or wildcards",
			apply: func(c *Config, v string) error {
				c.Outbox.SubjectPrefix = v
				if v == "" || strings.ContainsAny(v, " \t*>") || strings.HasPrefix(v, ".") || strings.HasSuffix(v, ".") || strings.Contains(v, "..") {
					return errors.New("not a subject prefix")
				}
				return nil
			},
			get: func(c Config) string { return c.Outbox.SubjectPrefix },
		},
		{
			Name: "OUTBOX_STREAM", Default: "BENTO_OUTBOX",
			Usage:   "JetStream stream of the events, created if missing",
			Accepts: "a stream name: letters, digits, - and _",
			apply: func(c *Config, v string) error {
				c.Outbox.Stream = v
				if v == "" || strings.ContainsAny(v, " \t.*>/\\") {
					return errors.New("not a stream name")
				}
				return nil
			},
			get: func(c Config) string { return c.Outbox.Stream },
		},
		{
			Name: "OUTBOX_RABBITMQ_URL", Default: "amqp://guest:guest@127.0.0.1:5672/", secret: true,
			Usage:   "RabbitMQ broker of the rabbitmq publisher; the path is the vhost",
			Accepts: "amqp://[user:pass@]host[:port][/vhost] (amqps:// for TLS)",
			apply: func(c *Config, v string) error {
				c.Outbox.RabbitMQURL = strings.TrimSpace(v)
				u, err := url.Parse(c.Outbox.RabbitMQURL)
				if err != nil || u.Host == "" {
					return errors.New("not an AMQP URL")
				}
				if u.Scheme != "amqp" && u.Scheme != "amqps" {
					return fmt.Errorf("unknown scheme %q", u.Scheme)
				}
				return nil
			},
			get: func(c Config) string { return redactString(c.Outbox.RabbitMQURL) },
		},
		{
			Name: "OUTBOX_RABBITMQ_EXCHANGE", Default: "bento.outbox",
			Usage:   "durable topic exchange of the rabbitmq publisher, declared if missing; routing key <aggregate type>.<event type>",
			Accepts: "1-255 letters, digits, -, _, . and :, not starting with amq.",
			apply: func(c *Config, v string) error {
				c.Outbox.RabbitMQExchange = v
				switch {
				case v == "" || len(v) > 255:
					return errors.New("not an exchange name")
				case strings.HasPrefix(v, "amq."):
					return errors.New("names starting with amq. are reserved for RabbitMQ's own exchanges")
				}
				for _, r := range v {
					if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_.:", r)) {
						return fmt.Errorf("not an exchange name: %q is not allowed", r)
					}
				}
				return nil
			},
			get: func(c Config) string { return c.Outbox.RabbitMQExchange },
		},
		intRangeSetting("OUTBOX_STREAM_REPLICAS", 1, 1, 5, "replicas of the JetStream stream when Bento creates or updates it (3 on a three-node cluster survives the loss of one server); at most the cluster's size",
			func(c *Config) *int { return &c.Outbox.StreamReplicas }),
		intRangeSetting("OUTBOX_BATCH_SIZE", 100, 1, 10000, "most outbox rows a relay claims and publishes at once",
			func(c *Config) *int { return &c.Outbox.BatchSize }),
		durationSetting("OUTBOX_POLL_INTERVAL", "1s", false, "longest a relay sleeps without a wake-up (commits in process and NOTIFY wake it at once)",
			func(c *Config) *time.Duration { return &c.Outbox.PollInterval }),
		intSetting("OUTBOX_MAX_ATTEMPTS", 10, 1, "publish attempts of an event before it is dead-lettered",
			func(c *Config) *int { return &c.Outbox.MaxAttempts }),
		durationSetting("OUTBOX_BACKOFF", "1s", false, "delay after an event's first failed publish; it doubles per failure",
			func(c *Config) *time.Duration { return &c.Outbox.Backoff }),
		durationSetting("OUTBOX_BACKOFF_MAX", "5m", false, "cap on the delay between publish attempts of an event",
			func(c *Config) *time.Duration { return &c.Outbox.BackoffMax }),
		durationSetting("OUTBOX_RETENTION", "0", true, "how long published rows are kept; 0 deletes a row once published",
			func(c *Config) *time.Duration { return &c.Outbox.Retention }),
		durationSetting("OUTBOX_IDEMPOTENCY_RETENTION", "24h", true, "how long idempotency keys of units of work are kept (the relay deletes older ones); 0 keeps them",
			func(c *Config) *time.Duration { return &c.Outbox.IdempotencyRetention }),
		boolSetting("OUTBOX_NOTIFY", true, "wake relays in other processes with LISTEN/NOTIFY (PostgreSQL)",
			func(c *Config) *bool { return &c.Outbox.Notify }),
		boolSetting("OUTBOX_OWN_CONNECTION", true, "a relay claims and marks rows on a connection of its own (PostgreSQL, MySQL), so a full application pool never delays publishing; false shares the pool",
			func(c *Config) *bool { return &c.Outbox.OwnConnection }),
		{
			Name: "INBOX_CONSUMER", Default: "bento-consumer",
			Usage:   "durable JetStream consumer of bento consume, shared by its instances; also its name in the inbox and dead letters",
			Accepts: "at most 128 letters, digits, - and _",
			apply: func(c *Config, v string) error {
				c.Inbox.Consumer = v
				if v == "" || len(v) > 128 || strings.ContainsFunc(v, func(r rune) bool {
					return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_')
				}) {
					return errors.New("not a consumer name")
				}
				return nil
			},
			get: func(c Config) string { return c.Inbox.Consumer },
		},
		intRangeSetting("INBOX_MAX_DELIVER", 10, 1, 1000, "deliveries of a failing event before the consumer dead-letters it",
			func(c *Config) *int { return &c.Inbox.MaxDeliver }),
		durationSetting("INBOX_BACKOFF", "1s", false, "delay before redelivering an event whose handling failed once; it doubles per delivery",
			func(c *Config) *time.Duration { return &c.Inbox.Backoff }),
		durationSetting("INBOX_BACKOFF_MAX", "1m", false, "cap on the delay between deliveries of a failing event",
			func(c *Config) *time.Duration { return &c.Inbox.BackoffMax }),
		durationSetting("INBOX_DEFER_DELAY", "100ms", false, "delay before redelivering an event whose predecessor (same aggregate) is not applied yet",
			func(c *Config) *time.Duration { return &c.Inbox.DeferDelay }),
		intRangeSetting("INBOX_MAX_ACK_PENDING", 1000, 1, 1000000, "most events delivered to all instances of the consumer and not yet acknowledged",
			func(c *Config) *int { return &c.Inbox.MaxAckPending }),
		durationSetting("INBOX_ACK_WAIT", "30s", false, "how long the broker waits for an event's ack before delivering it again",
			func(c *Config) *time.Duration { return &c.Inbox.AckWait }),
		intRangeSetting("INBOX_BATCH", 100, 1, 10000, "events a consumer instance pulls ahead",
			func(c *Config) *int { return &c.Inbox.Batch }),
		intRangeSetting("INBOX_WORKERS", 4, 1, 256, "events a consumer instance handles at once (one aggregate's always in order)",
			func(c *Config) *int { return &c.Inbox.Workers }),
		boolSetting("INBOX_ORDERED", true, "apply each aggregate's events in sequence order; false applies them as they come (still once)",
			func(c *Config) *bool { return &c.Inbox.Ordered }),
	}
}

func intSetting(name string, def, min int, usage string, field func(*Config) *int) Setting {
	return Setting{
		Name: name, Default: strconv.Itoa(def), Usage: usage,
		Accepts: fmt.Sprintf("an integer >= %d (default %d)", min, def),
		apply: func(c *Config, v string) error {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				return errors.New("not an integer")
			}
			if n < min {
				return fmt.Errorf("must be >= %d", min)
			}
			*field(c) = n
			return nil
		},
		get: func(c Config) string { return strconv.Itoa(*field(&c)) },
	}
}

// enumSetting is one of a few words, compared in lower case.
func enumSetting(name, def, usage string, values []string, field func(*Config) *string) Setting {
	accepts := strings.Join(values[:len(values)-1], ", ") + " or " + values[len(values)-1]
	return Setting{
		Name: name, Default: def, Usage: usage, Accepts: accepts,
		apply: func(c *Config, v string) error {
			*field(c) = strings.ToLower(strings.TrimSpace(v))
			for _, ok := range values {
				if *field(c) == ok {
					return nil
				}
			}
			return errors.New("not one of the accepted values")
		},
		get: func(c Config) string { return *field(&c) },
	}
}

// optionalIntSetting is an integer >= min, or empty for -1 ("follow the
// primary's").
func optionalIntSetting(name string, min int, usage string, field func(*Config) *int) Setting {
	return Setting{
		Name: name, Default: "", Usage: usage,
		Accepts: fmt.Sprintf("empty, or an integer >= %d", min),
		apply: func(c *Config, v string) error {
			if strings.TrimSpace(v) == "" {
				*field(c) = -1
				return nil
			}
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				return errors.New("not an integer")
			}
			if n < min {
				return fmt.Errorf("must be >= %d", min)
			}
			*field(c) = n
			return nil
		},
		get: func(c Config) string {
			if *field(&c) < 0 {
				return ""
			}
			return strconv.Itoa(*field(&c))
		},
	}
}

func intRangeSetting(name string, def, min, max int, usage string, field func(*Config) *int) Setting {
	s := intSetting(name, def, min, usage, field)
	s.Accepts = fmt.Sprintf("an integer from %d to %d (default %d)", min, max, def)
	inner := s.apply
	s.apply = func(c *Config, v string) error {
		if err := inner(c, v); err != nil {
			return err
		}
		if *field(c) > max {
			return fmt.Errorf("must be <= %d", max)
		}
		return nil
	}
	return s
}

func boolSetting(name string, def bool, usage string, field func(*Config) *bool) Setting {
	return Setting{
		Name: name, Default: strconv.FormatBool(def), Usage: usage,
		Accepts: fmt.Sprintf("true or false (also 1/0, yes/no, on/off; default %t)", def),
		apply: func(c *Config, v string) error {
			b, err := ParseBool(v)
			if err != nil {
				return err
			}
			*field(c) = b
			return nil
		},
		get: func(c Config) string { return strconv.FormatBool(*field(&c)) },
	}
}

func durationSetting(name, def string, zeroOK bool, usage string, field func(*Config) *time.Duration) Setting {
	min := "> 0"
	if zeroOK {
		min = ">= 0"
	}
	return Setting{
		Name: name, Default: def, Usage: usage,
		Accepts: fmt.Sprintf("a duration %s such as 30s, 1m30s, 500ms, or plain seconds such as 30 or 0.5 (default %s)", min, def),
		apply: func(c *Config, v string) error {
			d, err := ParseDuration(v)
			if err != nil {
				return err
			}
			if d < 0 || (d == 0 && !zeroOK) {
				return fmt.Errorf("must be %s", min)
			}
			*field(c) = d
			return nil
		},
		get: func(c Config) string { return field(&c).String() },
	}
}

// ParseDuration accepts Go duration syntax ("30s", "1m30s") or a plain
// number of seconds ("30", "0.5").
func ParseDuration(v string) (time.Duration, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, errors.New("empty duration")
	}
	if f, err := strconv.ParseFloat(v, 64); err == nil {
		// Compare in nanoseconds: a bound in seconds lets values that round
		// to 2^63 ns through, and converting those wraps to a negative
		// Duration.
		ns := f * float64(time.Second)
		if math.IsNaN(ns) || ns >= float64(math.MaxInt64) || ns < float64(math.MinInt64) {
			return 0, errors.New("out of range")
		}
		return time.Duration(ns), nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, errors.New("not a duration")
	}
	return d, nil
}

// ParseBool accepts true/false, 1/0, yes/no, on/off (any case).
func ParseBool(v string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "true", "1", "yes", "on", "t", "y":
		return true, nil
	case "false", "0", "no", "off", "f", "n":
		return false, nil
	}
	return false, errors.New("not a boolean")
}

// validIdentifier accepts a plain SQL identifier of at most max bytes.
func validIdentifier(v string, max int) error {
	if v == "" || len(v) > max {
		return fmt.Errorf("must be 1-%d characters long", max)
	}
	for i, r := range v {
		switch {
		case r == '_', r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z':
		case r >= '0' && r <= '9' && i > 0:
		default:
			return fmt.Errorf("contains %q", r)
		}
	}
	return nil
}
