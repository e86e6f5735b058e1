package metrics_test

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bento-go/bento/metrics"
	"github.com/bento-go/bento/resilience"
)

// TestInbox: each consumer.Observer hook moves its own bento_inbox_*
// series, and the failure series exist before the first failure.
func TestInbox(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := metrics.NewInbox(reg)
	expect(t, reg, "bento_inbox_failures_total", labels{"category", "transient", "outcome", "retry"}, 0)
	m.Processed("OrderPlaced", 3*time.Millisecond)
	m.Processed("OrderPlaced", 5*time.Millisecond)
	m.Processed("OrderPaid", time.Millisecond)
	m.Duplicate()
	m.Deferred()
	m.Deferred()
	m.Failed(resilience.Transient, false)
	m.Failed(resilience.Permanent, true)
	m.Lag(42)
	expect(t, reg, "bento_inbox_processed_total", nil, 3)
	expect(t, reg, "bento_inbox_handler_duration_seconds", labels{"type", "OrderPlaced"}, 2)
	if s := sum(t, reg, "bento_inbox_handler_duration_seconds", labels{"type", "OrderPlaced"}); !near(s, 0.008) {
		t.Errorf("OrderPlaced handler duration sum = %v, want 0.008", s)
	}
	expect(t, reg, "bento_inbox_duplicates_skipped_total", nil, 1)
	expect(t, reg, "bento_inbox_deferred_total", nil, 2)
	expect(t, reg, "bento_inbox_failures_total", labels{"category", "transient", "outcome", "retry"}, 1)
	expect(t, reg, "bento_inbox_failures_total", labels{"category", "permanent", "outcome", "dead"}, 1)
	expect(t, reg, "bento_inbox_dead_lettered_total", nil, 1)
	expect(t, reg, "bento_inbox_lag", nil, 42)
}
