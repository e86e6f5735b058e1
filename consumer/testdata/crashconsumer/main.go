// Command crashconsumer is the consumer process that consumer/crash_test.go
// kills with SIGKILL. It runs the reference projection (shop's customer
// summaries) over DB_URL with the INBOX_* and OUTBOX_* settings until it is
// killed. MODE chooses where it stops for PAUSE (a duration) so that the
// kill lands there:
//
//   - commit: after a unit of work committed and before the ack; it prints
//     "COMMITTED" first.
//   - handler: after the handler ran and before the commit; it prints
//     "HANDLED" first.
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/bento-go/bento"
	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/consumer"
	"github.com/bento-go/bento/ent"
	"github.com/bento-go/bento/shop"
	"github.com/bento-go/bento/unitofwork"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "crashconsumer:", err)
		os.Exit(1)
	}
}

func run() error {
	cfg, err := config.Load(config.Source{})
	if err != nil {
		return err
	}
	pause, err := time.ParseDuration(os.Getenv("PAUSE"))
	if err != nil {
		return fmt.Errorf("PAUSE=%q: %w", os.Getenv("PAUSE"), err)
	}
	db, err := bento.Open(cfg)
	if err != nil {
		return err
	}
	defer db.Close()
	client := ent.NewClient(ent.Driver(db.Driver()))
	uow := ent.NewUnitOfWork(client)
	var port unitofwork.Port[*ent.Client] = uow
	switch mode := os.Getenv("MODE"); mode {
	case "commit":
		port = unitofwork.Func[*ent.Client](func(ctx context.Context, fn func(context.Context, *ent.Client) error, opts ...unitofwork.Option) error {
			err := uow.Do(ctx, fn, opts...)
			if err == nil {
				fmt.Println("COMMITTED")
				time.Sleep(pause)
			}
			return err
		})
	case "handler":
		port = unitofwork.Func[*ent.Client](func(ctx context.Context, fn func(context.Context, *ent.Client) error, opts ...unitofwork.Option) error {
			return uow.Do(ctx, func(ctx context.Context, c *ent.Client) error {
				err := fn(ctx, c)
				if err == nil {
					fmt.Println("HANDLED")
					time.Sleep(pause)
				}
				return err
			}, opts...)
		})
	default:
		return fmt.Errorf("MODE=%q; accepted: commit or handler", mode)
	}
	nc, err := nats.Connect(cfg.Outbox.NATSURL, nats.MaxReconnects(-1))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	c, err := consumer.New(port, js, shop.SummaryHandlers(), consumer.FromSettings(cfg))
	if err != nil {
		return err
	}
	fmt.Println("READY")
	return c.Run(context.Background())
}
