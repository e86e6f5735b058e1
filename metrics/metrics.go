// Package metrics exports Bento's Prometheus metrics: pool statistics per
// database role, statement and transaction durations by outcome, retries by
// category, ambiguous commits and their resolution, units of work, the
// outbox backlog and relay, replica routing, and drains. Everything is
// registered on the registry the caller passes in, never on the global
// default, and label values are bounded (no SQL text, no ids).
//
//	reg := prometheus.NewRegistry()
//	m := metrics.New(reg)
//	db, _ := bento.Open(cfg, bento.WithMiddleware(m.Middleware()),
//		bento.WithResilience(resilience.Options{OnRetry: m.Retry, OnAmbiguous: m.Ambiguous}))
//	m.WatchPool(db.Pool())
package metrics

import (
	"context"
	"database/sql"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bento-go/bento/drain"
	"github.com/bento-go/bento/driver"
	"github.com/bento-go/bento/outbox"
	"github.com/bento-go/bento/resilience"
)

// Namespace prefixes every metric.
const Namespace = "bento"

// Metrics holds Bento's collectors. Its methods are the hooks the layers
// take; all are safe for concurrent use.
type Metrics struct {
	reg prometheus.Registerer

	statements   *prometheus.HistogramVec
	transactions *prometheus.HistogramVec
	retries      *prometheus.CounterVec
	ambiguous    *prometheus.CounterVec
	units        *prometheus.CounterVec
	unitDuration *prometheus.HistogramVec
	unitAttempts prometheus.Histogram

	published   prometheus.Counter
	failed      prometheus.Counter
	dead        prometheus.Counter
	batch       prometheus.Histogram
	publish     prometheus.Histogram
	toPublished prometheus.Histogram

	routed      *prometheus.CounterVec
	fallbacks   *prometheus.CounterVec
	replicaUp   *prometheus.GaugeVec
	replicaLag  *prometheus.GaugeVec
	drainState  prometheus.Gauge
	drainTook   prometheus.Gauge
	drainReject prometheus.Gauge

	poolsMu sync.Mutex
	pools   *poolCollector // every pool WatchPool was given

	// pre-resolved hot-path observers
	okExec, okQuery prometheus.Observer
	txCommit        prometheus.Observer // transactions{outcome="commit"}
	unitCommitted   prometheus.Counter  // units{outcome="committed"}
	unitCommitTook  prometheus.Observer // unitDuration{outcome="committed"}
}

