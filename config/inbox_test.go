package config_test

import (
	"strings"
	"testing"
	"time"

	"github.com/bento-go/bento/config"
)

func TestInboxSettings(t *testing.T) {
	env := func(kv ...string) func() []string { return func() []string { return kv } }
	c, err := config.Load(config.Source{Environ: env("INBOX_CONSUMER=billing", "INBOX_MAX_DELIVER=3", "INBOX_BACKOFF=250ms", "INBOX_ORDERED=false")})
	if err != nil {
		t.Fatal(err)
	}
	if c.Inbox.Consumer != "billing" || c.Inbox.MaxDeliver != 3 || c.Inbox.Backoff != 250*time.Millisecond || c.Inbox.Ordered {
		t.Errorf("got %+v", c.Inbox)
	}
	d := config.Default().Inbox
	if d.Consumer != "bento-consumer" || d.MaxDeliver != 10 || d.AckWait != 30*time.Second || d.Batch != 100 || d.Workers != 4 || !d.Ordered {
		t.Errorf("defaults: %+v", d)
	}
	for _, bad := range []string{"INBOX_CONSUMER=a.b", "INBOX_CONSUMER=", "INBOX_MAX_DELIVER=0", "INBOX_ACK_WAIT=0", "INBOX_WORKERS=1000", "INBOX_MAX_ACK_PENDING=x"} {
		_, err := config.Load(config.Source{Environ: env(bad)})
		name, value, _ := strings.Cut(bad, "=")
		if err == nil || !strings.Contains(err.Error(), name+`="`+value+`"`) || !strings.Contains(err.Error(), "accepted:") {
			t.Errorf("%s: error %v; want one naming the setting, its value and what is accepted", bad, err)
		}
	}
}
