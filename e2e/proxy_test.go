package e2e

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bento-go/bento/internal/faultconn"
)

// CommitAction is what a PGProxy does with one COMMIT.
type CommitAction int

const (
	// ForwardCommit passes the COMMIT and its reply on.
	ForwardCommit CommitAction = iota
	// CutAfterCommit forwards the COMMIT to the server, then closes the
	// client's side before the reply can reach it (the server commits, the
	// client never hears) and half-closes the server's side so the server
	// reads the COMMIT before its end of stream.
	CutAfterCommit
	// DropCommit closes both sides without forwarding the COMMIT: the
	// server sees the connection end inside the transaction and aborts.
	DropCommit
)

func (a CommitAction) String() string {
	switch a {
	case CutAfterCommit:
		return "cut-after"
	case DropCommit:
		return "drop-before"
	}
	return "forward"
}

// PGProxy is a TCP proxy between a client and a PostgreSQL server that
// parses the client's protocol messages (startup, then typed messages) and
// recognises the COMMITs a driver sends (faultconn.PGCommits): a simple
// query, as pgx ends a transaction, or a Bind of a prepared COMMIT in a
// pipeline (driver.Tx.DeferExec), which is cut after the Sync that runs it,
// or the Sync that commits an implicit transaction (a unit of work sent
// whole, without BEGIN and COMMIT). Decide chooses what happens to each
// COMMIT; it is only consulted while the proxy is armed.
type PGProxy struct {
	t      testing.TB
	ln     net.Listener
	target string

	// Decide gets the number (1, 2, …) of each COMMIT seen while armed.
	Decide func(n int64) CommitAction

	armed    atomic.Bool
	commits  atomic.Int64 // COMMITs seen while armed
	cut      atomic.Int64
	dropped  atomic.Int64
	accepted atomic.Int64

	mu      sync.Mutex
	conns   map[net.Conn]struct{}
	closed  bool
	replies map[string]int // server replies to COMMITs cut after sending
	wg      sync.WaitGroup
}

// StartPGProxy listens on a free local port and forwards to target
// (host:port). It is closed when the test ends.
func StartPGProxy(t testing.TB, target string) *PGProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &PGProxy{t: t, ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

// Addr returns the proxy's host:port.
func (p *PGProxy) Addr() string { return p.ln.Addr().String() }

// Port returns the proxy's port.
func (p *PGProxy) Port() int { return p.ln.Addr().(*net.TCPAddr).Port }

// Arm starts (true) or stops (false) consulting Decide.
func (p *PGProxy) Arm(on bool) { p.armed.Store(on) }

// Counts returns the COMMITs seen while armed, cut after forwarding and
// dropped before forwarding.
func (p *PGProxy) Counts() (commits, cut, dropped int64) {
	return p.commits.Load(), p.cut.Load(), p.dropped.Load()
}

// Connections returns how many client connections the proxy accepted.
func (p *PGProxy) Connections() int64 { return p.accepted.Load() }

// Close stops the proxy and closes every connection.
func (p *PGProxy) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	p.ln.Close()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *PGProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *PGProxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	c.Close()
}

func (p *PGProxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.accepted.Add(1)
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.serve(client)
		}()
	}
}

func (p *PGProxy) serve(client net.Conn) {
	if !p.track(client) {
		return
	}
	defer p.untrack(client)
	conn, err := net.DialTimeout("tcp", p.target, 10*time.Second)
	if err != nil {
		return // the client sees its connection end, like a refused server
	}
	if !p.track(conn) {
		return
	}
	defer p.untrack(conn)
	server := conn.(*net.TCPConn)
	// server → client: bytes as they come. Once a COMMIT was cut after
	// sending (cutting is set before it is forwarded, after the client had
	// every earlier reply) the server's bytes are its reply to that
	// COMMIT: they are kept, not forwarded, and read to the server's end
	// of stream, so that the proxy never resets a server that still has
	// something to say.
	var cutting atomic.Bool
	var reply []byte
	down := make(chan struct{})
	go func() {
		defer close(down)
		buf := make([]byte, 32<<10)
		for {
			n, err := server.Read(buf)
			if n > 0 {
				if cutting.Load() {
					reply = append(reply, buf[:n]...)
				} else {
					_, _ = client.Write(buf[:n])
				}
			}
			if err != nil {
				client.Close()
				return
			}
		}
	}()
	half := p.up(client, server, &cutting)
	if !half {
		server.Close()
	}
	<-down
	if half {
		p.recordReply(reply)
	}
}

