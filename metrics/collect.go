package metrics

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bento-go/bento/driver"
	"github.com/bento-go/bento/outbox"
)

// WatchPool exports the pool's statistics under its role (primary,
// replica-N): connections open/in use/idle, the limit, waits and timeouts.
// Call it once per pool (the primary and each replica); the pools' roles
// must differ. Watching the same pool again does nothing.
func (m *Metrics) WatchPool(p *driver.Pool) {
	m.poolsMu.Lock()
	defer m.poolsMu.Unlock()
	if m.pools == nil {
		// One collector for every pool: a collector per pool would
		// describe the same metrics twice, which the registry refuses.
		m.pools = &poolCollector{}
		m.reg.MustRegister(m.pools)
	}
	m.pools.add(p)
}

var (
	poolConns    = prometheus.NewDesc(Namespace+"_pool_connections", "Connections of the pool by state (open, in_use, idle).", []string{"role", "state"}, nil)
	poolMax      = prometheus.NewDesc(Namespace+"_pool_max_open", "Connection limit of the pool.", []string{"role"}, nil)
	poolBusy     = prometheus.NewDesc(Namespace+"_pool_busy", "Units of work holding a connection slot.", []string{"role"}, nil)
	poolWaits    = prometheus.NewDesc(Namespace+"_pool_waits_total", "Units of work that waited for a connection.", []string{"role"}, nil)
	poolWaitTime = prometheus.NewDesc(Namespace+"_pool_wait_seconds_total", "Time spent waiting for a connection.", []string{"role"}, nil)
	poolTimeouts = prometheus.NewDesc(Namespace+"_pool_timeouts_total", "Waits that ended in a pool timeout.", []string{"role"}, nil)
	poolClosed   = prometheus.NewDesc(Namespace+"_pool_closed_total", "Connections the pool closed, by reason (idle, lifetime).", []string{"role", "reason"}, nil)
)

type poolCollector struct {
	mu    sync.Mutex
	pools []*driver.Pool
}

func (c *poolCollector) add(p *driver.Pool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !slices.Contains(c.pools, p) {
		c.pools = append(c.pools, p)
	}
}

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{poolConns, poolMax, poolBusy, poolWaits, poolWaitTime, poolTimeouts, poolClosed} {
		ch <- d
	}
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	pools := slices.Clone(c.pools)
	c.mu.Unlock()
	for _, p := range pools {
		collectPool(ch, p.Stats())
	}
}

func collectPool(ch chan<- prometheus.Metric, s driver.PoolStats) {
	r := s.Role
	ch <- prometheus.MustNewConstMetric(poolConns, prometheus.GaugeValue, float64(s.Open), r, "open")
	ch <- prometheus.MustNewConstMetric(poolConns, prometheus.GaugeValue, float64(s.InUse), r, "in_use")
	ch <- prometheus.MustNewConstMetric(poolConns, prometheus.GaugeValue, float64(s.Idle), r, "idle")
	ch <- prometheus.MustNewConstMetric(poolMax, prometheus.GaugeValue, float64(s.MaxOpen), r)
	ch <- prometheus.MustNewConstMetric(poolBusy, prometheus.GaugeValue, float64(s.Busy), r)
	ch <- prometheus.MustNewConstMetric(poolWaits, prometheus.CounterValue, float64(s.Waits), r)
	ch <- prometheus.MustNewConstMetric(poolWaitTime, prometheus.CounterValue, s.WaitTime.Seconds(), r)
	ch <- prometheus.MustNewConstMetric(poolTimeouts, prometheus.CounterValue, float64(s.Timeouts), r)
	ch <- prometheus.MustNewConstMetric(poolClosed, prometheus.CounterValue, float64(s.ClosedIdle), r, "idle")
	ch <- prometheus.MustNewConstMetric(poolClosed, prometheus.CounterValue, float64(s.ClosedLifetime), r, "lifetime")
}

// WatchOutbox exports the outbox backlog, read from the database at each
// scrape (bounded by timeout): pending events, the age of the oldest, dead
// letters.
func (m *Metrics) WatchOutbox(drv *driver.Driver, names outbox.Names, timeout time.Duration) {
	if timeout <= 0 {
		timeout = 2 * time.Second
	}
	m.reg.MustRegister(&outboxCollector{drv: drv, names: names, timeout: timeout})
}

var (
	outboxPending = prometheus.NewDesc(Namespace+"_outbox_pending", "Outbox events waiting to be published.", nil, nil)
	outboxOldest  = prometheus.NewDesc(Namespace+"_outbox_oldest_pending_age_seconds", "Age of the oldest pending outbox event (0 when none).", nil, nil)
	outboxDead    = prometheus.NewDesc(Namespace+"_outbox_dead_letters", "Dead-lettered outbox events awaiting a requeue.", nil, nil)
	outboxUp      = prometheus.NewDesc(Namespace+"_outbox_stats_up", "1 if the outbox backlog could be read at this scrape.", nil, nil)
)

type outboxCollector struct {
	drv     *driver.Driver
	names   outbox.Names
	timeout time.Duration
}

func (c *outboxCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- outboxPending
	ch <- outboxOldest
	ch <- outboxDead
	ch <- outboxUp
}

func (c *outboxCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	st, err := outbox.ReadStats(ctx, c.drv, c.names)
	if err != nil {
		ch <- prometheus.MustNewConstMetric(outboxUp, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(outboxUp, prometheus.GaugeValue, 1)
	ch <- prometheus.MustNewConstMetric(outboxPending, prometheus.GaugeValue, float64(st.Pending))
	ch <- prometheus.MustNewConstMetric(outboxOldest, prometheus.GaugeValue, st.OldestAge.Seconds())
	ch <- prometheus.MustNewConstMetric(outboxDead, prometheus.GaugeValue, float64(st.Dead))
}
