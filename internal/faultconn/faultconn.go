// Package faultconn wraps the network connections of a database driver so
// tests can cut one at a chosen moment: just before a COMMIT is sent, or
// just after it was sent and before its reply is read. A write that
// carries a COMMIT pipelined behind other statements, or the Sync that
// commits an implicit transaction (PGCommits), is dropped or sent whole.
// It is installed through the drivers' dial hooks (pgx
// ConnConfig.DialFunc, go-sql-driver Config.DialFunc) via
// bento.WithDialer.
package faultconn

import (
	"bytes"
	"context"
	"encoding/binary"
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
	// once the server has answered it, without letting the driver read the
	// answer: the server commits, the client never hears. (Closing right
	// after the write was a race: a server slow to read the write could
	// find the connection reset first and abort.)
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

	// cut is set by CutAfterCommit before it writes the COMMIT: from then
	// on Read swallows the server's answer (cutPG: up to its
	// ReadyForQuery; MySQL: the first bytes) and closes the connection.
	cut   atomic.Bool
	cutPG bool
	mu    sync.Mutex // serialises the reads that swallow the answer
	reply []byte     // the answer so far (PostgreSQL)
}

// isCommit recognises a write that carries a COMMIT: PostgreSQL messages
// of which one starts a COMMIT (PGCommits), or a MySQL COM_QUERY packet.
func (c *Conn) isCommit(b []byte) bool {
	_, commit := c.commitKind(b)
	return commit
}

// commitKind is isCommit, and whether the write is PostgreSQL's.
func (c *Conn) commitKind(b []byte) (pg, commit bool) {
	if msgs, ok := SplitPG(b); ok {
		commit := false
		for _, m := range msgs {
			// Every message: IsCommit records the statements prepared.
			commit = c.pg.IsCommit(m) || commit
		}
		if commit {
			return true, true
		}
	}
	// MySQL: 3-byte length, 1-byte sequence, COM_QUERY (0x03), text.
	return false, len(b) > 5 && b[4] == 0x03 && bytes.HasPrefix(bytes.TrimSpace(bytes.ToLower(b[5:])), []byte("commit"))
}

func (c *Conn) Write(b []byte) (int, error) {
	m := Mode(c.d.mode.Load())
	pg, commit := c.commitKind(b) // always: it records the statements prepared
	if m == Pass || !commit || !c.d.mode.CompareAndSwap(int32(m), int32(Pass)) {
		return c.Conn.Write(b)
	}
	c.d.fired.Add(1)
	switch m {
	case DropCommit:
		c.Conn.Close()
		return len(b), nil
	case CutAfterCommit:
		// Nothing is unread before a COMMIT is sent, so whatever a read
		// returns from now on is its answer (a read may already be
		// waiting: pgx reads in the background while it writes).
		c.cutPG = pg
		c.cut.Store(true)
		return c.Conn.Write(b)
	}
	return c.Conn.Write(b)
}

// Read reads from the connection; once a CutAfterCommit fired, it reads
// the server's answer to the COMMIT, drops it, closes the connection and
// returns the closed connection's error.
func (c *Conn) Read(p []byte) (int, error) {
	if !c.cut.Load() {
		n, err := c.Conn.Read(p)
		if n == 0 || !c.cut.Load() {
			return n, err
		}
		// The answer arrived while the COMMIT was being written.
		c.mu.Lock()
		defer c.mu.Unlock()
		if !c.swallow(p[:n]) {
			c.swallowRest(p)
		}
	} else {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.swallowRest(p)
	}
	c.Conn.Close()
	return c.Conn.Read(p)
}

// swallowRest reads, into p, the rest of the answer or up to an error.
// c.mu is held.
func (c *Conn) swallowRest(p []byte) {
	if len(p) == 0 {
		p = make([]byte, 512)
	}
	for {
		n, err := c.Conn.Read(p)
		if n > 0 && c.swallow(p[:n]) || err != nil {
			return
		}
	}
}

// swallow takes bytes of the answer and reports whether it is complete:
// on PostgreSQL once a ReadyForQuery message has come (the pipeline's end,
// after the COMMIT ran), on MySQL at its first bytes (the COMMIT's OK).
// c.mu is held. (SplitPG reads frontend messages; backend ones such as
// BindComplete, '2', have types it rejects.)
func (c *Conn) swallow(b []byte) bool {
	if !c.cutPG {
		return true
	}
	c.reply = append(c.reply, b...)
	for r := c.reply; len(r) >= 5; {
		n := 1 + int(binary.BigEndian.Uint32(r[1:5]))
		if n < 5 || n > len(r) {
			return false
		}
		if r[0] == 'Z' {
			return true
		}
		r = r[n:]
	}
	return false
}
