package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"runtime/debug"
	"strings"
	"time"

	"github.com/bento-go/bento"
	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/consumer"
	"github.com/bento-go/bento/ent/migrate"
)

// openDB opens the configured database with the layers every command
// shares.
func (inv *invocation) openDB() (*bento.DB, error) {
	return bento.Open(inv.cfg, bento.WithLogger(inv.logger))
}

func migrateCommand() command {
	var dir, devURL, baseline *string
	var asJSON *bool
	return command{
		name:  "migrate",
		short: "create or update the schema: auto-migration, or versioned files (diff, apply, status)",
		usage: `Without a subcommand: auto-migrate the reference schema and Bento's tables (the zero-config
default for the embedded SQLite and for development). Safe to run from several instances at once
(PostgreSQL and MySQL take an advisory lock, SQLite a lock file); running it twice changes nothing.

Subcommands (versioned migrations, see docs/migrations.md):
  diff NAME [--dir DIR] [--dev-url URL]  write DIR/<version>_NAME.sql for what the schema needs
                                         beyond DIR's files, and update DIR/atlas.sum
  apply [--dir DIR] [--baseline VERSION] apply DIR's pending files in order under the migration lock
  status [--dir DIR] [--json]            list DIR's applied and pending files
  hash [--dir DIR]                       rewrite DIR/atlas.sum after a file was written or
                                         edited by hand (before it is applied anywhere)
DIR defaults to migrations/<dialect> (postgres, mysql or sqlite3).`,
		args: true,
		flags: func(fs *flag.FlagSet) {
			dir = fs.String("dir", "", "diff, apply, status, hash: the migration `directory` (default migrations/<dialect>)")
			devURL = fs.String("dev-url", "", "diff: a clean dev database `URL` of the same dialect to replay the files on (default: a temporary database on the DB_URL server; in memory for SQLite)")
			baseline = fs.String("baseline", "", "apply: mark the files up to this `version` as applied without running them (a database whose schema already exists)")
			asJSON = fs.Bool("json", false, "status: print one JSON object")
		},
		run: func(ctx context.Context, inv *invocation) int {
			sub, args := "", inv.args
			if len(args) > 0 {
				sub, args = args[0], args[1:]
			}
			switch {
			case sub == "diff" && len(args) != 1:
				fmt.Fprintf(inv.stderr, "bento migrate: diff takes one NAME for the new file (got %q); accepted: letters, digits and underscores, e.g. bento migrate diff add_orders\n", strings.Join(args, " "))
				return exitConfig
			case sub != "" && sub != "diff" && len(args) > 0:
				fmt.Fprintf(inv.stderr, "bento migrate %s: unexpected argument %q (see bento migrate --help)\n", sub, args[0])
				return exitConfig
			case sub != "" && sub != "diff" && sub != "apply" && sub != "status" && sub != "hash":
				fmt.Fprintf(inv.stderr, "bento migrate: unknown subcommand %q; accepted: diff, apply, status, hash, or none to auto-migrate (see bento migrate --help)\n", sub)
				return exitConfig
			}
			if sub == "hash" {
				inv.name = "migrate hash"
				if *dir == "" {
					*dir = bento.DefaultMigrationDir(inv.cfg.DB.URL.Dialect())
				}
				if err := bento.MigrateHash(*dir); err != nil {
					return inv.fail("", err)
				}
				fmt.Fprintf(inv.stdout, "wrote %s\n", filepath.Join(*dir, "atlas.sum"))
				return exitOK
			}
			if sub != "" {
				inv.name = "migrate " + sub // errors read "bento migrate diff: ..."
			}
			opts := []bento.Option{bento.WithLogger(inv.logger)}
			if *devURL != "" {
				u, err := config.ParseURL(*devURL)
				if err != nil {
					fmt.Fprintf(inv.stderr, "bento migrate: --dev-url: %s\n", oneLine(err))
					return exitConfig
				}
				opts = append(opts, bento.WithDevURL(u))
			}
			db, err := bento.Open(inv.cfg, opts...)
			if err != nil {
				return inv.fail("", err)
			}
			defer db.Close()
			if *dir == "" {
				*dir = bento.DefaultMigrationDir(db.Dialect())
			}
			start := time.Now()
			switch sub {
			case "diff":
				file, err := db.MigrateDiff(ctx, *dir, args[0], migrate.Tables...)
				if err != nil {
					return inv.fail("", err)
				}
				if file == "" {
					fmt.Fprintf(inv.stdout, "%s is up to date: no migration written\n", *dir)
					return exitOK
				}
				fmt.Fprintln(inv.stdout, file)
			case "apply":
				var aopts []bento.ApplyOption
				if *baseline != "" {
					aopts = append(aopts, bento.ApplyBaseline(*baseline))
				}
				applied, err := db.MigrateApply(ctx, *dir, aopts...)
				for _, f := range applied {
					fmt.Fprintf(inv.stdout, "applied %s\n", f.Name)
				}
				if err != nil {
					return inv.fail("", err)
				}
				if len(applied) == 0 {
					fmt.Fprintf(inv.stdout, "no pending migrations in %s\n", *dir)
				}
				inv.logger.Info("bento: migrations applied", "dialect", db.Dialect(), "url", inv.cfg.DB.URL, "dir", *dir, "files", len(applied), "took", time.Since(start).Round(time.Millisecond))
			case "status":
				st, err := db.MigrateStatus(ctx, *dir)
				if err != nil {
					return inv.fail("", err)
				}
				if *asJSON {
					if err := json.NewEncoder(inv.stdout).Encode(st); err != nil {
						return inv.fail("", err)
					}
				} else {
					printMigrationStatus(inv.stdout, st)
				}
				for _, f := range st.Files {
					if f.Changed {
						return exitFail
					}
				}
			default:
				// The reference domain's tables, Bento's, and those of the
				// consumer runtime (bento consume).
				if err := db.Migrate(ctx, append(migrate.Tables, consumer.Schema(db.Names())...)...); err != nil {
					return inv.fail("", err)
				}
				inv.logger.Info("bento: migrated", "dialect", db.Dialect(), "url", inv.cfg.DB.URL, "took", time.Since(start).Round(time.Millisecond))
			}
			return exitOK
		},
	}
}

// printMigrationStatus prints a MigrationStatus as a table.
func printMigrationStatus(w io.Writer, st bento.MigrationStatus) {
	current := st.Current
	if current == "" {
		current = "none"
	}
	fmt.Fprintf(w, "directory: %s (%s)\ncurrent version: %s\napplied: %d, pending: %d\n", st.Dir, st.Dialect, current, st.Applied, st.Pending)
	for _, f := range st.Files {
		state := "pending"
		switch {
		case f.Changed && f.Name == "":
			state, f.Name = "applied, FILE MISSING", f.Version+"_"+f.Description+".sql"
		case f.Changed:
			state = "applied, CHANGED SINCE (applied sha256 " + f.AppliedChecksum + ")"
		case f.Baseline:
			state = "baseline"
		case f.Applied:
			state = "applied " + f.AppliedAt.UTC().Format(time.RFC3339)
		case f.Error != "":
			state = fmt.Sprintf("FAILED at statement %d of %d: %s", f.StatementsApplied+1, f.Statements, f.Error)
		}
		fmt.Fprintf(w, "  %-40s %s\n", f.Name, state)
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
