package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/consumer"
	"github.com/bento-go/bento/drain"
	"github.com/bento-go/bento/ent"
	"github.com/bento-go/bento/ent/migrate"
	"github.com/bento-go/bento/metrics"
	"github.com/bento-go/bento/shop"
)

func consumeCommand() command {
	var ids, metricsAddr *string
	return command{
		name:  "consume",
		short: "run the reference consumer (customer summaries from the Order events) until SIGTERM, or requeue its dead letters",
		usage: `Consumes the events of OUTBOX_STREAM on OUTBOX_NATS_URL with the durable JetStream consumer
INBOX_CONSUMER and projects OrderPlaced, OrderPaid and OrderCancelled into per-customer
summaries (GET /customers/{email}/summary on bento serve). Each event is applied exactly once,
in per-aggregate order, in a unit of work that also records it in the inbox; several instances
may run side by side. It migrates its tables on start.

On SIGTERM or SIGINT it stops pulling, finishes and acks the events in hand, drains the database
(DB_DRAIN_MODE) and exits 0.

Subcommands:
  requeue [--id ID,...]  publish the consumer's dead letters again (all, or the given event ids)`,
		args: true,
		flags: func(fs *flag.FlagSet) {
			ids = fs.String("id", "", "requeue: comma-separated event ids (default: every dead letter)")
			metricsAddr = fs.String("metrics-addr", "", "serve GET /metrics on this HOST:PORT (default: none)")
		},
		run: func(ctx context.Context, inv *invocation) int {
			args := inv.args
			if len(args) > 1 || (len(args) == 1 && args[0] != "requeue") {
				fmt.Fprintf(inv.stderr, "bento consume: want no subcommand or requeue (got %q)\n", strings.Join(args, " "))
				return exitConfig
			}
			var requeue []uuid.UUID
			if *ids != "" {
				for _, s := range strings.Split(*ids, ",") {
					id, err := uuid.Parse(strings.TrimSpace(s))
					if err != nil {
						fmt.Fprintf(inv.stderr, "bento consume: --id=%q: %q is not an event id; accepted: UUIDs separated by commas\n", *ids, s)
						return exitConfig
					}
					requeue = append(requeue, id)
				}
			}
			nc, err := nats.Connect(inv.cfg.Outbox.NATSURL, nats.Name("bento-consume"), nats.MaxReconnects(-1),
				nats.ReconnectWait(250*time.Millisecond), nats.RetryOnFailedConnect(true))
			if err != nil {
				return inv.fail("", fmt.Errorf("connecting to NATS at %s: %w", config.Redact(inv.cfg.Outbox.NATSURL), err))
			}
			defer nc.Close()
			js, err := jetstream.New(nc)
			if err != nil {
				return inv.fail("", err)
			}
			if len(args) == 1 {
				db, err := inv.openDB()
				if err != nil {
					return inv.fail("", err)
				}
				defer db.Close()
				n, err := consumer.Requeue(ctx, js, db.Driver(), db.Names(), inv.cfg.Inbox.Consumer, requeue...)
				if err != nil {
					return inv.fail("", err)
				}
				fmt.Fprintf(inv.stdout, "requeued %d dead letters of %s\n", n, inv.cfg.Inbox.Consumer)
				return exitOK
			}
			return runConsumer(ctx, inv, js, *metricsAddr)
		},
	}
}

// runConsumer runs the reference consumer until the first signal, then
// shuts down through drain.Shutdown.
func runConsumer(ctx context.Context, inv *invocation, js jetstream.JetStream, metricsAddr string) int {
	base := context.WithoutCancel(ctx)
	st, err := inv.openStack(base, false)
	if err != nil {
		return inv.fail("", err)
	}
	db := st.db
	if err := db.Migrate(base, append(migrate.Tables, consumer.Schema(db.Names())...)...); err != nil {
		db.Close()
		return inv.fail("", err)
	}
	cfg := consumer.FromSettings(inv.cfg)
	cfg.Observer = metrics.NewInbox(st.reg)
	cfg.Logger = inv.logger
	c, err := consumer.New[*ent.Client](st.uow, js, shop.SummaryHandlers(), cfg)
	if err != nil {
		db.Close()
		return inv.fail("", err)
	}
	if metricsAddr != "" {
		ln, err := net.Listen("tcp", metricsAddr)
		if err != nil {
			db.Close()
			return inv.fail("", fmt.Errorf("listening on %s: %w", metricsAddr, err))
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", promhttp.HandlerFor(st.reg, promhttp.HandlerOpts{}))
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		defer srv.Close()
	}
	running, stop := context.WithCancel(base)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- c.Run(running) }()
	inv.logger.Info("bento: consumer running", "consumer", cfg.Name, "stream", cfg.Stream, "dialect", db.Dialect(),
		"ordered", !cfg.Unordered, "workers", cfg.Workers)
	select {
	case <-ctx.Done():
		inv.logger.Info("bento: shutdown: signal received", "cause", context.Cause(ctx).Error())
	case err := <-done:
		// Run ends by itself only on a configuration error.
		db.Close()
		return inv.fail("", err)
	}
	shutdown := &drain.Shutdown{
		StopWorkers: func(ctx context.Context) error {
			stop()
			select {
			case err := <-done:
				return err
			case <-ctx.Done():
				return ctx.Err()
			}
		},
		Drainer: st.drainer,
		Logger:  inv.logger,
	}
	escalate := make(chan os.Signal, 1)
	signal.Notify(escalate, syscall.SIGTERM, os.Interrupt)
	stats := shutdown.Run(escalate)
	signal.Stop(escalate)
	inv.logger.Info("bento: stopped", "drain_success", stats.Success, "took", stats.Took.Round(time.Millisecond))
	return exitOK
}
