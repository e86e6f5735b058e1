package outbox_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/bento-go/bento/outbox"
)

// logSink collects JSON log lines at every level.
type logSink struct{ syncBuffer }

func (s *logSink) logger() *slog.Logger {
	return slog.New(slog.NewJSONHandler(s, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// logLine is the part of a line the tests look at.
type logLine struct {
	Level  string `json:"level"`
	Msg    string `json:"msg"`
	Count  int    `json:"count"`
	Logged int    `json:"logged"`
}

func (s *logSink) lines(t *testing.T) []logLine {
	t.Helper()
	var out []logLine
	for _, l := range strings.Split(strings.TrimSpace(s.String()), "\n") {
		if l == "" {
			continue
		}
		var ll logLine
		if err := json.Unmarshal([]byte(l), &ll); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		out = append(out, ll)
	}
	return out
}

// tally counts lines by level and message ("INFO bento: event published").
func tally(lines []logLine) map[string]int {
	m := map[string]int{}
	for _, l := range lines {
		m[l.Level+" "+l.Msg]++
	}
	return m
}

func messages(n int) []outbox.Message {
	out := make([]outbox.Message, n)
	for i := range out {
		out[i] = outbox.Message{ID: uuid.New(), AggregateType: "Order", AggregateID: fmt.Sprint(i), Type: "OrderPlaced",
			Payload: []byte(`{"n":1}`), Sequence: 1, OccurredAt: time.Now()}
	}
	return out
}

const (
	infoEvent  = "INFO bento: event published"
	debugEvent = "DEBUG bento: event published"
	infoHeld   = "INFO bento: event log summarised"
	infoSum    = "INFO bento: events published"
)

// A literal LogPublisher logs every message at info level.
func TestLogPublisherLiteralLogsEvery(t *testing.T) {
	var s logSink
	p := outbox.LogPublisher{Logger: s.logger()}
	errs := p.Publish(context.Background(), messages(30))
	for i, err := range errs {
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	p.Flush()
	if got := tally(s.lines(t)); got[infoEvent] != 30 || len(got) != 1 {
		t.Fatalf("want 30 info lines and nothing else, got %v", got)
	}
}

// A backlog published at once gets Lines info lines, the rest at debug
// level, one line saying so and one summary with the count when the window
// ends; after it, messages get their info line again.
func TestLogPublisherSummarisesAtVolume(t *testing.T) {
	var s logSink
	const every = 300 * time.Millisecond
	p := outbox.NewLogPublisher(s.logger(), outbox.LogLimit{Lines: 5, Every: every})
	start := time.Now()
	for range 10 {
		p.Publish(context.Background(), messages(100))
	}
	if time.Since(start) >= every {
		t.Fatalf("publishing took %s, longer than the window: the test's premise fails", time.Since(start))
	}
	got := tally(s.lines(t))
	if got[infoEvent] != 5 || got[debugEvent] != 995 || got[infoHeld] != 1 || got[infoSum] != 0 {
		t.Fatalf("within the window: %v; want 5 info and 995 debug event lines, 1 summarised line, no summary yet", got)
	}
	deadline := time.Now().Add(5 * time.Second)
	for tally(s.lines(t))[infoSum] == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	var sum []logLine
	for _, l := range s.lines(t) {
		if l.Level+" "+l.Msg == infoSum {
			sum = append(sum, l)
		}
	}
	if len(sum) != 1 || sum[0].Count != 1000 || sum[0].Logged != 5 {
		t.Fatalf("summary lines %+v; want one with count 1000, logged 5", sum)
	}
	if took := time.Since(start); took < every {
		t.Errorf("the summary came %s after the first event, before the window of %s ended", took, every)
	}
	// A new window: three messages, three info lines, no summary.
	p.Publish(context.Background(), messages(3))
	time.Sleep(2 * every)
	p.Flush()
	got = tally(s.lines(t))
	if got[infoEvent] != 8 || got[infoSum] != 1 || got[infoHeld] != 1 {
		t.Fatalf("after the window: %v; want 8 info event lines in all and still one summary", got)
	}
}

// Flush logs the open window's summary at once, and only once.
func TestLogPublisherFlush(t *testing.T) {
	var s logSink
	p := outbox.NewLogPublisher(s.logger(), outbox.LogLimit{Lines: 1, Every: time.Hour})
	p.Publish(context.Background(), messages(4))
	p.Flush()
	p.Flush()
	lines := s.lines(t)
	got := tally(lines)
	if got[infoEvent] != 1 || got[debugEvent] != 3 || got[infoSum] != 1 {
		t.Fatalf("%v; want 1 info, 3 debug event lines and one summary", got)
	}
	last := lines[len(lines)-1]
	if last.Msg != "bento: events published" || last.Count != 4 || last.Logged != 1 {
		t.Fatalf("summary %+v; want count 4, logged 1", last)
	}
}

// Concurrent publishers over many short windows: every message is logged
// exactly once, and the summaries account for every message held back
// (sum of count-logged = debug lines).
func TestLogPublisherConcurrentWindows(t *testing.T) {
	var s logSink
	p := outbox.NewLogPublisher(s.logger(), outbox.LogLimit{Lines: 2, Every: 5 * time.Millisecond})
	var wg sync.WaitGroup
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 300 {
				p.Publish(context.Background(), messages(1))
			}
		}()
	}
	wg.Wait()
	time.Sleep(50 * time.Millisecond) // let the last window's timer run
	p.Flush()
	lines := s.lines(t)
	got := tally(lines)
	if got[infoEvent]+got[debugEvent] != 1800 {
		t.Fatalf("%v; want 1800 event lines", got)
	}
	held := 0
	for _, l := range lines {
		if l.Level+" "+l.Msg == infoSum {
			held += l.Count - l.Logged
		}
	}
	if held != got[debugEvent] || got[debugEvent] == 0 {
		t.Fatalf("summaries account for %d held-back messages, %d debug lines (want equal and > 0); %v", held, got[debugEvent], got)
	}
}
