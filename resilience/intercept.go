package resilience

import (
	"context"

	"entgo.io/ent"

	bentodriver "github.com/bento-go/bento/driver"
)

// ReadRetry returns an ent interceptor that retries a whole ent query —
// rows scanning included — when it failed with a retryable error and every
// statement it ran was a read outside a transaction. The driver middleware
// already retries a read whose statement fails; this covers a connection
// lost while the rows were being read, which surfaces only once the
// statement has returned. Register it on the client:
//
//	client.Intercept(resilience.ReadRetry(policy))
//
// Queries inside a transaction are never retried here: the unit of work is
// the retry unit.
func ReadRetry(p Policy) ent.Interceptor {
	if p.MaxAttempts == 0 {
		p = DefaultPolicy()
	}
	return ent.InterceptFunc(func(next ent.Querier) ent.Querier {
		return ent.QuerierFunc(func(ctx context.Context, q ent.Query) (ent.Value, error) {
			var probe bentodriver.Probe
			v, err := next.Query(bentodriver.WithProbe(ctx, &probe), q)
			if err == nil || retryDisabled(ctx) {
				return v, err
			}
			safe := func(err error) bool {
				return probe.Statements > 0 && !probe.InTx && !probe.Writes && IsRetryable(err)
			}
			p.Retryable = safe
			err = p.retry(ctx, err, func(ctx context.Context) error {
				probe = bentodriver.Probe{}
				v, err = next.Query(bentodriver.WithProbe(ctx, &probe), q)
				return err
			})
			if err != nil {
				return nil, err
			}
			return v, nil
		})
	})
}
