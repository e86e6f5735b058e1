package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/bento-go/bento"
	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/outbox"
)

func relayCommand() command {
	var once *bool
	return command{
		name:  "relay",
		short: "publish the outbox until SIGTERM (or, with --once, what is pending now)",
		usage: `Claims pending outbox rows in batches (FOR UPDATE SKIP LOCKED on PostgreSQL and MariaDB, so
several relays may run side by side; one per database on SQLite), publishes them with
OUTBOX_PUBLISHER (log, nats or rabbitmq) and marks them published once the broker acknowledged them.
On SIGTERM or SIGINT it finishes its batch and exits 0.`,
		flags: func(fs *flag.FlagSet) {
			once = fs.Bool("once", false, "publish what is pending now, then exit")
		},
		run: func(ctx context.Context, inv *invocation) int {
			if inv.cfg.Outbox.Publisher == "none" {
				return inv.fail("", &config.Error{Setting: "OUTBOX_PUBLISHER", Source: "config", Value: "none",
					Problem: "there is no publisher to relay to", Accepts: "log, nats or rabbitmq"})
			}
			db, err := inv.openDB()
			if err != nil {
				return inv.fail("", err)
			}
			defer db.Close()
			pub, closePub, err := bento.Publisher(ctx, inv.cfg.Outbox, db)
			if err != nil {
				return inv.fail("", err)
			}
			defer closePub()
			relay, err := db.NewRelay(pub, db.RelayConfig())
			if err != nil {
				return inv.fail("", err)
			}
			defer relay.Close()
			if *once {
				start := time.Now()
				res, err := relay.RunOnce(ctx)
				if err != nil {
					return inv.fail("", err)
				}
				fmt.Fprintf(inv.stdout, "published %d, failed %d, dead-lettered %d in %s\n", res.Published, res.Failed, res.Dead, time.Since(start).Round(time.Millisecond))
				return exitOK
			}
			listen, err := db.Listen(ctx)
			if err != nil {
				return inv.fail("", err)
			}
			inv.logger.Info("bento: relay running", "dialect", db.Dialect(), "publisher", inv.cfg.Outbox.Publisher, "batch", inv.cfg.Outbox.BatchSize)
			if err := relay.Run(ctx, listen); err != nil {
				return inv.fail("", err)
			}
			inv.logger.Info("bento: relay stopped")
			return exitOK
		},
	}
}

func outboxCommand() command {
	var asJSON *bool
	var ids *string
	return command{
		name:  "outbox",
		short: "inspect the outbox: stats (pending, oldest pending age, dead letters) or requeue dead letters",
		usage: `Subcommands:
  stats [--json]         pending and dead-lettered counts and the age of the oldest pending event
  requeue [--id ID,...]  make dead letters pending again (all of them, or the given event ids)`,
		args: true,
		flags: func(fs *flag.FlagSet) {
			asJSON = fs.Bool("json", false, "stats: print one JSON object")
			ids = fs.String("id", "", "requeue: comma-separated event ids (default: every dead letter)")
		},
		run: func(ctx context.Context, inv *invocation) int {
			args := inv.args
			if len(args) != 1 || (args[0] != "stats" && args[0] != "requeue") {
				fmt.Fprintf(inv.stderr, "bento outbox: want one subcommand, stats or requeue (got %q)\n", strings.Join(args, " "))
				return exitConfig
			}
			var requeue []uuid.UUID
			if args[0] == "requeue" && *ids != "" {
				for _, s := range strings.Split(*ids, ",") {
					id, err := uuid.Parse(strings.TrimSpace(s))
					if err != nil {
						fmt.Fprintf(inv.stderr, "bento outbox: --id=%q: %q is not an event id; accepted: UUIDs separated by commas\n", *ids, s)
						return exitConfig
					}
					requeue = append(requeue, id)
				}
			}
			db, err := inv.openDB()
			if err != nil {
				return inv.fail("", err)
			}
			defer db.Close()
			if args[0] == "requeue" {
				n, err := outbox.Requeue(ctx, db.Driver(), db.Names(), requeue...)
				if err != nil {
					return inv.fail("", err)
				}
				fmt.Fprintf(inv.stdout, "requeued %d dead letters\n", n)
				return exitOK
			}
			st, err := outbox.ReadStats(ctx, db.Driver(), db.Names())
			if err != nil {
				return inv.fail("", err)
			}
			if *asJSON {
				if err := json.NewEncoder(inv.stdout).Encode(st); err != nil {
					return inv.fail("", err)
				}
				return exitOK
			}
			age := "-"
			if st.Pending > 0 {
				age = st.OldestAge.Round(time.Millisecond).String()
			}
			fmt.Fprintf(inv.stdout, "pending: %d\noldest pending age: %s\ndead letters: %d\npublished (retained): %d\n", st.Pending, age, st.Dead, st.Published)
			return exitOK
		},
	}
}