// recordReply notes how the server answered a COMMIT the client never
// heard about: its CommandComplete tag ("COMMIT", or "ROLLBACK" for a
// transaction that had failed) or its error. The reply can hold the
// answers to the statements pipelined before the COMMIT (a transaction
// sent whole with it): the COMMIT's is the last CommandComplete, unless an
// error came first (the server then skipped the rest, the COMMIT too). An
// implicit transaction (statements up to a Sync, no BEGIN: PGCommits) has
// no COMMIT of its own: it committed if the server got to the Sync's
// ReadyForQuery without an error.
func (p *PGProxy) recordReply(b []byte) {
	what := "no reply"
scan:
	for len(b) >= 5 {
		n := int(binary.BigEndian.Uint32(b[1:5]))
		if n < 4 || 1+n > len(b) {
			break
		}
		body := b[5 : 1+n]
		switch b[0] {
		case 'C':
			what = strings.TrimRight(string(body), "\x00")
		case 'E':
			what = "error"
			for _, f := range strings.Split(string(body), "\x00") {
				if strings.HasPrefix(f, "C") {
					what = "error " + f[1:]
				}
			}
			break scan
		case 'Z':
			if what != "COMMIT" && what != "ROLLBACK" {
				what = "COMMIT" // an implicit transaction's
			}
			break scan
		}
		b = b[1+n:]
	}
	p.mu.Lock()
	if p.replies == nil {
		p.replies = map[string]int{}
	}
	p.replies[what]++
	p.mu.Unlock()
}

// CutReplies returns how the server answered the COMMITs cut after
// sending, by CommandComplete tag or error code.
func (p *PGProxy) CutReplies() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]int{}
	for k, v := range p.replies {
		out[k] = v
	}
	return out
}

// Protocol codes of untyped startup-phase messages.
const (
	pgSSLRequest    = 80877103
	pgGSSENCRequest = 80877104
	pgCancelRequest = 80877102
)

// up copies client → server message by message, applying Decide to
// COMMITs. It returns when either side ends; half reports that it
// half-closed the server's side after a COMMIT (the server ends the
// connection itself once it has read it).
func (p *PGProxy) up(client net.Conn, server *net.TCPConn, cutting *atomic.Bool) (half bool) {
	startup := true
	var head [5]byte
	var commits faultconn.PGCommits
	// cutAtSync: an extended-protocol COMMIT (pipelined) is being cut
	// after sending; it is sent whole, up to the Sync that executes it.
	cutAtSync := false
	cut := func(msg []byte) {
		// The client must never see the reply: end its side first, then
		// hand the COMMIT to the server and half-close, so the server
		// executes it and then reads the end of the stream.
		cutting.Store(true)
		client.Close()
		_, _ = server.Write(msg)
		_ = server.CloseWrite()
		// Let the server finish: its reply is read and discarded, and the
		// copy ends at its end of stream.
		_ = server.SetReadDeadline(time.Now().Add(10 * time.Second))
	}
	for {
		var msg []byte
		if startup {
			// Untyped: int32 length (itself included), int32 code, rest.
			if _, err := io.ReadFull(client, head[:4]); err != nil {
				return false
			}
			n := int(binary.BigEndian.Uint32(head[:4]))
			if n < 8 || n > 1<<20 {
				return false
			}
			msg = make([]byte, n)
			copy(msg, head[:4])
			if _, err := io.ReadFull(client, msg[4:]); err != nil {
				return false
			}
			switch binary.BigEndian.Uint32(msg[4:8]) {
			case pgSSLRequest, pgGSSENCRequest:
				// The server answers one byte; the next message is
				// untyped again.
			default:
				startup = false
			}
		} else {
			if _, err := io.ReadFull(client, head[:5]); err != nil {
				return false
			}
			n := int(binary.BigEndian.Uint32(head[1:5]))
			if n < 4 || n > 1<<30 {
				return false
			}
			msg = make([]byte, 1+n)
			copy(msg, head[:5])
			if _, err := io.ReadFull(client, msg[5:]); err != nil {
				return false
			}
			if cutAtSync && msg[0] == 'S' {
				cut(msg)
				return true
			}
			if commits.IsCommit(msg) && p.armed.Load() && p.Decide != nil {
				switch a := p.Decide(p.commits.Add(1)); a {
				case CutAfterCommit:
					p.cut.Add(1)
					if msg[0] == 'B' {
						cutAtSync = true
						break
					}
					cut(msg)
					return true
				case DropCommit:
					p.dropped.Add(1)
					client.Close()
					return false
				}
			}
		}
		if _, err := server.Write(msg); err != nil {
			return false
		}
	}
}

// proxiedURL returns rawURL (postgres://…@host:port/db…) with host:port
// replaced by the proxy's address.
func proxiedURL(t testing.TB, rawURL string, p *PGProxy) string {
	t.Helper()
	at := strings.LastIndex(rawURL, "@")
	rest := rawURL[at+1:]
	slash := strings.IndexAny(rest, "/?")
	if at < 0 || slash < 0 {
		t.Fatalf("e2e: cannot put a proxy into %q", rawURL)
	}
	return rawURL[:at+1] + "127.0.0.1:" + strconv.Itoa(p.Port()) + rest[slash:]
}

// hostPort returns the host:port of a postgres:// URL.
func hostPort(t testing.TB, rawURL string) string {
	t.Helper()
	at := strings.LastIndex(rawURL, "@")
	rest := rawURL[at+1:]
	slash := strings.IndexAny(rest, "/?")
	if at < 0 || slash < 0 {
		t.Fatalf("e2e: no host:port in %q", rawURL)
	}
	hp := rest[:slash]
	if _, _, err := net.SplitHostPort(hp); err != nil {
		t.Fatal(errors.New("e2e: " + err.Error()))
	}
	return hp
}
