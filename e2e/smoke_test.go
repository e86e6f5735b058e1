package e2e

import (
	"context"
	"testing"
	"time"
)

// TestHarness checks the harness itself: a private PostgreSQL cluster and
// MariaDB server, bento serve on each, a short load, the invariants.
func TestHarness(t *testing.T) {
	pg := StartPG(t)
	url := pg.CreateDB("harness")
	svc := Serve(t, []string{"DB_URL=" + url, "OUTBOX_RETENTION=1h", "DB_APPLICATION_NAME=e2e-harness"})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	res := Load{URL: svc.URL(), Workers: 4, Prefix: "harness"}.Run(ctx)
	cancel()
	summary(t, "postgres", res)
	Invariants(t, pg.DB("harness"), "postgres", "harness", res)
	if n := res.Count()[Acked]; n == 0 {
		t.Fatal("no order was acknowledged")
	}
	d := pg.Restart("fast")
	t.Logf("restart took %s", d)

	m := StartMariaDB(t)
	svc2 := Serve(t, []string{"DB_URL=" + m.URL("harness"), "OUTBOX_RETENTION=1h"})
	ctx, cancel = context.WithTimeout(context.Background(), 2*time.Second)
	res2 := Load{URL: svc2.URL(), Workers: 4, Prefix: "harness"}.Run(ctx)
	cancel()
	summary(t, "mariadb", res2)
	Invariants(t, m.DB("harness"), "mysql", "harness", res2)
}
