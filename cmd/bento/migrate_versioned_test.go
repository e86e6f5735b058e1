package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bento-go/bento"
	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/internal/testdb"
)

// TestMigrateVersionedCLI: bento migrate diff writes the files, three
// bento migrate apply processes started at once apply each file exactly
// once (the others wait on the migration lock and find nothing to do),
// status reports them applied, and an applied file edited afterwards is
// refused by apply and flagged by status, naming the file.
func TestMigrateVersionedCLI(t *testing.T) {
	bin := buildBinary(t)
	testdb.Each(t, func(t *testing.T, cfg config.Config) {
		ctx := context.Background()
		environ := []string{"DB_URL=" + cfg.DB.URL.Secret()}
		dir := filepath.Join(t.TempDir(), "migrations")

		// Two files: Bento's tables through the library, the reference
		// domain's through the CLI.
		db, err := bento.Open(cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		first, err := db.MigrateDiff(ctx, dir, "bento")
		if err != nil || first == "" {
			t.Fatalf("MigrateDiff = %q, %v", first, err)
		}
		r := runCLI(t, environ, "migrate", "diff", "reference", "--dir", dir)
		if r.code != exitOK || !strings.HasSuffix(strings.TrimSpace(r.stdout), "_reference.sql") {
			t.Fatalf("migrate diff: want the new file on stdout\n%s", r)
		}
		second := strings.TrimSpace(r.stdout)
		if r := runCLI(t, environ, "migrate", "diff", "again", "--dir", dir); r.code != exitOK || !strings.Contains(r.stdout, "up to date") {
			t.Fatalf("migrate diff with no change: want no file\n%s", r)
		}
		if st := cliStatus(t, environ, dir); st.Pending != 2 || st.Applied != 0 {
			t.Fatalf("status before apply: %+v", st)
		}

		const procs = 3
		results := make([]result, procs)
		var wg sync.WaitGroup
		for i := range procs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				results[i] = runProcess(t, bin, environ, "migrate", "apply", "--dir", dir)
			}()
		}
		wg.Wait()
		count := map[string]int{}
		for i, r := range results {
			if r.code != exitOK {
				t.Fatalf("apply process %d: want exit 0\n%s", i, r)
			}
			for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
				if name, ok := strings.CutPrefix(line, "applied "); ok {
					count[name]++
				}
			}
		}
		for _, f := range []string{first, second} {
			if n := count[filepath.Base(f)]; n != 1 {
				t.Errorf("%s applied %d times by %d processes, want once; outputs: %+v", filepath.Base(f), n, procs, results)
			}
		}
		if len(count) != 2 {
			t.Errorf("applied %v, want the two files", count)
		}
		st := cliStatus(t, environ, dir)
		if st.Pending != 0 || st.Applied != 2 {
			t.Fatalf("status after apply: %+v", st)
		}

		// The service on the applied schema, without auto-migration.
		s := startServe(t, bin, t.TempDir(), environ, "--migrate=false")
		s.waitReady(time.Minute)
		resp, err := http.Post(s.base+"/orders", "application/json", strings.NewReader(
			`{"customer": "a@example.com", "lines": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 100}]}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("POST /orders on the applied schema: %d\n%s", resp.StatusCode, tail(s.stderr.String(), 20))
		}
		s.sigterm()
		if code, _ := s.waitExit(10 * time.Second); code != 0 {
			t.Fatalf("bento serve exit %d\n%s", code, tail(s.stderr.String(), 20))
		}

		// An applied file edited, with atlas.sum left alone.
		b, err := os.ReadFile(second)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(second, append(b, "-- edited\n"...), 0o644); err != nil {
			t.Fatal(err)
		}
		r = runCLI(t, environ, "migrate", "apply", "--dir", dir)
		if r.code != exitFail || !strings.Contains(r.stderr, filepath.Base(second)) || !strings.HasPrefix(r.stderr, "bento migrate apply: ") {
			t.Fatalf("apply with an edited file: want exit 1 naming %s\n%s", filepath.Base(second), r)
		}
		assertOneLine(t, "stderr", r.stderr)
		if r := runCLI(t, environ, "migrate", "status", "--dir", dir); r.code != exitFail || !strings.Contains(r.stderr, "atlas.sum") {
			t.Fatalf("status with an edited file: want exit 1 naming atlas.sum\n%s", r)
		}
		// Rehashed, the edit still shows: the revision keeps the checksum.
		if r := runCLI(t, environ, "migrate", "hash", "--dir", dir); r.code != exitOK {
			t.Fatalf("migrate hash\n%s", r)
		}
		r = runCLI(t, environ, "migrate", "apply", "--dir", dir)
		if r.code != exitFail || !strings.Contains(r.stderr, filepath.Base(second)) || !strings.Contains(r.stderr, "applied with checksum") {
			t.Fatalf("apply with an edited, rehashed file: want exit 1 naming %s\n%s", filepath.Base(second), r)
		}
		r = runCLI(t, environ, "migrate", "status", "--dir", dir)
		if r.code != exitFail || !strings.Contains(r.stdout, "CHANGED SINCE") {
			t.Fatalf("status with an edited, rehashed file: want exit 1 and CHANGED SINCE\n%s", r)
		}
	})
}

// TestServeWithoutMigrate: bento serve --migrate=false leaves a fresh
// database without tables (the schema is the migration files' business).
func TestServeWithoutMigrate(t *testing.T) {
	bin := buildBinary(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "fresh.db")
	s := startServe(t, bin, dir, []string{"DB_URL=sqlite://" + file}, "--migrate=false")
	s.waitReady(time.Minute)
	s.sigterm()
	if code, _ := s.waitExit(10 * time.Second); code != 0 {
		t.Fatalf("bento serve exit %d\n%s", code, tail(s.stderr.String(), 20))
	}
	db, err := sql.Open("sqlite3", "file:"+file+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var tables int
	if err := db.QueryRow("SELECT count(*) FROM sqlite_master WHERE type = 'table'").Scan(&tables); err != nil {
		t.Fatal(err)
	}
	if tables != 0 {
		t.Errorf("bento serve --migrate=false created %d tables", tables)
	}
}

// TestMigrateSubcommandUsage: the migrate subcommands' usage errors exit 2
// with one line saying what is accepted, before touching a database.
func TestMigrateSubcommandUsage(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"migrate", "diff"}, "one NAME"},
		{[]string{"migrate", "diff", "a", "b"}, "one NAME"},
		{[]string{"migrate", "apply", "now"}, `"now"`},
		{[]string{"migrate", "status", "x"}, `"x"`},
		{[]string{"migrate", "rollback"}, "diff, apply, status, hash"},
		{[]string{"migrate", "apply", "--dev-url", "nope"}, "--dev-url"},
	} {
		r := runCLI(t, []string{"DB_URL=sqlite://" + filepath.Join(t.TempDir(), "u.db")}, tc.args...)
		if r.code != exitConfig || !strings.Contains(r.stderr, tc.want) || r.stdout != "" {
			t.Errorf("%v: want exit 2 and %q\n%s", tc.args, tc.want, r)
		}
		assertOneLine(t, "stderr", r.stderr)
	}
}

// cliStatus runs bento migrate status --json.
func cliStatus(t *testing.T, environ []string, dir string) bento.MigrationStatus {
	t.Helper()
	r := runCLI(t, environ, "migrate", "status", "--json", "--dir", dir)
	if r.code != exitOK {
		t.Fatalf("migrate status\n%s", r)
	}
	var st bento.MigrationStatus
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("migrate status --json: %v\n%s", err, r)
	}
	return st
}

// runProcess runs the bento binary with only the given environment.
func runProcess(t *testing.T, bin string, environ []string, args ...string) result {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = t.TempDir()
	cmd.Env = append([]string{"HOME=" + cmd.Dir}, environ...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	r := result{code: -1, stdout: stdout.String(), stderr: stderr.String(), elapsed: time.Since(start)}
	if cmd.ProcessState != nil {
		r.code = cmd.ProcessState.ExitCode()
	}
	if err != nil && cmd.ProcessState == nil {
		r.stderr += "\n" + err.Error()
	}
	return r
}
