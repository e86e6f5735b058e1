package main

import (
	"strings"
	"testing"
)

// TestNATSTokenNeverPrinted: a NATS token (nats://TOKEN@host, the whole
// userinfo) and secret parameters of OUTBOX_NATS_URL appear in no output:
// info --json and info's settings, a configuration error, and the error
// of a relay that cannot connect. Before the fix, info --json and the
// configuration error printed nats://TOKEN@host in full.
func TestNATSTokenNeverPrinted(t *testing.T) {
	const token = "S3CRETTOKEN" + "-nats"
	noLeak := func(t *testing.T, r result) {
		t.Helper()
		for what, s := range map[string]string{"stdout": r.stdout, "stderr": r.stderr} {
			if strings.Contains(s, token) || strings.Contains(s, "S3CRET") {
				t.Errorf("the token appears on %s\n%s", what, r)
			}
		}
	}
	db := "DB_URL=" + sqliteURL(t)
	t.Run("info --json", func(t *testing.T) {
		for _, nats := range []string{
			"nats://" + token + "@127.0.0.1:4222",
			"nats://127.0.0.1:4222,nats://" + token + "@127.0.0.1:4223",
			"nats://relay:" + token + "@127.0.0.1:4222",
			"nats://127.0.0.1:4222?token=" + token,
		} {
			r := runCLI(t, []string{db, "OUTBOX_NATS_URL=" + nats}, "info", "--json")
			if r.code != exitOK {
				t.Fatalf("want exit 0\n%s", r)
			}
			noLeak(t, r)
			settings, _ := decodeInfo(t, r)["settings"].(map[string]any)
			if s, _ := settings["OUTBOX_NATS_URL"].(string); !strings.Contains(s, "xxxxx") || !strings.Contains(s, "127.0.0.1:4222") {
				t.Errorf("settings.OUTBOX_NATS_URL = %q, want the host with the secret redacted", s)
			}
		}
	})
	t.Run("configuration error", func(t *testing.T) {
		r := runCLI(t, []string{db, "OUTBOX_NATS_URL=redis://" + token + "@127.0.0.1:6379"}, "info")
		if r.code != exitConfig {
			t.Fatalf("want exit %d\n%s", exitConfig, r)
		}
		assertOneLine(t, "stderr", r.stderr)
		noLeak(t, r)
		if !strings.Contains(r.stderr, "OUTBOX_NATS_URL") || !strings.Contains(r.stderr, "redis://xxxxx@127.0.0.1:6379") {
			t.Errorf("the error does not name the setting and the redacted value:\n%s", r)
		}
	})
	t.Run("relay cannot connect", func(t *testing.T) {
		r := runCLI(t, []string{db, "OUTBOX_PUBLISHER=nats", "OUTBOX_NATS_URL=nats://" + token + "@127.0.0.1:1"}, "relay", "--once")
		if r.code == exitOK {
			t.Fatalf("a relay with an unreachable NATS server succeeded\n%s", r)
		}
		noLeak(t, r)
	})
}
