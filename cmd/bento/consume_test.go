package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bento-go/bento/internal/testdb"
	"github.com/bento-go/bento/internal/testnats"
	"github.com/bento-go/bento/shop"
)

// TestConsume runs bento serve (relay to a private nats-server) and two
// bento consume processes on PostgreSQL: orders placed, paid and
// cancelled through the HTTP API show, once consumed, in
// GET /customers/{email}/summary exactly as the orders say; SIGTERM stops
// each consumer with exit 0; requeue with nothing dead requeues nothing.
func TestConsume(t *testing.T) {
	bin := buildBinary(t)
	srv := testnats.Start(t)
	environ := []string{"DB_URL=" + testdb.URL(t, testdb.Postgres), "OUTBOX_PUBLISHER=nats", "OUTBOX_NATS_URL=" + srv.URL(),
		"INBOX_CONSUMER=summary-test", "INBOX_BACKOFF=50ms", "INBOX_DEFER_DELAY=20ms"}
	s := startServe(t, bin, t.TempDir(), environ)
	s.waitReady(time.Minute)

	var consumers []*exec.Cmd
	var outputs []*lockedBuffer
	for range 2 {
		out := &lockedBuffer{}
		c := exec.Command(bin, "consume")
		c.Env = environ
		c.Stdout, c.Stderr = out, out
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Process.Kill(); c.Wait() })
		consumers = append(consumers, c)
		outputs = append(outputs, out)
	}

	post := func(path string, body []byte) map[string]any {
		t.Helper()
		resp, err := http.Post(s.base+path, "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var v map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&v); err != nil || resp.StatusCode >= 300 {
			t.Fatalf("POST %s: %d %v %v", path, resp.StatusCode, v, err)
		}
		return v
	}
	want := map[string]shop.Summary{}
	for i := range 12 {
		customer := fmt.Sprintf("c%d@example.com", i%3)
		o := post("/orders", orderBody(customer)) // 2 × 1250 cents
		id := int(o["id"].(float64))
		w := want[customer]
		w.Customer = customer
		w.OrdersPlaced++
		switch i % 3 {
		case 0:
			post(fmt.Sprintf("/orders/%d/pay", id), nil)
			w.OrdersPaid++
			w.TotalSpentCents += 2500
		case 1:
			post(fmt.Sprintf("/orders/%d/cancel", id), nil)
			w.OrdersCancelled++
		}
		want[customer] = w
	}

	get := func(customer string) (int, shop.Summary) {
		resp, err := http.Get(s.base + "/customers/" + customer + "/summary")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var got shop.Summary
		b, _ := io.ReadAll(resp.Body)
		_ = json.Unmarshal(b, &got)
		return resp.StatusCode, got
	}
	if code, _ := get("nobody@example.com"); code != http.StatusNotFound {
		t.Errorf("summary of an unknown customer: %d, want 404", code)
	}
	deadline := time.Now().Add(time.Minute)
	for customer, w := range want {
		for {
			code, got := get(customer)
			got.UpdatedAt = time.Time{}
			if code == http.StatusOK && got == w {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("summary of %s: %d %+v, want %+v\nconsumer output:\n%s", customer, code, got, w, tail(outputs[0].String(), 30))
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	for i, c := range consumers {
		c.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- c.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("consumer %d: %v\n%s", i, err, tail(outputs[i].String(), 30))
			}
		case <-time.After(30 * time.Second):
			t.Errorf("consumer %d still running 30s after SIGTERM", i)
		}
		if !strings.Contains(outputs[i].String(), "bento: stopped") {
			t.Errorf("consumer %d did not log its shutdown:\n%s", i, tail(outputs[i].String(), 30))
		}
	}
	r := runCLI(t, environ, "consume", "requeue")
	if r.code != 0 || r.stdout != "requeued 0 dead letters of summary-test\n" {
		t.Errorf("consume requeue: %s", r)
	}
	if r := runCLI(t, environ, "consume", "requeue", "--id", "nope"); r.code != exitConfig || !strings.Contains(r.stderr, `"nope" is not an event id`) {
		t.Errorf("consume requeue --id nope: %s", r)
	}
	s.sigterm()
	s.waitExit(time.Minute)
}
