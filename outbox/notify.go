package outbox

import "sync"

// Notifier fans a wake-up out to the relays of this process: every Wake
// makes each subscriber's channel ready (once; wake-ups coalesce). The
// outbox write path calls Wake after each COMMIT that wrote rows. The zero
// value is ready to use; it is safe for concurrent use.
type Notifier struct {
	mu   sync.Mutex
	subs map[chan struct{}]struct{}
}

// Wake signals every subscriber without blocking.
func (n *Notifier) Wake() {
	n.mu.Lock()
	for ch := range n.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	n.mu.Unlock()
}

// Subscribe returns a channel that becomes ready after a Wake, and a
// function that unsubscribes it.
func (n *Notifier) Subscribe() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	n.mu.Lock()
	if n.subs == nil {
		n.subs = map[chan struct{}]struct{}{}
	}
	n.subs[ch] = struct{}{}
	n.mu.Unlock()
	return ch, func() {
		n.mu.Lock()
		delete(n.subs, ch)
		n.mu.Unlock()
	}
}

var _ Waker = (*Notifier)(nil)
