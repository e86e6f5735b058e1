package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"
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
	var ids, status *string
	var limit *int
	var timeout time.Duration
	return command{
		name:  "outbox",
		short: "inspect the outbox: stats, list events, wait until drained, requeue dead letters",
		usage: `Subcommands:
  stats [--json]         pending and dead-lettered counts and the age of the oldest pending event
  list [--status S] [--limit N] [--json]
                         the events, oldest first: id, aggregate, type, sequence, status,
                         attempts, last error, occurred_at (no payload)
  wait [--timeout D]     wait until no event is pending (a relay must be running; events
                         waiting for a retry count as pending, dead letters do not);
                         exit 1 with what is still pending if --timeout passes first
  requeue [--id ID,...]  make dead letters pending again (all of them, or the given event ids)`,
		args: true,
		flags: func(fs *flag.FlagSet) {
			asJSON = fs.Bool("json", false, "stats, list: print JSON (stats: one object; list: one array)")
			ids = fs.String("id", "", "requeue: comma-separated event ids (default: every dead letter)")
			status = fs.String("status", "", "list: only events of this status: pending, dead or published (published ones are kept only with OUTBOX_RETENTION)")
			limit = fs.Int("limit", 100, "list: at most this many events")
			durationVar(fs, &timeout, "timeout", time.Minute, "wait: give up after this long, e.g. 30s or plain seconds 30")
		},
		run: func(ctx context.Context, inv *invocation) int {
			args := inv.args
			subs := []string{"stats", "list", "wait", "requeue"}
			if len(args) != 1 || !slices.Contains(subs, args[0]) {
				fmt.Fprintf(inv.stderr, "bento outbox: want one subcommand, %s (got %q)\n", strings.Join(subs, ", "), strings.Join(args, " "))
				return exitConfig
			}
			switch {
			case args[0] == "list" && !slices.Contains([]string{"", outbox.StatusPending, outbox.StatusDead, outbox.StatusPublished}, *status):
				fmt.Fprintf(inv.stderr, "bento outbox: --status=%q; accepted: %s, %s or %s\n", *status, outbox.StatusPending, outbox.StatusDead, outbox.StatusPublished)
				return exitConfig
			case args[0] == "list" && *limit < 1:
				fmt.Fprintf(inv.stderr, "bento outbox: --limit=%d; accepted: a positive count\n", *limit)
				return exitConfig
			case args[0] == "wait" && timeout <= 0:
				fmt.Fprintf(inv.stderr, "bento outbox: --timeout=%s; accepted: a positive duration\n", timeout)
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
			switch args[0] {
			case "list":
				return outboxList(ctx, inv, db, outbox.ListOptions{Status: *status, Limit: *limit}, *asJSON)
			case "wait":
				wctx, cancel := context.WithTimeout(ctx, timeout)
				defer cancel()
				start := time.Now()
				st, err := outbox.WaitDrained(wctx, db.Driver(), db.Names(), outbox.WaitOptions{})
				if err != nil {
					return inv.fail("", err)
				}
				fmt.Fprintf(inv.stdout, "drained in %s: nothing pending, %d dead letters\n", time.Since(start).Round(time.Millisecond), st.Dead)
				return exitOK
			}
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

// outboxList prints the outbox's events: a table, or one JSON array.
func outboxList(ctx context.Context, inv *invocation, db *bento.DB, opts outbox.ListOptions, asJSON bool) int {
	limit := opts.Limit
	opts.Limit++ // one more, to know whether there are more
	entries, err := outbox.List(ctx, db.Driver(), db.Names(), opts)
	if err != nil {
		return inv.fail("", err)
	}
	more := len(entries) > limit
	entries = entries[:min(len(entries), limit)]
	if asJSON {
		if entries == nil {
			entries = []outbox.Entry{}
		}
		if err := json.NewEncoder(inv.stdout).Encode(entries); err != nil {
			return inv.fail("", err)
		}
		return exitOK
	}
	if len(entries) == 0 {
		fmt.Fprintln(inv.stdout, "no events")
		return exitOK
	}
	tw := tabwriter.NewWriter(inv.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tAGGREGATE\tTYPE\tSEQ\tSTATUS\tATTEMPTS\tOCCURRED_AT\tLAST_ERROR")
	for _, e := range entries {
		lastError := e.LastError
		if lastError == "" {
			lastError = "-"
		}
		fmt.Fprintf(tw, "%s\t%s %s\t%s\t%d\t%s\t%d\t%s\t%s\n", e.ID, e.AggregateType, e.AggregateID, e.Type, e.Sequence, e.Status,
			e.Attempts, e.OccurredAt.UTC().Format(time.RFC3339Nano), strings.ReplaceAll(lastError, "\n", " "))
	}
	tw.Flush()
	if more {
		fmt.Fprintf(inv.stderr, "bento outbox: showing the %d oldest; there are more (--limit)\n", limit)
	}
	return exitOK
}