// New creates the collectors and registers them on reg.
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{reg: reg}
	fast := []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}
	m.statements = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: Namespace, Name: "statement_duration_seconds",
		Help: "Statements through the driver (retries included), by kind (exec, query) and outcome (ok or the error category).", Buckets: fast},
		[]string{"op", "outcome"})
	m.transactions = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: Namespace, Name: "transaction_duration_seconds",
		Help: "Transactions from BEGIN to their end, by outcome (commit, rollback, or the commit error's category).", Buckets: fast},
		[]string{"outcome"})
	m.retries = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "retries_total",
		Help: "Retries by operation (exec, query, begin, unit_of_work) and the category of the error retried."}, []string{"op", "category"})
	m.ambiguous = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "ambiguous_commits_total",
		Help: "COMMITs whose reply was lost, by resolution (committed, aborted, unknown)."}, []string{"resolution"})
	m.units = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "units_of_work_total",
		Help: "Units of work by outcome (committed, replayed, failed, panicked)."}, []string{"outcome"})
	m.unitDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: Namespace, Name: "unit_of_work_duration_seconds",
		Help: "Units of work, retries included, by outcome.", Buckets: fast}, []string{"outcome"})
	m.unitAttempts = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: Namespace, Name: "unit_of_work_attempts",
		Help: "Transactions tried per unit of work.", Buckets: []float64{1, 2, 3, 5, 8, 13}})
	m.published = prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Subsystem: "outbox", Name: "published_total",
		Help: "Outbox events the broker acknowledged."})
	m.failed = prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Subsystem: "outbox", Name: "failed_total",
		Help: "Failed publish attempts that will be retried."})
	m.dead = prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Subsystem: "outbox", Name: "dead_lettered_total",
		Help: "Outbox events dead-lettered after their last attempt."})
	m.batch = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: Namespace, Subsystem: "outbox", Name: "relay_batch_duration_seconds",
		Help: "Relay batches: claim, publish, mark.", Buckets: fast})
	m.publish = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: Namespace, Subsystem: "outbox", Name: "publish_duration_seconds",
		Help: "Relay batches' publish: from handing the batch to the publisher to its last acknowledgement or failure.", Buckets: fast})
	m.toPublished = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: Namespace, Subsystem: "outbox", Name: "commit_to_published_seconds",
		Help: "From an event's recording to the broker's acknowledgement.", Buckets: fast})
	m.routed = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Subsystem: "replica", Name: "routed_total",
		Help: "Statements outside transactions by target (primary, replica) and reason."}, []string{"target", "reason"})
	m.fallbacks = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Subsystem: "replica", Name: "fallbacks_total",
		Help: "Reads sent to the primary or another replica instead of the chosen one, by reason."}, []string{"reason"})
	m.replicaUp = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: Namespace, Subsystem: "replica", Name: "healthy",
		Help: "1 while a replica takes reads."}, []string{"replica"})
	m.replicaLag = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: Namespace, Subsystem: "replica", Name: "lag_seconds",
		Help: "Replay lag of a replica at its last check."}, []string{"replica"})
	m.drainState = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: Namespace, Subsystem: "drain", Name: "state",
		Help: "0 serving, 1 draining, 2 closed."})
	m.drainTook = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: Namespace, Subsystem: "drain", Name: "duration_seconds",
		Help: "Duration of the last drain."})
	m.drainReject = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: Namespace, Subsystem: "drain", Name: "rejected",
		Help: "Work refused by the last drain."})
	reg.MustRegister(m.statements, m.transactions, m.retries, m.ambiguous, m.units, m.unitDuration, m.unitAttempts,
		m.published, m.failed, m.dead, m.batch, m.publish, m.toPublished, m.routed, m.fallbacks, m.replicaUp, m.replicaLag,
		m.drainState, m.drainTook, m.drainReject)
	m.okExec = m.statements.WithLabelValues("exec", "ok")
	m.okQuery = m.statements.WithLabelValues("query", "ok")
	m.txCommit = m.transactions.WithLabelValues("commit")
	m.unitCommitted = m.units.WithLabelValues("committed")
	m.unitCommitTook = m.unitDuration.WithLabelValues("committed")
	for _, c := range resilience.Categories() {
		m.retries.WithLabelValues("unit_of_work", c.String())
	}
	for _, o := range []string{"committed", "aborted", "unknown"} {
		m.ambiguous.WithLabelValues(o)
	}
	for _, o := range []string{"committed", "replayed", "failed", "panicked"} {
		m.units.WithLabelValues(o)
	}
	return m
}

type txStart struct{}

// Middleware times statements and transactions. Put it right after the
// drain middleware, so that it sees retries as part of one statement.
func (m *Metrics) Middleware() driver.Middleware {
	return driver.Middleware{
		Name: "metrics",
		Statement: func(next driver.StatementHandler) driver.StatementHandler {
			return func(ctx context.Context, st driver.Statement) error {
				start := time.Now()
				err := next(ctx, st)
				d := time.Since(start).Seconds()
				switch {
				case err != nil:
					m.statements.WithLabelValues(st.Kind.String(), resilience.Classify(err).String()).Observe(d)
				case st.Kind == driver.Query:
					m.okQuery.Observe(d)
				default:
					m.okExec.Observe(d)
				}
				return err
			}
		},
		Begin: func(next driver.BeginHandler) driver.BeginHandler {
			return func(ctx context.Context, opts *sql.TxOptions) (*driver.Tx, error) {
				start := time.Now()
				tx, err := next(ctx, opts)
				if err != nil {
					m.transactions.WithLabelValues("begin_" + resilience.Classify(err).String()).Observe(time.Since(start).Seconds())
					return nil, err
				}
				tx.SetValue(txStart{}, start)
				return tx, nil
			}
		},
		End: func(next driver.EndHandler) driver.EndHandler {
			return func(ctx context.Context, tx *driver.Tx, commit bool) error {
				err := next(ctx, tx, commit)
				start, ok := tx.Value(txStart{}).(time.Time)
				if !ok {
					return err
				}
				tx.SetValue(txStart{}, nil)
				took := time.Since(start).Seconds()
				switch {
				case err != nil:
					m.transactions.WithLabelValues(resilience.Classify(err).String()).Observe(took)
				case !commit:
					m.transactions.WithLabelValues("rollback").Observe(took)
				default:
					m.txCommit.Observe(took)
				}
				return err
			}
		},
	}
}

