package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/knadh/koanf/parsers/yaml"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/bento-go/bento/internal/testdb"
	"github.com/bento-go/bento/metrics"
)

// The files of deploy/: the Grafana dashboard and the Prometheus alerting
// rules with their promtool unit tests (scripts/promtool.sh runs promtool
// on them). The runbooks are in docs/observability.md.
var (
	deployDashboard  = filepath.Join("..", "..", "deploy", "grafana", "bento.json")
	deployAlerts     = filepath.Join("..", "..", "deploy", "prometheus", "alerts.yml")
	deployAlertTests = filepath.Join("..", "..", "deploy", "prometheus", "alerts_test.yml")
	deployRunbooks   = filepath.Join("..", "..", "docs", "observability.md")
)

// runbookBase is where every alert's runbook_url points, followed by the
// anchor of the alert's heading in docs/observability.md.
const runbookBase = "https://github.com/bento-go/bento/blob/main/docs/observability.md#"

// eventOnlyMetrics are series a healthy `bento serve` does not export until
// a rare event happens, which TestDeployedMetricsExist does not provoke:
// each is checked on a registry of its own instead, after calling the hook
// that creates it.
var eventOnlyMetrics = map[string]func(m *metrics.Metrics){
	// A read failing on a replica with a connection error.
	"bento_replica_fallbacks_total": func(m *metrics.Metrics) { m.Fallback("replica_error") },
}

