package dialects

import (
	"fmt"
	"testing"

	"github.com/bento-go/bento/config"
)

// A multi-host DB_URL reaches pgx as a host list with
// target_session_attrs: pgx tries the hosts in order and keeps the first
// that accepts writes, so new connections find the primary after a
// failover.
func TestPostgresConnConfigMultiHost(t *testing.T) {
	c, err := config.Load(config.Source{Environ: func() []string {
		return []string{"DB_URL=postgres://app:pw@127.0.0.1:5432,127.0.0.1:5433/db?sslmode=disable&target_session_attrs=read-write"}
	}})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := PostgresConnConfig(c.DB, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var hosts []string
	for _, f := range cc.Fallbacks {
		hosts = append(hosts, fmt.Sprintf("%s:%d", f.Host, f.Port))
	}
	if cc.Host != "127.0.0.1" || cc.Port != 5432 || len(hosts) != 1 || hosts[0] != "127.0.0.1:5433" {
		t.Errorf("pgx config: host %s:%d, fallbacks %v; want 127.0.0.1:5432 then 127.0.0.1:5433", cc.Host, cc.Port, hosts)
	}
	if cc.ValidateConnect == nil {
		t.Error("target_session_attrs=read-write did not reach pgx (no ValidateConnect)")
	}
	if cc.Password != "pw" || cc.Database != "db" {
		t.Errorf("pgx config: password set %v, database %q", cc.Password == "pw", cc.Database)
	}
}
