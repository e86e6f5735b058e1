package rabbitpub_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/outbox/rabbitpub"
)

// brokerURL is the RabbitMQ the tests use: BENTO_TEST_RABBITMQ_URL or
// the machine's broker at 127.0.0.1:5672.
func brokerURL() string {
	if u := os.Getenv("BENTO_TEST_RABBITMQ_URL"); u != "" {
		return u
	}
	return rabbitpub.DefaultURL
}

// withChannel runs fn on a channel of a new connection to the broker,
// failing the test clearly if the broker does not answer.
func withChannel(t testing.TB, fn func(ch *amqp.Channel)) {
	t.Helper()
	conn, err := amqp.DialConfig(brokerURL(), amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
	if err != nil {
		t.Fatalf("RabbitMQ at %s does not answer (%v): these tests need a running broker (service rabbitmq-server start, or set BENTO_TEST_RABBITMQ_URL)",
			config.Redact(brokerURL()), err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("opening a channel: %v", err)
	}
	fn(ch)
}

// unique returns a name no other test or run uses.
func unique(t testing.TB, prefix string) string {
	t.Helper()
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return prefix + "." + hex.EncodeToString(b)
}

// bind declares the exchange (as the publisher does) and a durable queue
// bound to it with the keys, both deleted when the test ends; it returns
// the queue's name.
func bind(t testing.TB, exchange string, args amqp.Table, keys ...string) string {
	t.Helper()
	queue := unique(t, "bento.test.q")
	withChannel(t, func(ch *amqp.Channel) {
		if err := ch.ExchangeDeclare(exchange, amqp.ExchangeTopic, true, false, false, false, nil); err != nil {
			t.Fatalf("declaring exchange %s: %v", exchange, err)
		}
		if _, err := ch.QueueDeclare(queue, true, false, false, false, args); err != nil {
			t.Fatalf("declaring queue %s: %v", queue, err)
		}
		for _, k := range keys {
			if err := ch.QueueBind(queue, k, exchange, false, nil); err != nil {
				t.Fatalf("binding %s to %s with %q: %v", queue, exchange, k, err)
			}
		}
	})
	t.Cleanup(func() {
		withChannel(t, func(ch *amqp.Channel) {
			if _, err := ch.QueueDelete(queue, false, false, false); err != nil {
				t.Errorf("deleting queue %s: %v", queue, err)
			}
			if err := ch.ExchangeDelete(exchange, false, false); err != nil {
				t.Errorf("deleting exchange %s: %v", exchange, err)
			}
		})
	})
	return queue
}

// drain takes every message in the queue, in queue order.
func drain(t testing.TB, queue string) []amqp.Delivery {
	t.Helper()
	var out []amqp.Delivery
	withChannel(t, func(ch *amqp.Channel) {
		for {
			d, ok, err := ch.Get(queue, true)
			if err != nil {
				t.Fatalf("reading queue %s: %v", queue, err)
			}
			if !ok {
				return
			}
			out = append(out, d)
		}
	})
	return out
}

// queueLength is the number of messages ready in the queue.
func queueLength(t testing.TB, queue string) int {
	t.Helper()
	var n int
	withChannel(t, func(ch *amqp.Channel) {
		q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		if err != nil {
			t.Fatalf("inspecting queue %s: %v", queue, err)
		}
		n = q.Messages
	})
	return n
}

// broker stops and starts the machine's RabbitMQ application with
// rabbitmqctl; whatever happens, it is started again when the test ends.
type broker struct {
	t    testing.TB
	mu   sync.Mutex
	down bool
}

func controlBroker(t testing.TB) *broker {
	t.Helper()
	if _, err := exec.LookPath("rabbitmqctl"); err != nil {
		t.Fatalf("rabbitmqctl is not on PATH: the broker-restart tests stop and start the machine's RabbitMQ with it")
	}
	b := &broker{t: t}
	t.Cleanup(func() {
		b.mu.Lock()
		down := b.down
		b.mu.Unlock()
		if down {
			b.Start()
		}
	})
	return b
}

func (b *broker) ctl(cmd string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "rabbitmqctl", cmd).CombinedOutput(); err != nil {
		b.t.Fatalf("rabbitmqctl %s: %v\n%s", cmd, err, out)
	}
}

// Stop stops the RabbitMQ application (the node stays up): connections
// are closed and the AMQP port refuses new ones.
func (b *broker) Stop() {
	b.t.Helper()
	b.mu.Lock()
	b.down = true
	b.mu.Unlock()
	b.ctl("stop_app")
}

// Start starts the application and waits for the AMQP port.
func (b *broker) Start() {
	b.t.Helper()
	b.ctl("start_app")
	b.mu.Lock()
	b.down = false
	b.mu.Unlock()
	u, err := amqp.ParseURI(brokerURL())
	if err != nil {
		b.t.Fatal(err)
	}
	addr := net.JoinHostPort(u.Host, strconv.Itoa(u.Port))
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("RabbitMQ's port %s is closed 30 s after start_app: %v", addr, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
