package testnats

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Cluster is a private JetStream cluster of nats-server processes routed
// to each other on loopback, each with its own storage directory.
type Cluster struct {
	t     testing.TB
	Name  string
	Nodes []*Node
}

// Node is one server of a Cluster.
type Node struct {
	t       testing.TB
	bin     string
	Name    string // server_name, as JetStream reports a stream's leader
	port    int    // client port
	cluster int    // route port
	routes  string // every node's route URL, comma-separated
	cname   string
	dir     string
	cmd     *exec.Cmd
	done    chan struct{}
}

// StartCluster starts n servers clustered together, with JetStream in
// each, and waits until JetStream has elected its meta leader. They are
// stopped when the test ends.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	bin := Binary()
	if bin == "" {
		t.Fatalf("testnats: no nats-server binary found (apt-get install nats-server, or set BENTO_TEST_NATS_SERVER)")
	}
	c := &Cluster{t: t, Name: fmt.Sprintf("bento-test-%d", time.Now().UnixNano()%1_000_000)}
	ports := freePorts(t, 2*n)
	routes := make([]string, n)
	for i := range routes {
		routes[i] = fmt.Sprintf("nats://127.0.0.1:%d", ports[n+i])
	}
	for i := 0; i < n; i++ {
		c.Nodes = append(c.Nodes, &Node{t: t, bin: bin, Name: fmt.Sprintf("n%d", i+1), port: ports[i], cluster: ports[n+i],
			routes: strings.Join(routes, ","), cname: c.Name, dir: t.TempDir()})
	}
	t.Cleanup(func() {
		for _, nd := range c.Nodes {
			nd.Stop()
		}
	})
	for _, nd := range c.Nodes {
		nd.Start()
	}
	c.WaitJetStream(30 * time.Second)
	return c
}

// freePorts returns n distinct free TCP ports on 127.0.0.1.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	out := make([]int, n)
	for i := range out {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		out[i] = l.Addr().(*net.TCPAddr).Port
	}
	return out
}

// URLs returns every node's client URL, comma-separated (what
// OUTBOX_NATS_URL and nats.Connect take).
func (c *Cluster) URLs() string {
	urls := make([]string, len(c.Nodes))
	for i, nd := range c.Nodes {
		urls[i] = nd.URL()
	}
	return strings.Join(urls, ",")
}

// Node returns the node named name (nil if none is).
func (c *Cluster) Node(name string) *Node {
	for _, nd := range c.Nodes {
		if nd.Name == name {
			return nd
		}
	}
	return nil
}

// WaitJetStream waits until the cluster answers JetStream requests (its
// meta leader is elected) and can place a stream on every node, or fails
// the test after timeout. A meta leader answers before it counts every
// peer online: a stream with one replica per node created then was
// refused with "no suitable peers for placement". So it creates such a
// stream (in memory) and deletes it again.
func (c *Cluster) WaitJetStream(timeout time.Duration) {
	c.t.Helper()
	nc, err := nats.Connect(c.URLs(), nats.Timeout(5*time.Second))
	if err != nil {
		c.t.Fatalf("testnats: connecting to the cluster %s: %v", c.URLs(), err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		c.t.Fatal(err)
	}
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "TESTNATS_READY", Subjects: []string{"testnats.ready"},
			Storage: jetstream.MemoryStorage, Replicas: len(c.Nodes)})
		if err == nil {
			err = js.DeleteStream(ctx, "TESTNATS_READY")
		}
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("testnats: the cluster's JetStream did not answer within %s: %v", timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// URL returns the node's client URL.
func (nd *Node) URL() string { return fmt.Sprintf("nats://127.0.0.1:%d", nd.port) }

// Running reports whether the node's process runs.
func (nd *Node) Running() bool { return nd.cmd != nil }

// Start starts the node (again, on the same ports and storage) and waits
// until it listens for clients.
func (nd *Node) Start() {
	nd.t.Helper()
	if nd.cmd != nil {
		return
	}
	cmd := exec.Command(nd.bin, "-a", "127.0.0.1", "-p", strconv.Itoa(nd.port), "-n", nd.Name,
		"-js", "-sd", filepath.Join(nd.dir, "js"),
		"--cluster_name", nd.cname, "--cluster", fmt.Sprintf("nats://127.0.0.1:%d", nd.cluster), "--routes", nd.routes)
	cmd.Stdout, cmd.Stderr = nil, nil
	if err := cmd.Start(); err != nil {
		nd.t.Fatalf("testnats: starting %s: %v", nd.bin, err)
	}
	nd.cmd, nd.done = cmd, make(chan struct{})
	go func(c *exec.Cmd, done chan struct{}) { c.Wait(); close(done) }(cmd, nd.done)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", nd.port), 100*time.Millisecond)
		if err == nil {
			c.Close()
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	nd.t.Fatalf("testnats: node %s did not listen on port %d within 10s", nd.Name, nd.port)
}

// Kill kills the node's process with SIGKILL (a crash) and waits for it.
func (nd *Node) Kill() {
	if nd.cmd == nil {
		return
	}
	_ = nd.cmd.Process.Kill()
	<-nd.done
	nd.cmd = nil
}

// Stop stops the node (SIGTERM, then SIGKILL after 5 s).
func (nd *Node) Stop() {
	if nd.cmd == nil {
		return
	}
	_ = nd.cmd.Process.Signal(os.Interrupt)
	select {
	case <-nd.done:
	case <-time.After(5 * time.Second):
		_ = nd.cmd.Process.Kill()
		<-nd.done
	}
	nd.cmd = nil
}
