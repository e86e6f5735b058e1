// Command crashrelay is the relay process that outbox/crash_test.go kills
// with SIGKILL. It relays the outbox of DB_URL (and the other DB_* and
// OUTBOX_* settings) to the JetStream stream STREAM on NATS_URL until it
// is killed. With PAUSE set (a duration), after each batch the broker
// acknowledged it prints "PUBLISHED <n>" on stdout and sleeps PAUSE before
// handing the results back to the relay, so that a kill lands between
// publish and mark.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/bento-go/bento"
	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/outbox"
	"github.com/bento-go/bento/outbox/natspub"
)

// pausing reports each acknowledged batch and then holds it.
type pausing struct {
	outbox.Publisher
	pause time.Duration
}

func (p pausing) Publish(ctx context.Context, msgs []outbox.Message) []error {
	res := p.Publisher.Publish(ctx, msgs)
	acked := 0
	for _, err := range res {
		if err == nil {
			acked++
		}
	}
	if acked > 0 {
		fmt.Printf("PUBLISHED %d\n", acked)
		time.Sleep(p.pause)
	}
	return res
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "crashrelay:", err)
		os.Exit(1)
	}
}

func run() error {
	ctx := context.Background()
	cfg, err := config.Load(config.Source{})
	if err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	db, err := bento.Open(cfg, bento.WithLogger(logger))
	if err != nil {
		return err
	}
	defer db.Close()
	js, err := natspub.Connect(ctx, natspub.Config{URL: os.Getenv("NATS_URL"), Stream: os.Getenv("STREAM")})
	if err != nil {
		return err
	}
	defer js.Close()
	var pub outbox.Publisher = js
	if s := os.Getenv("PAUSE"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("PAUSE=%q: %w", s, err)
		}
		pub = pausing{Publisher: js, pause: d}
	}
	r, err := db.NewRelay(pub, db.RelayConfig())
	if err != nil {
		return err
	}
	fmt.Println("READY")
	return r.Run(ctx)
}
