package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
)

// tokenSecret is the secret every FuzzRedact input carries.
const tokenSecret = "T0KEN-s3cr3t"

// secretKeys are query parameter names whose values must be redacted.
var secretKeys = []string{
	"password", "Password", "sslpassword", "pass", "passwd", "pwd", "token", "TOKEN",
	"access_token", "auth_token", "secret", "client_secret", "key", "apikey", "api_key",
	"api-key", "sslkey", "private_key", "nkey", "auth", "credentials", "jwt", "sig",
}

// redactOutputs returns every text a user can see for the value raw:
// Redact, RedactIn of a message quoting it, and for each of the settings
// (all URL settings if none are named) the configuration error or the
// loaded Config's String, LogValue and JSON forms.
func redactOutputs(t *testing.T, raw string, settings ...string) map[string]string {
	t.Helper()
	if len(settings) == 0 {
		settings = []string{"OUTBOX_NATS_URL", "DB_URL", "DB_REPLICA_URLS"}
	}
	out := map[string]string{
		"Redact":   Redact(raw),
		"RedactIn": RedactIn(fmt.Sprintf("parse %q: invalid URL (%s)", raw, raw), raw),
	}
	for _, name := range settings {
		env := []string{name + "=" + raw}
		if name == "DB_REPLICA_URLS" {
			env = append(env, "DB_URL=postgres://h/db")
		}
		c, err := Load(Source{Environ: func() []string { return env }})
		if err != nil {
			out[name+" error"] = err.Error()
			var ce *Error
			if errors.As(err, &ce) {
				out[name+" Error.Value"] = ce.Value
			}
			continue
		}
		out[name+" String"] = c.String()
		out[name+" LogValue"] = c.LogValue().String()
		b, _ := json.Marshal(c)
		out[name+" JSON"] = string(b)
	}
	return out
}

// TestRedactUserinfoAndParams checks the forms a secret takes in a URL:
// a NATS token (the whole userinfo), a user name with a password, and
// secret query parameters, in every output. (A database URL's user name
// without a password stays visible: postgres://app@host is a role, not a
// token.)
func TestRedactUserinfoAndParams(t *testing.T) {
	inputs := []string{
		"nats://" + tokenSecret + "@127.0.0.1:4222",
		"nats://" + tokenSecret + "@host:4222,nats://other:4222",
		"nats://a:4222,nats://" + tokenSecret + "@b:4222",
		"tls://user:" + tokenSecret + "@host:4222",
		"nats://" + tokenSecret + "@ho st:4222",
		"nats://" + tokenSecret + "@h/a:b@c",
		"postgres://u:" + tokenSecret + "@ho st/db",
		"postgres://host/db?sslmode=require&sslpassword=" + tokenSecret,
		"mysql://root@host/test?tls=true&apikey=" + tokenSecret,
		"sqlite://x.db?access_token=" + tokenSecret,
	}
	for _, k := range secretKeys {
		inputs = append(inputs, "nats://host:4222?"+k+"="+tokenSecret)
	}
	for _, in := range inputs {
		t.Run(in, func(t *testing.T) {
			for what, s := range redactOutputs(t, in) {
				assertNoSecret(t, what, s, tokenSecret)
			}
		})
	}
	// What stays visible: the host, the user name next to a password, and
	// parameters that are not secrets.
	for in, want := range map[string]string{
		"nats://" + tokenSecret + "@host:4222":        "nats://xxxxx@host:4222",
		"nats://u:" + tokenSecret + "@host:4222":      "nats://u:xxxxx@host:4222",
		"nats://h:4222?token=" + tokenSecret + "&x=1": "nats://h:4222?token=xxxxx&x=1",
		"nats://h:4222": "nats://h:4222",
	} {
		if got := Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
}

// FuzzRedact varies the text around a secret placed as a NATS token
// (scheme://SECRET@host rest, checked for OUTBOX_NATS_URL), as a password (scheme://user:SECRET@host
// rest) and as the value of each secret query parameter, and checks that
// no output shows it: Redact, RedactIn, configuration errors and the
// loaded Config's String, LogValue and JSON for OUTBOX_NATS_URL, DB_URL and
// DB_REPLICA_URLS.
func FuzzRedact(f *testing.F) {
	seeds := [][3]string{
		{"nats", "127.0.0.1:4222", ""},
		{"nats", "host:4222", ",nats://other:4222"},
		{"tls", "host", "/?x=1"},
		{"ws", "[::1]:8080", "#f"},
		{"nats", "ho st", ""},
		{"postgres", "host", "/db?sslmode=disable"},
		{"mysql", "host:3306", "/test"},
		{"sqlite", "x.db", ""},
		{"", "host", ""},
		{"nats", "", "@x"},
		{"nats", "h", "/a:b@c"},
		{"nats", "h;a", "?x=1;y=2"},
	}
	for _, s := range seeds {
		f.Add(s[0], s[1], s[2])
	}
	f.Fuzz(func(t *testing.T, scheme, host, rest string) {
		if all := scheme + host + rest; strings.Contains(all, "T0KEN") || strings.Contains(all, "s3cr3t") {
			return // the secret must come only from where the test puts it
		}
		token := scheme + "://" + tokenSecret + "@" + host + rest
		for what, s := range redactOutputs(t, token, "OUTBOX_NATS_URL") {
			if strings.Contains(s, tokenSecret) {
				t.Fatalf("%s for %q shows the secret: %s", what, token, s)
			}
		}
		raws := []string{scheme + "://user:" + tokenSecret + "@" + host + rest}
		if !strings.ContainsAny(scheme+host+rest, "#") {
			for _, k := range secretKeys {
				raws = append(raws, scheme+"://"+host+rest+"?"+k+"="+tokenSecret)
			}
		}
		for _, raw := range raws {
			for what, s := range redactOutputs(t, raw) {
				if strings.Contains(s, tokenSecret) {
					t.Fatalf("%s for %q shows the secret: %s", what, raw, s)
				}
			}
		}
	})
}
