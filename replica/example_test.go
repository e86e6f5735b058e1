package replica_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"net/http"
	"os"

	"github.com/bento-go/bento"
	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/ent"
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

// openFromEnvironment opens the database that DB_URL and DB_REPLICA_URLS
// name, with every other setting from the environment too.
func openFromEnvironment() (*bento.DB, *ent.Client) {
	cfg, err := config.Load(config.Source{})
	if err != nil {
		log.Fatal(err)
	}
	db, err := bento.Open(cfg)
	if err != nil {
		log.Fatal(err)
	}
	return db, ent.NewClient(ent.Driver(db.Driver()))
}

// Each HTTP request is a read-your-writes session, as bento serve does it:
// after the request's unit of work commits, its reads go to the primary or
// to a replica that has replayed the commit. (This example needs a server
// and replicas, so it is compiled but not run.)
func ExampleWithSession() {
	db, client := openFromEnvironment()
	defer db.Close()
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
	log.Fatal(http.ListenAndServe("127.0.0.1:8080", sessions))
}

// UsePrimary sends a context's reads to the primary, whatever the
// replicas' state: for a read that must see every committed write, such
// as the check before charging a customer. (Compiled, not run.)
func ExampleUsePrimary() {
	db, client := openFromEnvironment()
	defer db.Close()
	ctx := context.Background()

	o, err := client.Order.Get(replica.UsePrimary(ctx), 42)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(o.Status)
}

// States reports each replica as bento info --json does. (Compiled, not
// run.)
func ExampleRouter_States() {
	db, _ := openFromEnvironment()
	defer db.Close()
	r := db.Replicas() // nil without DB_REPLICA_URLS
	if r == nil {
		fmt.Println("no replicas configured")
		return
	}
	r.CheckNow(context.Background())
	for _, st := range r.States() {
		fmt.Printf("%s healthy=%t in_recovery=%t lag=%s replay_lsn=%s %s\n",
			st.Name, st.Healthy, st.InRecovery, st.Lag, st.ReplayLSN, st.Reason)
	}
	json.NewEncoder(os.Stdout).Encode(r.States())
}
