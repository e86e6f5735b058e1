package testnats

import (
	"cmp"
	"context"
	"fmt"
	"slices"
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

// ReadStream reads every message stream holds, in stream order, each
// once. It is what a test checks "published exactly once, in order"
// against, so it counts messages by their stream sequence, not by what a
// consumer hands it: an ordered consumer that resets (after a missed
// heartbeat, or when a cluster node it was placed on restarts) can
// deliver part of the stream again, and a reader that stopped after as
// many deliveries as the stream has messages would then report some
// messages twice and the last ones missing. A message the stream stores
// twice has two sequences and is returned twice. Redelivered is how many
// deliveries were such repeats (dropped).
func ReadStream(ctx context.Context, js jetstream.JetStream, stream string) (msgs []StreamMsg, redelivered int, err error) {
	st, err := js.Stream(ctx, stream)
	if err != nil {
		return nil, 0, fmt.Errorf("stream %s: %w", stream, err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("stream %s: %w", stream, err)
	}
	n := int(info.State.Msgs)
	if n == 0 {
		return nil, 0, nil
	}
	c, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy})
	if err != nil {
		return nil, 0, fmt.Errorf("ordered consumer on %s: %w", stream, err)
	}
	seen := make(map[uint64]bool, n)
	msgs = make([]StreamMsg, 0, n)
	for len(msgs) < n {
		batch, err := c.Fetch(min(n-len(msgs), 1000), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return nil, redelivered, fmt.Errorf("reading %s after %d of %d messages: %w", stream, len(msgs), n, err)
		}
		got := 0
		for m := range batch.Messages() {
			got++
			md, err := m.Metadata()
			if err != nil {
				return nil, redelivered, fmt.Errorf("reading %s: message on %s without metadata: %w", stream, m.Subject(), err)
			}
			if seen[md.Sequence.Stream] {
				redelivered++
				continue
			}
			seen[md.Sequence.Stream] = true
			msgs = append(msgs, StreamMsg{Seq: md.Sequence.Stream, Subject: m.Subject(), Header: m.Headers(), Data: m.Data()})
		}
		if err := batch.Error(); err != nil {
			return nil, redelivered, fmt.Errorf("reading %s after %d of %d messages: %w", stream, len(msgs), n, err)
		}
		if got == 0 {
			return nil, redelivered, fmt.Errorf("reading %s: nothing more after %d of %d messages", stream, len(msgs), n)
		}
	}
	slices.SortFunc(msgs, func(a, b StreamMsg) int { return cmp.Compare(a.Seq, b.Seq) })
	return msgs, redelivered, nil
}
