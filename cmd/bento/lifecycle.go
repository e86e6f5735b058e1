package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"runtime/debug"
	"time"

	"github.com/bento-go/bento"
	"github.com/bento-go/bento/ent/migrate"
)

// openDB opens the configured database with the layers every command
// shares.
func (inv *invocation) openDB() (*bento.DB, error) {
	return bento.Open(inv.cfg, bento.WithLogger(inv.logger))
}

func migrateCommand() command {
	return command{
		name:  "migrate",
		short: "create or update the reference schema and Bento's tables",
		usage: "Safe to run from several instances at once (PostgreSQL and MySQL take an advisory lock); running it twice changes nothing.",
		run: func(ctx context.Context, inv *invocation) int {
			db, err := inv.openDB()
			if err != nil {
				return inv.fail("", err)
			}
			defer db.Close()
			start := time.Now()
			if err := db.Migrate(ctx, migrate.Tables...); err != nil {
				return inv.fail("", err)
			}
			inv.logger.Info("bento: migrated", "dialect", db.Dialect(), "url", inv.cfg.DB.URL, "took", time.Since(start).Round(time.Millisecond))
			return exitOK
		},
	}
}

func healthCommand() command {
	var timeout time.Duration
	return command{
		name:  "health",
		short: "check that the database answers (exit 0 healthy, 1 unhealthy)",
		usage: "Runs SELECT 1 on the primary within --timeout (default: DB_CONNECT_TIMEOUT + 1s).",
		flags: func(fs *flag.FlagSet) {
			durationVar(fs, &timeout, "timeout", 0, "bound on the check, e.g. 5s or plain seconds 5 (default DB_CONNECT_TIMEOUT + 1s)")
		},
		run: func(ctx context.Context, inv *invocation) int {
			db, err := inv.openDB()
			if err != nil {
				return inv.fail("", err)
			}
			defer db.Close()
			if err := db.Health(ctx, timeout); err != nil {
				return inv.fail("unhealthy", err)
			}
			fmt.Fprintf(inv.stdout, "healthy: %s at %s\n", db.Dialect(), inv.cfg.DB.URL)
			return exitOK
		},
	}
}

func infoCommand() command {
	var asJSON *bool
	return command{
		name:  "info",
		short: "show the dialect, server version, redacted URL and pool statistics",
		flags: func(fs *flag.FlagSet) {
			asJSON = fs.Bool("json", false, "print one JSON object")
		},
		run: func(ctx context.Context, inv *invocation) int {
			db, err := inv.openDB()
			if err != nil {
				return inv.fail("", err)
			}
			defer db.Close()
			info, err := db.Info(ctx)
			if err != nil {
				return inv.fail("", err)
			}
			if *asJSON {
				enc := json.NewEncoder(inv.stdout)
				if err := enc.Encode(info); err != nil {
					return inv.fail("", err)
				}
				return exitOK
			}
			fmt.Fprintf(inv.stdout, "dialect:        %s\n", info.Dialect)
			fmt.Fprintf(inv.stdout, "server version: %s\n", info.ServerVersion)
			fmt.Fprintf(inv.stdout, "url:            %s\n", info.URL)
			p := info.Pool
			fmt.Fprintf(inv.stdout, "pool:           max %d, open %d, in use %d, idle %d, waits %d, timeouts %d\n",
				p.MaxOpen, p.Open, p.InUse, p.Idle, p.Waits, p.Timeouts)
			for _, r := range info.Replicas {
				state := "healthy"
				if !r.Healthy {
					state = "out: " + r.Reason
				}
				fmt.Fprintf(inv.stdout, "replica:        %s %s, %s, lag %s\n", r.Name, r.URL, state, r.Lag.Round(time.Millisecond))
			}
			return exitOK
		},
	}
}

func versionCommand() command {
	return command{
		name:     "version",
		short:    "print the version of this build",
		noConfig: true,
		run: func(_ context.Context, inv *invocation) int {
			fmt.Fprintln(inv.stdout, "bento", buildVersion())
			return exitOK
		},
	}
}

// buildVersion reads the module version and VCS revision from the build.
func buildVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			v += " " + s.Value[:12]
		}
	}
	return v + " " + bi.GoVersion
}
