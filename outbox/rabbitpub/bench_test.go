package rabbitpub_test

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/bento-go/bento"
	"github.com/bento-go/bento/ent"
	"github.com/bento-go/bento/internal/testdb"
	"github.com/bento-go/bento/internal/testnats"
	"github.com/bento-go/bento/outbox"
	"github.com/bento-go/bento/outbox/natspub"
	"github.com/bento-go/bento/outbox/rabbitpub"
)

// BenchmarkRelayBurnDownConfirms measures how fast one relay drains a
// backlog of 20,000 pending events (one per aggregate) on PostgreSQL into
// RabbitMQ with publisher confirms (a durable topic exchange and a bound
// durable queue, persistent messages) beside JetStream (a private
// nats-server, file storage), with batches of 100 and 1,000. The two
// publishers alternate over 3 rounds, each run on a fresh database; each
// round's figure is logged and the median reported:
//
//	go test -run '^$' -bench RelayBurnDownConfirms -benchtime 1x ./outbox/rabbitpub/
func BenchmarkRelayBurnDownConfirms(b *testing.B) {
	const backlog, rounds = 20_000, 3
	ctx := context.Background()
	for _, batch := range []int{100, 1000} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			js := testnats.Start(b)
			for b.Loop() {
				rates := map[string][]float64{}
				for round := 1; round <= rounds; round++ {
					for _, arm := range []string{"nats", "rabbitmq"} {
						cfg := testdb.Config(b, testdb.Postgres)
						cfg.Outbox.BatchSize = batch
						db, err := bento.Open(cfg)
						if err != nil {
							b.Fatal(err)
						}
						if err := db.Migrate(ctx); err != nil {
							b.Fatal(err)
						}
						preload(b, db, backlog)
						pub, stored, closePub := burnDownPublisher(b, arm, js.URL())
						rc := db.RelayConfig()
						rc.Wake = make(chan struct{})
						r, err := db.NewRelay(pub, rc)
						if err != nil {
							b.Fatal(err)
						}
						start := time.Now()
						res, err := r.RunOnce(ctx)
						took := time.Since(start)
						if err != nil || res.Published != backlog {
							b.Fatalf("%s: RunOnce = %+v, %v; want %d published", arm, res, err, backlog)
						}
						if n := stored(); n != backlog {
							b.Fatalf("%s: the broker stored %d messages, want %d", arm, n, backlog)
						}
						rate := float64(backlog) / took.Seconds()
						rates[arm] = append(rates[arm], rate)
						b.Logf("round %d %-8s batch %4d: %d events in %s, %.0f/s", round, arm, batch, backlog, took.Round(time.Millisecond), rate)
						r.Close()
						closePub()
						db.Close()
					}
				}
				for arm, rs := range rates {
					slices.Sort(rs)
					b.ReportMetric(rs[len(rs)/2], arm+"-events/s")
				}
			}
		})
	}
}

// burnDownPublisher connects the arm's publisher to a fresh stream or
// exchange and queue; stored counts the messages the broker holds.
func burnDownPublisher(b *testing.B, arm, natsURL string) (pub outbox.Publisher, stored func() int, close func()) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	switch arm {
	case "nats":
		stream := "BENCH_" + strconv.FormatInt(time.Now().UnixNano(), 36)
		p, err := natspub.Connect(ctx, natspub.Config{URL: natsURL, SubjectPrefix: "bench", Stream: stream, CreateStream: true})
		if err != nil {
			b.Fatal(err)
		}
		return p, func() int {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				s, err := p.JetStream().Stream(ctx, stream)
				if err != nil {
					b.Fatal(err)
				}
				info, err := s.Info(ctx)
				if err != nil {
					b.Fatal(err)
				}
				return int(info.State.Msgs)
			}, func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				_ = p.JetStream().DeleteStream(ctx, stream)
				p.Close()
			}
	default:
		exchange := unique(b, "bento.bench")
		queue := bind(b, exchange, nil, "#")
		p, err := rabbitpub.Connect(ctx, rabbitpub.Config{URL: brokerURL(), Exchange: exchange})
		if err != nil {
			b.Fatal(err)
		}
		return p, func() int { return queueLength(b, queue) }, func() { p.Close() }
	}
}

// preload commits n events, one per aggregate, 500 per unit of work.
func preload(b *testing.B, db *bento.DB, n int) {
	b.Helper()
	uow := ent.NewUnitOfWork(ent.NewClient(ent.Driver(db.Driver())))
	for from := 0; from < n; from += 500 {
		err := uow.Do(context.Background(), func(ctx context.Context, _ *ent.Client) error {
			for i := from; i < min(from+500, n); i++ {
				if err := outbox.Record(ctx, "Load", strconv.Itoa(i), stepped{N: 1}); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatalf("preloading events: %v", err)
		}
	}
}
