package config

import (
	"errors"
	"strings"
	"testing"
)

// TestRabbitMQSettings: OUTBOX_PUBLISHER=rabbitmq with its URL and
// exchange; a bad value is one error naming the setting, showing the
// value with the password redacted and saying what is accepted; the
// rendered configuration never shows the password.
func TestRabbitMQSettings(t *testing.T) {
	c, err := Load(Source{Environ: environ()})
	if err != nil {
		t.Fatal(err)
	}
	if c.Outbox.RabbitMQURL != "amqp://guest:guest@127.0.0.1:5672/" || c.Outbox.RabbitMQExchange != "bento.outbox" {
		t.Errorf("defaults: %q, %q", c.Outbox.RabbitMQURL, c.Outbox.RabbitMQExchange)
	}
	c, err = Load(Source{Environ: environ("OUTBOX_PUBLISHER=rabbitmq", "OUTBOX_RABBITMQ_URL=amqps://relay:s3cret@mq.example.com:5671/prod",
		"OUTBOX_RABBITMQ_EXCHANGE=shop.events:v1")})
	if err != nil {
		t.Fatal(err)
	}
	if c.Outbox.Publisher != "rabbitmq" || c.Outbox.RabbitMQURL != "amqps://relay:s3cret@mq.example.com:5671/prod" || c.Outbox.RabbitMQExchange != "shop.events:v1" {
		t.Errorf("loaded %+v", c.Outbox)
	}
	if s := c.String(); strings.Contains(s, "s3cret") || !strings.Contains(s, "amqps://relay:xxxxx@mq.example.com:5671/prod") {
		t.Errorf("String() = %s; want the RabbitMQ URL with its password redacted", s)
	}

	for _, tc := range []struct{ kv, want string }{
		{"OUTBOX_RABBITMQ_URL=http://relay:s3cret@mq:5672/", `unknown scheme "http"`},
		{"OUTBOX_RABBITMQ_URL=amqp://relay:s3cret@mq:56x72/", "not an AMQP URL"},
		{"OUTBOX_RABBITMQ_URL=relay:s3cret@mq", "not an AMQP URL"},
		{"OUTBOX_RABBITMQ_EXCHANGE=amq.topic", "reserved"},
		{"OUTBOX_RABBITMQ_EXCHANGE=a b", "not allowed"},
		{"OUTBOX_RABBITMQ_EXCHANGE=" + strings.Repeat("x", 256), "not an exchange name"},
		{"OUTBOX_PUBLISHER=amqp", "rabbitmq"},
	} {
		_, err := Load(Source{Environ: environ(tc.kv)})
		var ce *Error
		if !errors.As(err, &ce) {
			t.Errorf("%s: %v, want a *config.Error", tc.kv, err)
			continue
		}
		name, _, _ := strings.Cut(tc.kv, "=")
		if s := err.Error(); ce.Setting != name || !strings.Contains(s, tc.want) || strings.Contains(s, "s3cret") || !strings.Contains(s, "accepted: ") {
			t.Errorf("%s: %q; want %s named, %q, the accepted values and no password", tc.kv, s, name, tc.want)
		}
	}
}
