package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bento-go/bento/consumer"
	"github.com/bento-go/bento/resilience"
)

// Inbox holds the event consumer's collectors (bento_inbox_*). It
// implements consumer.Observer; its methods are safe for concurrent use.
//
//	im := metrics.NewInbox(reg)
//	c, _ := consumer.New(uow, js, handlers, consumer.Config{Name: "billing", Observer: im})
type Inbox struct {
	processed  prometheus.Counter
	duplicates prometheus.Counter
	deferred   prometheus.Counter
	failures   *prometheus.CounterVec
	dead       prometheus.Counter
	duration   *prometheus.HistogramVec
	lag        prometheus.Gauge
}

var _ consumer.Observer = (*Inbox)(nil)

// NewInbox creates the consumer's collectors and registers them on reg.
// One process registers them once, whatever the number of consumers.
func NewInbox(reg prometheus.Registerer) *Inbox {
	fast := []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}
	m := &Inbox{
		processed: prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Subsystem: "inbox", Name: "processed_total",
			Help: "Events applied, committed and acknowledged."}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Subsystem: "inbox", Name: "duplicates_skipped_total",
			Help: "Events delivered again after they were applied: acknowledged and skipped."}),
		deferred: prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Subsystem: "inbox", Name: "deferred_total",
			Help: "Events put back because their aggregate's previous event was not applied yet."}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Subsystem: "inbox", Name: "failures_total",
			Help: "Failed handlings by error category and outcome (retry or dead)."}, []string{"category", "outcome"}),
		dead: prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Subsystem: "inbox", Name: "dead_lettered_total",
			Help: "Events dead-lettered (permanent failures and those past INBOX_MAX_DELIVER)."}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: Namespace, Subsystem: "inbox", Name: "handler_duration_seconds",
			Help: "Units of work of applied events (order check, inbox, handler, commit), by event type.", Buckets: fast}, []string{"type"}),
		lag: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: Namespace, Subsystem: "inbox", Name: "lag",
			Help: "Events of the consumer's stream not yet delivered to it (JetStream's pending count at the last delivery)."}),
	}
	reg.MustRegister(m.processed, m.duplicates, m.deferred, m.failures, m.dead, m.duration, m.lag)
	for _, c := range resilience.Categories() {
		m.failures.WithLabelValues(c.String(), "retry")
		m.failures.WithLabelValues(c.String(), "dead")
	}
	return m
}

// Processed implements consumer.Observer.
func (m *Inbox) Processed(eventType string, took time.Duration) {
	m.processed.Inc()
	m.duration.WithLabelValues(eventType).Observe(took.Seconds())
}

// Duplicate implements consumer.Observer.
func (m *Inbox) Duplicate() { m.duplicates.Inc() }

// Deferred implements consumer.Observer.
func (m *Inbox) Deferred() { m.deferred.Inc() }

// Failed implements consumer.Observer.
func (m *Inbox) Failed(category resilience.Category, dead bool) {
	outcome := "retry"
	if dead {
		outcome = "dead"
		m.dead.Inc()
	}
	m.failures.WithLabelValues(category.String(), outcome).Inc()
}

// Lag implements consumer.Observer.
func (m *Inbox) Lag(pending uint64) { m.lag.Set(float64(pending)) }
