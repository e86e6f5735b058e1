package natspub_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/bento-go/bento/internal/testnats"
	"github.com/bento-go/bento/outbox/natspub"
)

// Config.Replicas sets the stream's replicas: 1 by default; 3 on a
// three-node cluster; on a single server JetStream refuses more than 1
// and Connect says which stream it could not create.
func TestStreamReplicas(t *testing.T) {
	replicas := func(p *natspub.Publisher, name string) int {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s, err := p.JetStream().Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		info, err := s.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return info.Config.Replicas
	}
	srv := testnats.Start(t)
	p := connect(t, srv, natspub.Config{})
	if got := replicas(p, stream); got != 1 {
		t.Errorf("default: stream has %d replicas, want 1", got)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := natspub.Connect(ctx, natspub.Config{URL: srv.URL(), Stream: "BENTO_R3_SINGLE", SubjectPrefix: "r3single", CreateStream: true, Replicas: 3})
	if err == nil || !strings.Contains(err.Error(), "BENTO_R3_SINGLE") {
		t.Errorf("3 replicas on a single server: Connect = %v, want an error naming the stream", err)
	}

	cl := testnats.StartCluster(t, 3)
	pc, err := natspub.Connect(ctx, natspub.Config{URL: cl.URLs(), Stream: "BENTO_R3", SubjectPrefix: "r3", CreateStream: true, Replicas: 3})
	if err != nil {
		t.Fatalf("3 replicas on a cluster of 3: %v", err)
	}
	defer pc.Close()
	if got := replicas(pc, "BENTO_R3"); got != 3 {
		t.Errorf("cluster: stream has %d replicas, want 3", got)
	}
	mustPublish(t, pc, message("Order", "1", "OrderPlaced", 1))
}
