package config

import (
	"errors"
	"fmt"
	"math"
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
	if s.secret {
		// One URL: splitting it (on ",", say) would cut a password that
		// contains the separator out of its user:pass@ and show it.
		return redactString(v)
	}
	return v
}

// Settings returns every setting in a stable order.
func Settings() []Setting {
	return []Setting{
		{
			Name: "DB_URL", Default: "sqlite://bento.db", secret: true,
			Usage:   "primary database URL; the scheme selects the dialect",
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
		intSetting("DB_MAX_OVERFLOW", 10, 0, "connections opened beyond the pool size under load",
			func(c *Config) *int { return &c.DB.MaxOverflow }),
		durationSetting("DB_POOL_TIMEOUT", "30s", false, "longest wait for a free connection before a pool-timeout error",
			func(c *Config) *time.Duration { return &c.DB.PoolTimeout }),
		durationSetting("DB_POOL_RECYCLE", "3600s", true, "maximum connection lifetime; 0 keeps connections forever (MySQL: capped below 5 minutes)",
			func(c *Config) *time.Duration { return &c.DB.PoolRecycle }),
		boolSetting("DB_POOL_PRE_PING", true, "check a connection idle for more than 1 s is alive before reusing it",
			func(c *Config) *bool { return &c.DB.PoolPrePing }),
		durationSetting("DB_CONNECT_TIMEOUT", "10s", false, "longest time to establish one connection",
			func(c *Config) *time.Duration { return &c.DB.ConnectTimeout }),
		durationSetting("DB_COMMAND_TIMEOUT", "60s", true, "server-side limit on one statement; 0 means none",
			func(c *Config) *time.Duration { return &c.DB.CommandTimeout }),
		boolSetting("DB_ECHO", false, "log every statement and its arguments at debug level",
			func(c *Config) *bool { return &c.DB.Echo }),
		{
			Name: "DB_APPLICATION_NAME", Default: "bento",
			Usage:   "name reported to the server (PostgreSQL application_name, MySQL program_name)",
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
		intSetting("DB_RETRY_ATTEMPTS", 10, 1, "attempts at work that is safe to repeat, the first included; 1 disables retries",
			func(c *Config) *int { return &c.Retry.Attempts }),
		durationSetting("DB_RETRY_BASE_DELAY", "10ms", true, "first retry delay; each later one doubles (with ±50% jitter)",
			func(c *Config) *time.Duration { return &c.Retry.BaseDelay }),
		durationSetting("DB_RETRY_MAX_DELAY", "2s", true, "cap on one retry delay",
			func(c *Config) *time.Duration { return &c.Retry.MaxDelay }),
		durationSetting("DB_RETRY_MAX_ELAPSED", "30s", true, "bound on one operation with all its retries; 0 means only the caller's deadline",
			func(c *Config) *time.Duration { return &c.Retry.MaxElapsed }),
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
