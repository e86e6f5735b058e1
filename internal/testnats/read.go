package testnats

import (
	"cmp"
	"context"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// StreamMsg is one stored message of a stream, with its stream sequence.
type StreamMsg struct {
	Seq     uint64 // the stream's sequence number of the message
	Subject string
	Header  nats.Header
	Data    []byte
}

// StreamCount returns how many messages stream holds, and fails t if it
// cannot tell.
func StreamCount(ctx context.Context, t testing.TB, js jetstream.JetStream, stream string) int {
	t.Helper()
	_, n := streamOf(ctx, t, js, stream)
	return n
}

// streamOf returns stream and how many messages it holds, and fails t if
// it cannot.
func streamOf(ctx context.Context, t testing.TB, js jetstream.JetStream, stream string) (jetstream.Stream, int) {
	t.Helper()
	st, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatalf("stream %s: %v", stream, err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatalf("stream %s: %v", stream, err)
	}
	return st, int(info.State.Msgs)
}

// ReadStream reads every message stream holds, in stream order, each
// once, and fails t if it cannot. It is what a test checks "published
// exactly once, in order" against, so it counts messages by their stream
// sequence, not by what a consumer hands it: an ordered consumer that
// resets (after a missed heartbeat, or when a cluster node it was placed
// on restarts) can deliver part of the stream again, and a reader that
// stopped after as many deliveries as the stream has messages would then
// report some messages twice and the last ones missing. Such repeats are
// dropped and their number logged; a message the stream stores twice has
// two sequences and is returned twice.
func ReadStream(ctx context.Context, t testing.TB, js jetstream.JetStream, stream string) []StreamMsg {
	t.Helper()
	st, n := streamOf(ctx, t, js, stream)
	if n == 0 {
		return nil
	}
	c, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy})
	if err != nil {
		t.Fatalf("ordered consumer on %s: %v", stream, err)
	}
	seen := make(map[uint64]bool, n)
	msgs := make([]StreamMsg, 0, n)
	redelivered := 0
	for len(msgs) < n {
		batch, err := c.Fetch(min(n-len(msgs), 1000), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatalf("reading %s after %d of %d messages: %v", stream, len(msgs), n, err)
		}
		got := 0
		for m := range batch.Messages() {
			got++
			md, err := m.Metadata()
			if err != nil {
				t.Fatalf("reading %s: message on %s without metadata: %v", stream, m.Subject(), err)
			}
			if seen[md.Sequence.Stream] {
				redelivered++
				continue
			}
			seen[md.Sequence.Stream] = true
			msgs = append(msgs, StreamMsg{Seq: md.Sequence.Stream, Subject: m.Subject(), Header: m.Headers(), Data: m.Data()})
		}
		if err := batch.Error(); err != nil {
			t.Fatalf("reading %s after %d of %d messages: %v", stream, len(msgs), n, err)
		}
		if got == 0 {
			t.Fatalf("reading %s: nothing more after %d of %d messages", stream, len(msgs), n)
		}
	}
	if redelivered > 0 {
		t.Logf("reading %s: the reader's consumer delivered %d messages a second time (dropped by stream sequence)", stream, redelivered)
	}
	slices.SortFunc(msgs, func(a, b StreamMsg) int { return cmp.Compare(a.Seq, b.Seq) })
	return msgs
}