// TestDeployedMetricsExist checks that every bento_* series the Grafana
// dashboard (panels and variables) and the alerting rules name is one
// Bento exports: it starts the real `bento serve` on PostgreSQL with the
// streaming replica (scripts/replica.sh) as DB_REPLICA_URLS, so that the
// replica series exist too, places orders and reads them back (so the
// relay publishes and reads are routed), scrapes /metrics and looks every
// name up, a histogram's _bucket, _sum and _count included. The series
// only a rare event creates (eventOnlyMetrics) are checked on the
// registry. The check is also run on a misspelled name, which it must
// report.
func TestDeployedMetricsExist(t *testing.T) {
	t.Parallel()
	refs := deployedMetricNames(t)
	if len(refs) < 30 {
		t.Fatalf("the dashboard and the rules name %d bento_* series, want at least 30: is the extraction broken?\n%v", len(refs), refs)
	}

	dbURL := testdb.URL(t, testdb.Postgres)
	replicaURL := deployReplicaURL(t, dbURL)
	bin := mxBuild(t)
	srv := mxStart(t, bin, []string{
		"DB_URL=" + dbURL,
		"DB_REPLICA_URLS=" + replicaURL,
		"DB_REPLICA_CHECK_INTERVAL=100ms",
		"OUTBOX_PUBLISHER=log",
	})
	const n = 3
	for i := range n {
		body := fmt.Sprintf(`{"customer": "deploy-%d@example.com", "lines": [{"sku": "DEPLOY-%d", "quantity": 1, "unit_price_cents": 500}]}`, i, i)
		status, resp := srv.post(t, "/orders", body)
		if status != http.StatusCreated {
			t.Fatalf("POST /orders: %d %s", status, resp)
		}
		var o struct{ ID int }
		if err := json.Unmarshal(resp, &o); err != nil {
			t.Fatalf("POST /orders answered %s: %v", resp, err)
		}
		// Each request is a session of its own: the read may go to the
		// replica before it replayed the order (or, right after start,
		// the schema), so it is repeated until the replica has caught up.
		deadline := time.Now().Add(15 * time.Second)
		for {
			status, resp, err := srv.do(http.MethodGet, fmt.Sprintf("/orders/%d", o.ID), "")
			if err == nil && status == http.StatusOK {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("GET /orders/%d: %d %s %v\n%s", o.ID, status, resp, err, srv.stderr.tail())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	scrape := srv.waitFor(t, 30*time.Second, "the relay to publish and the replica series to appear", func(s mxScrape) bool {
		pending, _ := s.get("bento_outbox_pending")
		published, _ := s.get("bento_outbox_published_total")
		_, healthy := s.get("bento_replica_healthy", "replica", "replica-1")
		return published >= n && pending == 0 && healthy && s["bento_replica_routed_total"] != nil
	})

	exported := exportedNames(scrape)
	for name, hook := range eventOnlyMetrics {
		if exported[name] {
			continue
		}
		reg := prometheus.NewRegistry()
		hook(metrics.New(reg))
		fams, err := reg.Gather()
		if err != nil {
			t.Fatalf("gathering the registry for %s: %v", name, err)
		}
		var found bool
		for n := range exportedNames(familiesByName(fams)) {
			found = found || n == name
		}
		if !found {
			t.Errorf("%s is not exported by package metrics even after its event", name)
		}
		exported[name] = true
	}

	missing := missingNames(refs, exported)
	for _, name := range missing {
		t.Errorf("%s is named by %s, and Bento does not export it", name, strings.Join(refs[name], ", "))
	}

	// The check itself: a misspelled name must be reported.
	typo := map[string][]string{"bento_outbox_pendng": {"a test"}, "bento_outbox_pending": {"a test"}}
	if got := missingNames(typo, exported); !slices.Equal(got, []string{"bento_outbox_pendng"}) {
		t.Errorf("missingNames with a misspelled name reported %v, want [bento_outbox_pendng]", got)
	}
	t.Logf("%d bento_* series named by the dashboard and the rules, %d of them not exported; %d exported in all", len(refs), len(missing), len(exported))
}

// deployReplicaURL returns dbURL on the streaming replica, once the
// replica serves that database.
func deployReplicaURL(t *testing.T, dbURL string) string {
	t.Helper()
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	port := os.Getenv("BENTO_REPLICA_PORT")
	if port == "" {
		port = "5433"
	}
	u.Host = "127.0.0.1:" + port
	rep := testdb.OpenRaw(t, u.String())
	deadline := time.Now().Add(15 * time.Second)
	for {
		var rec bool
		err := rep.QueryRow("SELECT pg_is_in_recovery()").Scan(&rec)
		if err == nil && rec {
			return u.String()
		}
		if time.Now().After(deadline) {
			t.Fatalf("the streaming replica on 127.0.0.1:%s does not serve the test database (%v, in recovery %t); run scripts/replica.sh", port, err, rec)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func familiesByName(fams []*dto.MetricFamily) mxScrape {
	s := mxScrape{}
	for _, f := range fams {
		s[f.GetName()] = f
	}
	return s
}

// exportedNames returns the series names a scrape holds, as PromQL names
// them: a histogram family F as F_bucket, F_sum and F_count, a summary as
// F, F_sum and F_count.
func exportedNames(s mxScrape) map[string]bool {
	names := map[string]bool{}
	for name, f := range s {
		switch f.GetType() {
		case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
			names[name+"_bucket"], names[name+"_sum"], names[name+"_count"] = true, true, true
		case dto.MetricType_SUMMARY:
			names[name], names[name+"_sum"], names[name+"_count"] = true, true, true
		default:
			names[name] = true
		}
	}
	return names
}

// missingNames returns the names of refs that are not exported, sorted.
func missingNames(refs map[string][]string, exported map[string]bool) []string {
	var missing []string
	for name := range refs {
		if !exported[name] {
			missing = append(missing, name)
		}
	}
	sort.Strings(missing)
	return missing
}

var (
	// promqlString is a string literal of PromQL: label values and
	// regular expressions, which may hold anything.
	promqlString = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|` + "`[^`]*`")
	bentoName    = regexp.MustCompile(`\bbento_[a-zA-Z0-9_]+\b`)
)

// seriesNames returns the bento_* metric names a PromQL expression names.
func seriesNames(expr string) []string {
	return bentoName.FindAllString(promqlString.ReplaceAllString(expr, `""`), -1)
}

// deployedMetricNames returns every bento_* name the dashboard's panels
// and variables and the alerting rules name, each with where it is named.
func deployedMetricNames(t *testing.T) map[string][]string {
	t.Helper()
	refs := map[string][]string{}
	add := func(where, expr string) {
		for _, n := range seriesNames(expr) {
			if !slices.Contains(refs[n], where) {
				refs[n] = append(refs[n], where)
			}
		}
	}
	d := readDashboard(t)
	for _, v := range d.Templating.List {
		add(fmt.Sprintf("dashboard variable %s", v.Name), v.Definition)
		if v.Query.Query != "" {
			add(fmt.Sprintf("dashboard variable %s", v.Name), v.Query.Query)
		}
	}
	for _, p := range d.allPanels() {
		for _, tg := range p.Targets {
			add(fmt.Sprintf("dashboard panel %q", p.Title), tg.Expr)
		}
	}
	for _, r := range readAlertRules(t) {
		add(fmt.Sprintf("alert %s", r.Alert), r.Expr)
	}
	return refs
}

// grafanaDashboard is the part of a Grafana dashboard the tests read.
type grafanaDashboard struct {
	UID           string         `json:"uid"`
	Title         string         `json:"title"`
	SchemaVersion int            `json:"schemaVersion"`
	Panels        []grafanaPanel `json:"panels"`
	Templating    struct {
		List []struct {
			Name       string             `json:"name"`
			Type       string             `json:"type"`
			Datasource *grafanaDatasource `json:"datasource"`
			Definition string             `json:"definition"`
			// Query is the data source type for a datasource variable,
			// an object for a query variable.
			Query grafanaVarQuery `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

type grafanaVarQuery struct {
	Query string `json:"query"`
}

func (q *grafanaVarQuery) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		return json.Unmarshal(b, &q.Query)
	}
	var o struct {
		Query string `json:"query"`
	}
	err := json.Unmarshal(b, &o)
	q.Query = o.Query
	return err
}

type grafanaDatasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type grafanaPanel struct {
	ID         int                      `json:"id"`
	Type       string                   `json:"type"`
	Title      string                   `json:"title"`
	Datasource *grafanaDatasource       `json:"datasource"`
	GridPos    struct{ H, W, X, Y int } `json:"gridPos"`
	Targets    []struct {
		RefID      string             `json:"refId"`
		Expr       string             `json:"expr"`
		Datasource *grafanaDatasource `json:"datasource"`
	} `json:"targets"`
	Panels []grafanaPanel `json:"panels"` // a collapsed row's
}

// allPanels returns the panels, those of collapsed rows included, without
// the rows.
func (d *grafanaDashboard) allPanels() []grafanaPanel {
	var out []grafanaPanel
	for _, p := range d.Panels {
		if p.Type == "row" {
			out = append(out, p.Panels...)
			continue
		}
		out = append(out, p)
	}
	return out
}

func readDashboard(t *testing.T) *grafanaDashboard {
	t.Helper()
	b, err := os.ReadFile(deployDashboard)
	if err != nil {
		t.Fatal(err)
	}
	var d grafanaDashboard
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("%s is not a dashboard: %v", deployDashboard, err)
	}
	return &d
}

// TestGrafanaDashboard checks the structure Grafana needs to import and
// render deploy/grafana/bento.json: a recent schema, a Prometheus data
// source variable that every panel and query uses, job and instance
// variables, panels with unique ids on the 24-column grid without
// overlapping, each with at least one query with an expression, and no
// variable an expression uses that the dashboard does not define.
func TestGrafanaDashboard(t *testing.T) {
	t.Parallel()
	d := readDashboard(t)
	if d.UID == "" || d.Title == "" {
		t.Errorf("uid %q, title %q: both are needed", d.UID, d.Title)
	}
	if d.SchemaVersion < 36 {
		t.Errorf("schemaVersion %d, want >= 36 (Grafana 9 and later)", d.SchemaVersion)
	}
	const dsUID = "${datasource}"
	vars := map[string]bool{}
	for _, v := range d.Templating.List {
		vars[v.Name] = true
		switch v.Name {
		case "datasource":
			if v.Type != "datasource" || v.Query.Query != "prometheus" {
				t.Errorf("variable datasource: type %q, query %q; want a datasource variable of type prometheus", v.Type, v.Query.Query)
			}
		case "job", "instance":
			if v.Type != "query" || v.Datasource == nil || v.Datasource.UID != dsUID || !strings.HasPrefix(v.Query.Query, "label_values(") {
				t.Errorf("variable %s: type %q, data source %+v, query %q; want a label_values query on %s", v.Name, v.Type, v.Datasource, v.Query.Query, dsUID)
			}
		}
	}
	for _, want := range []string{"datasource", "job", "instance"} {
		if !vars[want] {
			t.Errorf("no %s variable", want)
		}
	}
	builtin := map[string]bool{"__rate_interval": true, "__interval": true, "__range": true}
	varUse := regexp.MustCompile(`\$\{?([A-Za-z_][A-Za-z0-9_]*)`)
	ids := map[int]string{}
	type cell struct{ x, y int }
	taken := map[cell]string{}
	panels := 0
	for _, p := range d.Panels {
		if other, dup := ids[p.ID]; dup {
			t.Errorf("panels %q and %q share id %d", p.Title, other, p.ID)
		}
		ids[p.ID] = p.Title
		g := p.GridPos
		if g.W < 1 || g.H < 1 || g.X < 0 || g.Y < 0 || g.X+g.W > 24 {
			t.Errorf("panel %q: gridPos %+v is off the 24-column grid", p.Title, g)
		}
		overlapped := map[string]bool{}
		for x := g.X; x < g.X+g.W; x++ {
			for y := g.Y; y < g.Y+g.H; y++ {
				if other, ok := taken[cell{x, y}]; ok && !overlapped[other] {
					overlapped[other] = true
					t.Errorf("panel %q overlaps panel %q at (%d,%d)", p.Title, other, x, y)
				}
				taken[cell{x, y}] = p.Title
			}
		}
		if p.Type == "row" {
			continue
		}
		panels++
		if p.Type != "timeseries" && p.Type != "stat" {
			t.Errorf("panel %q has type %q, want timeseries or stat (the dashboard declares only those)", p.Title, p.Type)
		}
		if p.Title == "" {
			t.Errorf("panel %d has no title", p.ID)
		}
		if p.Datasource == nil || p.Datasource.Type != "prometheus" || p.Datasource.UID != dsUID {
			t.Errorf("panel %q: data source %+v, want prometheus %s", p.Title, p.Datasource, dsUID)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		refIDs := map[string]bool{}
		for _, tg := range p.Targets {
			if strings.TrimSpace(tg.Expr) == "" || tg.RefID == "" || refIDs[tg.RefID] {
				t.Errorf("panel %q: query %q has an empty expression or a missing or repeated refId", p.Title, tg.RefID)
			}
			refIDs[tg.RefID] = true
			if tg.Datasource == nil || tg.Datasource.UID != dsUID {
				t.Errorf("panel %q, query %s: data source %+v, want %s", p.Title, tg.RefID, tg.Datasource, dsUID)
			}
			if len(seriesNames(tg.Expr)) == 0 {
				t.Errorf("panel %q, query %s names no bento_* series: %s", p.Title, tg.RefID, tg.Expr)
			}
			for _, m := range varUse.FindAllStringSubmatch(tg.Expr, -1) {
				if !vars[m[1]] && !builtin[m[1]] {
					t.Errorf("panel %q, query %s uses $%s, which the dashboard does not define", p.Title, tg.RefID, m[1])
				}
			}
		}
	}
	if panels < 20 {
		t.Errorf("%d panels, want the 20 and more that cover units of work, statements, retries, pools, outbox, relay, replicas and drain", panels)
	}
}

// alertRule is one rule of deploy/prometheus/alerts.yml.
type alertRule struct {
	Alert       string            `json:"alert"`
	Expr        string            `json:"expr"`
	For         string            `json:"for"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
}

// readYAML decodes a YAML file into v through JSON, with the YAML parser
// Bento's configuration already uses.
func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	m, err := yaml.Parser().Unmarshal(b)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	j, err := json.Marshal(m)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if err := json.Unmarshal(j, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func readAlertRules(t *testing.T) []alertRule {
	t.Helper()
	var f struct {
		Groups []struct {
			Name  string      `json:"name"`
			Rules []alertRule `json:"rules"`
		} `json:"groups"`
	}
	readYAML(t, deployAlerts, &f)
	var rules []alertRule
	for _, g := range f.Groups {
		rules = append(rules, g.Rules...)
	}
	return rules
}

// githubAnchor is the anchor GitHub gives a Markdown heading.
func githubAnchor(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(heading)) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '_':
			b.WriteRune(r)
		case r == ' ':
			b.WriteRune('-')
		}
	}
	return b.String()
}

// TestAlertRules checks what promtool does not: every rule is an alert
// with a severity, a summary, a description and a runbook_url leading to
// a heading of docs/observability.md's "Alerts and runbooks" section;
// every runbook there belongs to an alert; and alerts_test.yml makes every
// alert fire at least once.
func TestAlertRules(t *testing.T) {
	t.Parallel()
	rules := readAlertRules(t)
	if len(rules) < 10 {
		t.Fatalf("%d rules in %s, want at least 10", len(rules), deployAlerts)
	}
	doc, err := os.ReadFile(deployRunbooks)
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(doc), "\n## Alerts and runbooks\n")
	if !ok {
		t.Fatalf("%s has no section \"## Alerts and runbooks\"", deployRunbooks)
	}
	if i := strings.Index(section, "\n## "); i >= 0 {
		section = section[:i]
	}
	runbooks := map[string]bool{}
	for _, line := range strings.Split(section, "\n") {
		if h, ok := strings.CutPrefix(line, "### "); ok {
			runbooks[githubAnchor(h)] = true
		}
	}

	var tests struct {
		Tests []struct {
			Name          string `json:"name"`
			AlertRuleTest []struct {
				Alertname string `json:"alertname"`
				ExpAlerts []any  `json:"exp_alerts"`
			} `json:"alert_rule_test"`
		} `json:"tests"`
	}
	readYAML(t, deployAlertTests, &tests)
	fired := map[string]bool{}
	for _, tc := range tests.Tests {
		for _, a := range tc.AlertRuleTest {
			fired[a.Alertname] = fired[a.Alertname] || len(a.ExpAlerts) > 0
		}
	}

	names := map[string]bool{}
	for _, r := range rules {
		if r.Alert == "" || strings.TrimSpace(r.Expr) == "" {
			t.Errorf("rule %+v: want an alert with an expression (recording rules belong elsewhere)", r)
			continue
		}
		if names[r.Alert] {
			t.Errorf("alert %s is defined twice", r.Alert)
		}
		names[r.Alert] = true
		if s := r.Labels["severity"]; s != "info" && s != "warning" && s != "critical" {
			t.Errorf("alert %s: severity %q, want info, warning or critical", r.Alert, s)
		}
		for _, a := range []string{"summary", "description"} {
			if r.Annotations[a] == "" {
				t.Errorf("alert %s has no %s annotation", r.Alert, a)
			}
		}
		anchor, ok := strings.CutPrefix(r.Annotations["runbook_url"], runbookBase)
		if !ok || !runbooks[anchor] {
			t.Errorf("alert %s: runbook_url %q, want %s<anchor of a heading of \"Alerts and runbooks\"> (headings: %v)", r.Alert, r.Annotations["runbook_url"], runbookBase, runbooks)
		}
		if anchor != githubAnchor(r.Alert) {
			t.Errorf("alert %s: runbook anchor %q, want %q (the runbook's heading is the alert's name)", r.Alert, anchor, githubAnchor(r.Alert))
		}
		if !fired[r.Alert] {
			t.Errorf("alert %s never fires in %s", r.Alert, deployAlertTests)
		}
	}
	for anchor := range runbooks {
		found := false
		for n := range names {
			found = found || githubAnchor(n) == anchor
		}
		if !found {
			t.Errorf("%s has a runbook #%s for no alert of %s", deployRunbooks, anchor, deployAlerts)
		}
	}
}
