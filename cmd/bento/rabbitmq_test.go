package main

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/bento-go/bento/config"
)

// TestRelayOnceRabbitMQ: `OUTBOX_PUBLISHER=rabbitmq bento relay --once`
// moves a backlog of OrderPlaced events (placed by bento bench without a
// relay) into a queue bound to the exchange, on every dialect; `bento
// info --json` shows the RabbitMQ URL with its password redacted.
// Invariant: the queue holds each event once (by message_id) and nothing
// is left pending.
func TestRelayOnceRabbitMQ(t *testing.T) {
	brokerURL := os.Getenv("BENTO_TEST_RABBITMQ_URL")
	if brokerURL == "" {
		brokerURL = "amqp://guest:guest@127.0.0.1:5672/"
	}
	conn, err := amqp.DialConfig(brokerURL, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
	if err != nil {
		t.Fatalf("RabbitMQ at %s does not answer (%v): this test needs a running broker (service rabbitmq-server start, or set BENTO_TEST_RABBITMQ_URL)",
			config.Redact(brokerURL), err)
	}
	defer conn.Close()
	for _, dialect := range allDialects {
		t.Run(dialect, func(t *testing.T) {
			ch, err := conn.Channel()
			if err != nil {
				t.Fatal(err)
			}
			defer ch.Close()
			exchange, queue := "bento.test.cli."+randomHex(t, 4), "bento.test.cli.q."+randomHex(t, 4)
			if err := ch.ExchangeDeclare(exchange, amqp.ExchangeTopic, true, false, false, false, nil); err != nil {
				t.Fatal(err)
			}
			defer ch.ExchangeDelete(exchange, false, false)
			if _, err := ch.QueueDeclare(queue, true, false, false, false, nil); err != nil {
				t.Fatal(err)
			}
			defer ch.QueueDelete(queue, false, false, false)
			if err := ch.QueueBind(queue, "Order.*", exchange, false, nil); err != nil {
				t.Fatal(err)
			}

			url := dialectURL(t, dialect)
			if r := runCLI(t, []string{"DB_URL=" + url, "OUTBOX_PUBLISHER=none"}, "bench", "--orders", "60", "--workers", "3"); r.code != exitOK {
				t.Fatalf("bench: %s", r)
			}
			env := []string{"DB_URL=" + url, "OUTBOX_PUBLISHER=rabbitmq", "OUTBOX_RABBITMQ_URL=" + brokerURL, "OUTBOX_RABBITMQ_EXCHANGE=" + exchange}
			r := runCLI(t, env, "relay", "--once")
			if r.code != exitOK || !strings.HasPrefix(r.stdout, "published 60, failed 0, dead-lettered 0") {
				t.Fatalf("relay --once: want 60 published\n%s", r)
			}
			if r := runCLI(t, env, "outbox", "stats", "--json"); r.code != exitOK || !strings.Contains(r.stdout, `"pending":0`) {
				t.Fatalf("outbox stats after relay --once: want nothing pending\n%s", r)
			}
			ids := map[string]int{}
			for {
				d, ok, err := ch.Get(queue, true)
				if err != nil {
					t.Fatal(err)
				}
				if !ok {
					break
				}
				if d.RoutingKey != "Order.OrderPlaced" {
					t.Errorf("routing key %q", d.RoutingKey)
				}
				ids[d.MessageId]++
			}
			total := 0
			for _, n := range ids {
				total += n
			}
			if len(ids) != 60 || total != 60 {
				t.Fatalf("the queue holds %d messages, %d distinct; want the 60 events once each", total, len(ids))
			}
		})
	}

	r := runCLI(t, []string{"DB_URL=" + sqliteURL(t), "OUTBOX_RABBITMQ_URL=amqp://relay:S3cret-rmq@127.0.0.1:5672/"}, "info", "--json")
	if r.code != exitOK || strings.Contains(r.stdout+r.stderr, "S3cret") {
		t.Fatalf("info --json: want exit 0 and no password\n%s", r)
	}
	var info struct {
		Settings map[string]string `json:"settings"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &info); err != nil {
		t.Fatalf("info --json: %v\n%s", err, r)
	}
	if got := info.Settings["OUTBOX_RABBITMQ_URL"]; got != "amqp://relay:xxxxx@127.0.0.1:5672/" {
		t.Errorf("settings.OUTBOX_RABBITMQ_URL = %q, want the URL with its password redacted", got)
	}
}
