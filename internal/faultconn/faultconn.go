// Package faultconn wraps the network connections of a database driver so
// tests can cut one at a chosen moment: just before a COMMIT is sent, or
// just after it was sent and before its reply is read. A write that
// carries a COMMIT pipelined behind other statements is dropped or sent
// whole. It is installed
// through the drivers' dial hooks (pgx ConnConfig.DialFunc, go-sql-driver
// Config.DialFunc) via bento.WithDialer.
package faultconn

import (
	"bytes"
	"context"
	"net"
	"sync"
	"sync/atomic"
)

// Mode is what to do with the next COMMIT.
type Mode int32

const (
	// Pass forwards everything.
	Pass Mode = iota
	// DropCommit swallows the next COMMIT (reporting it written) and closes
	// the connection: the server never sees it and aborts.
	DropCommit
	// CutAfterCommit forwards the next COMMIT and closes the connection
	// before the reply is read: the server commits, the client never hears.
	CutAfterCommit
)

// Dialer dials real connections and wraps them.
type Dialer struct {
	mode  atomic.Int32
	fired atomic.Int32
	mu    sync.Mutex
	conns []*Conn
}

// Arm sets what happens to the next COMMIT on any connection; it fires once.
func (d *Dialer) Arm(m Mode) { d.fired.Store(0); d.mode.Store(int32(m)) }

// Fired reports how many times an armed fault fired.
func (d *Dialer) Fired() int { return int(d.fired.Load()) }

// DialContext dials like net.Dialer and wraps the connection.
func (d *Dialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var nd net.Dialer
	c, err := nd.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	fc := &Conn{Conn: c, d: d}
	d.mu.Lock()
	d.conns = append(d.conns, fc)
	d.mu.Unlock()
	return fc, nil
}

// Conn is a wrapped connection.
type Conn struct {
	net.Conn
	d  *Dialer
	pg PGCommits // statements prepared on the connection (PostgreSQL)
}

// isCommit recognises a write that carries a COMMIT: PostgreSQL messages
// of which one starts a COMMIT (PGCommits), or a MySQL COM_QUERY packet.
func (c *Conn) isCommit(b []byte) bool {
	if msgs, ok := SplitPG(b); ok {
		commit := false
		for _, m := range msgs {
			// Every message: IsCommit records the statements prepared.
			commit = c.pg.IsCommit(m) || commit
		}
		if commit {
			return true
		}
	}
	// MySQL: 3-byte length, 1-byte sequence, COM_QUERY (0x03), text.
	return len(b) > 5 && b[4] == 0x03 && bytes.HasPrefix(bytes.TrimSpace(bytes.ToLower(b[5:])), []byte("commit"))
}

func (c *Conn) Write(b []byte) (int, error) {
	m := Mode(c.d.mode.Load())
	commit := c.isCommit(b) // always: it records the statements prepared
	if m == Pass || !commit || !c.d.mode.CompareAndSwap(int32(m), int32(Pass)) {
		return c.Conn.Write(b)
	}
	c.d.fired.Add(1)
	switch m {
	case DropCommit:
		c.Conn.Close()
		return len(b), nil
	case CutAfterCommit:
		n, err := c.Conn.Write(b)
		c.Conn.Close()
		return n, err
	}
	return c.Conn.Write(b)
}
