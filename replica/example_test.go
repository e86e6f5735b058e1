package replica_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/bento-go/bento"
	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/ent"
	"github.com/bento-go/bento/ent/migrate"
	"github.com/bento-go/bento/replica"
	"github.com/bento-go/bento/unitofwork"
)

// ParseLSN turns PostgreSQL's text form of a WAL position into a number
// that orders positions: read-your-writes compares them.
func ExampleParseLSN() {
	lsn, err := replica.ParseLSN("0/16B3748")
	fmt.Println(lsn, err)
	later, _ := replica.ParseLSN("1/0")
	fmt.Println(later > lsn)
	_, err = replica.ParseLSN("16B3748")
	fmt.Println(err)
	// Output:
	// 23803720 <nil>
	// true
	// replica: bad LSN "16B3748"
}

// openExample opens a fresh database on the local PostgreSQL
// (127.0.0.1:5432) with the streaming replica that scripts/replica.sh runs
// (127.0.0.1:5433, or BENTO_REPLICA_PORT) as its replica, migrated, the
// way a service opens one from DB_URL and DB_REPLICA_URLS. cleanup closes
// it and drops the database.
func openExample() (db *bento.DB, client *ent.Client, cleanup func()) {
	ctx := context.Background()
	admin, err := sql.Open("pgx", "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable")
	if err != nil {
		log.Fatal(err)
	}
	name := "bento_example_" + strings.ReplaceAll(uuid.NewString()[:13], "-", "")
	if _, err := admin.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		log.Fatalf("creating a database on the local PostgreSQL (127.0.0.1:5432): %v", err)
	}
	drop := func() {
		admin.ExecContext(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
		admin.Close()
	}
	port := os.Getenv("BENTO_REPLICA_PORT")
	if port == "" {
		port = "5433"
	}
	primaryURL := "postgres://postgres@127.0.0.1:5432/" + name + "?sslmode=disable"
	replicaURL := "postgres://postgres@127.0.0.1:" + port + "/" + name + "?sslmode=disable"
	if err := waitForReplica(ctx, replicaURL); err != nil {
		drop()
		log.Fatalf("the streaming replica on port %s does not serve %s: %v (run scripts/replica.sh)", port, name, err)
	}
	cfg, err := config.Load(config.Source{Environ: func() []string {
		return []string{"DB_URL=" + primaryURL, "DB_REPLICA_URLS=" + replicaURL}
	}})
	if err != nil {
		drop()
		log.Fatal(err)
	}
	if db, err = bento.Open(cfg); err != nil {
		drop()
		log.Fatal(err)
	}
	if err := db.Migrate(ctx, migrate.Tables...); err != nil {
		db.Close()
		drop()
		log.Fatal(err)
	}
	return db, ent.NewClient(ent.Driver(db.Driver())), func() { db.Close(); drop() }
}

// waitForReplica waits up to 15 s until the replica serves the database
// (it replays the CREATE DATABASE).
func waitForReplica(ctx context.Context, url string) error {
	rep, err := sql.Open("pgx", url)
	if err != nil {
		return err
	}
	defer rep.Close()
	deadline := time.Now().Add(15 * time.Second)
	for {
		var rec bool
		err := rep.QueryRowContext(ctx, "SELECT pg_is_in_recovery()").Scan(&rec)
		switch {
		case err == nil && rec:
			return nil
		case err == nil:
			err = fmt.Errorf("the server on %s is not in recovery", url)
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// placeOrder commits an order in a unit of work and returns its id.
func placeOrder(ctx context.Context, uow *ent.UnitOfWork) (int, error) {
	return unitofwork.DoValue(ctx, uow, func(ctx context.Context, tx *ent.Client) (int, error) {
		o, err := tx.Order.Create().SetCustomer("a@example.com").SetTotalCents(2500).Save(ctx)
		if err != nil {
			return 0, err
		}
		return o.ID, nil
	})
}

// Each HTTP request is a read-your-writes session, as bento serve does it:
// after the request's unit of work commits, its reads go to the primary or
// to a replica that has replayed the commit. It runs against the local
// PostgreSQL and its streaming replica.
func ExampleWithSession() {
	db, client, cleanup := openExample()
	defer cleanup()
	uow := ent.NewUnitOfWork(client)

	mux := http.NewServeMux()
	mux.HandleFunc("POST /orders", func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context() // carries the request's Session
		id, err := unitofwork.DoValue(ctx, uow, func(ctx context.Context, tx *ent.Client) (int, error) {
			o, err := tx.Order.Create().SetCustomer("a@example.com").SetTotalCents(2500).Save(ctx)
			if err != nil {
				return 0, err
			}
			return o.ID, nil
		})
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		o, err := client.Order.Get(ctx, id) // sees the commit above
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		json.NewEncoder(w).Encode(o)
	})
	sessions := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mux.ServeHTTP(w, r.WithContext(replica.WithSession(r.Context())))
	})
	srv := httptest.NewServer(sessions) // a service: http.ListenAndServe(addr, sessions)
	defer srv.Close()

	resp, err := http.Post(srv.URL+"/orders", "application/json", nil)
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	var o ent.Order
	if err := json.NewDecoder(resp.Body).Decode(&o); err != nil {
		log.Fatal(err)
	}
	fmt.Println(resp.StatusCode, o.Customer, o.Status, db.Replicas() != nil)
	// Output:
	// 200 a@example.com pending true
}

// UsePrimary sends a context's reads to the primary, whatever the
// replicas' state: for a read that must see every committed write, such
// as the check before charging a customer. It runs against the local
// PostgreSQL and its streaming replica.
func ExampleUsePrimary() {
	db, client, cleanup := openExample()
	defer cleanup()
	ctx := context.Background()
	id, err := placeOrder(ctx, ent.NewUnitOfWork(client))
	if err != nil {
		log.Fatal(err)
	}

	o, err := client.Order.Get(replica.UsePrimary(ctx), id)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(o.Status, db.Replicas() != nil)
	// Output:
	// pending true
}

// States reports each replica as bento info --json does. It runs against
// the local PostgreSQL and its streaming replica.
func ExampleRouter_States() {
	db, _, cleanup := openExample()
	defer cleanup()
	r := db.Replicas() // nil without DB_REPLICA_URLS
	if r == nil {
		fmt.Println("no replicas configured")
		return
	}
	r.CheckNow(context.Background())
	for _, st := range r.States() {
		fmt.Printf("%s healthy=%t in_recovery=%t replay_lsn_known=%t %s\n",
			st.Name, st.Healthy, st.InRecovery, st.ReplayLSN != "", st.Reason)
	}
	// Output:
	// replica-1 healthy=true in_recovery=true replay_lsn_known=true
}