// Retry is the resilience.Options.OnRetry hook.
func (m *Metrics) Retry(op string, err error, _ int, _ time.Duration) {
	m.retries.WithLabelValues(op, resilience.Classify(err).String()).Inc()
}

// Ambiguous is the resilience.Options.OnAmbiguous hook.
func (m *Metrics) Ambiguous(o resilience.Outcome) {
	m.ambiguous.WithLabelValues(o.String()).Inc()
}

// UnitDone implements unitofwork.Observer.
func (m *Metrics) UnitDone(outcome string, attempts int, took time.Duration, err error) {
	if outcome == "committed" {
		m.unitCommitted.Inc()
		m.unitCommitTook.Observe(took.Seconds())
	} else {
		m.units.WithLabelValues(outcome).Inc()
		m.unitDuration.WithLabelValues(outcome).Observe(took.Seconds())
	}
	m.unitAttempts.Observe(float64(attempts))
}

// UnitRetry counts a retry of a whole unit of work (unitofwork.Retry's
// OnRetry).
func (m *Metrics) UnitRetry(err error, _ int, _ time.Duration) {
	m.retries.WithLabelValues("unit_of_work", resilience.Classify(err).String()).Inc()
}

// Batch implements outbox.RelayObserver.
func (m *Metrics) Batch(claimed, published, failed, dead int, took time.Duration) {
	m.published.Add(float64(published))
	m.failed.Add(float64(failed))
	m.dead.Add(float64(dead))
	m.batch.Observe(took.Seconds())
}

var (
	_ outbox.RelayObserver   = (*Metrics)(nil)
	_ outbox.PublishObserver = (*Metrics)(nil)
)

// Publish implements outbox.PublishObserver.
func (m *Metrics) Publish(_ int, took time.Duration) {
	m.publish.Observe(took.Seconds())
}

// Published implements outbox.RelayObserver.
func (m *Metrics) Published(msg outbox.Message, at time.Time) {
	if !msg.OccurredAt.IsZero() {
		m.toPublished.Observe(at.Sub(msg.OccurredAt).Seconds())
	}
}

// Routed counts a statement outside a transaction routed to target
// ("primary" or "replica") for reason, a bounded word: "read", "write",
// "forced", "read_your_writes", "no_healthy_replica" (package replica).
// Statements in transactions always go to the primary and are not counted.
func (m *Metrics) Routed(target, reason string) { m.routed.WithLabelValues(target, reason).Inc() }

// Fallback counts a read that left its first target, for reason.
func (m *Metrics) Fallback(reason string) { m.fallbacks.WithLabelValues(reason).Inc() }

// ReplicaState records a replica's health and lag.
func (m *Metrics) ReplicaState(replica string, healthy bool, lag time.Duration) {
	v := 0.0
	if healthy {
		v = 1
	}
	m.replicaUp.WithLabelValues(replica).Set(v)
	m.replicaLag.WithLabelValues(replica).Set(lag.Seconds())
}

// State implements drain.Observer.
func (m *Metrics) State(state string) {
	switch state {
	case "draining":
		m.drainState.Set(1)
	case "closed":
		m.drainState.Set(2)
	}
}

// Drained implements drain.Observer.
func (m *Metrics) Drained(st drain.Stats) {
	m.drainTook.Set(st.Took.Seconds())
	m.drainReject.Set(float64(st.Rejected))
}
