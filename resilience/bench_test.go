package resilience_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	bentodriver "github.com/bento-go/bento/driver"
	"github.com/bento-go/bento/resilience"
)

var sinkErr error
var sinkCat resilience.Category

// The success path of Policy.Do must cost nothing: the backoff is built
// only after a failure.
func BenchmarkPolicyDoSuccess(b *testing.B) {
	p := resilience.DefaultPolicy()
	ctx := context.Background()
	op := func(context.Context) error { return nil }
	b.ReportAllocs()
	for b.Loop() {
		sinkErr = p.Do(ctx, op)
	}
	if sinkErr != nil {
		b.Fatal(sinkErr)
	}
}

func TestSuccessPathAllocs(t *testing.T) {
	p := resilience.DefaultPolicy()
	ctx := context.Background()
	op := func(context.Context) error { return nil }
	var err error
	if allocs := testing.AllocsPerRun(1000, func() { err = p.Do(ctx, op) }); allocs != 0 {
		t.Errorf("Policy.Do on success allocates %v times per call, want 0", allocs)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// middlewareSuccess is the resilience statement handler over a next
// handler that always succeeds.
func middlewareSuccess() bentodriver.StatementHandler {
	return resilience.Middleware(resilience.Options{}).Statement(func(context.Context, bentodriver.Statement) error { return nil })
}

// The middleware must add nothing to a statement that succeeds.
func BenchmarkMiddlewareSuccess(b *testing.B) {
	h := middlewareSuccess()
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		sinkErr = h(ctx, bentodriver.Statement{Kind: bentodriver.Query, Query: "SELECT 1"})
	}
	if sinkErr != nil {
		b.Fatal(sinkErr)
	}
}

func TestMiddlewareSuccessAllocs(t *testing.T) {
	h := middlewareSuccess()
	ctx := context.Background()
	var err error
	allocs := testing.AllocsPerRun(1000, func() {
		err = h(ctx, bentodriver.Statement{Kind: bentodriver.Query, Query: "SELECT 1"})
	})
	if allocs != 0 {
		t.Errorf("the resilience middleware allocates %v times per successful statement, want 0", allocs)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// BenchmarkClassify measures Classify on a serialization failure as pgx
// returns it, wrapped once by a caller.
func BenchmarkClassify(b *testing.B) {
	err := fmt.Errorf("transfer: %w", &pgconn.PgError{Severity: "ERROR", Code: "40001",
		Message: "could not serialize access due to read/write dependencies among transactions"})
	b.ReportAllocs()
	for b.Loop() {
		sinkCat = resilience.Classify(err)
	}
	if sinkCat != resilience.Transient {
		b.Fatalf("Classify = %v, want transient", sinkCat)
	}
}
