package unitofwork_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestDocCodeBlocks keeps docs/unitofwork.md honest: every ```go block of
// the page must be a contiguous excerpt (blank lines and indentation aside)
// of a file that compiles — the examples in this package, the reference
// schema, ent's generator, or the new module that TestNewModule builds —
// so no block can show code that does not build.
func TestDocCodeBlocks(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "docs", "unitofwork.md"))
	if err != nil {
		t.Fatal(err)
	}
	var sources [][]string
	for _, f := range []string{"example_test.go", "../schema/order.go", "../ent/entc.go",
		"testdata/newmodule/schema/order.go", "testdata/newmodule/ent/entc.go",
		"testdata/newmodule/ent/generate.go", "testdata/newmodule/main.go"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		sources = append(sources, normalize(string(b)))
	}
	blocks := goBlocks(string(doc))
	if len(blocks) < 10 {
		t.Fatalf("found %d Go blocks in docs/unitofwork.md; the page lost its examples?", len(blocks))
	}
	for i, block := range blocks {
		lines := normalize(block)
		found := false
		for _, src := range sources {
			if containsRun(src, lines) {
				found = true
				break
			}
		}
		if !found {
			t.Errorf("Go block %d of docs/unitofwork.md is not an excerpt of example_test.go, schema/order.go, ent/entc.go or testdata/newmodule:\n%s", i+1, block)
		}
	}
}

// goBlocks returns the bodies of the ```go fences of a Markdown page.
func goBlocks(md string) []string {
	var out []string
	var cur []string
	in := false
	for _, l := range strings.Split(md, "\n") {
		switch {
		case !in && strings.TrimSpace(l) == "```go":
			in, cur = true, nil
		case in && strings.TrimSpace(l) == "```":
			in = false
			out = append(out, strings.Join(cur, "\n"))
		case in:
			cur = append(cur, l)
		}
	}
	return out
}

// normalize returns the non-blank lines of s without their indentation.
func normalize(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// containsRun reports whether run appears in src as consecutive lines.
func containsRun(src, run []string) bool {
	if len(run) == 0 {
		return false
	}
	for i := 0; i+len(run) <= len(src); i++ {
		match := true
		for j := range run {
			if src[i+j] != run[j] {
				match = false
				break
			}
		}
		if match {
			return true
		}
	}
	return false
}

// TestNewModule follows docs/unitofwork.md's "From an empty module" with
// the files of testdata/newmodule: a module of its own that requires Bento
// (replaced by this repository), go generate with Bento's extension, then
// go run of a program that commits an order and its event on a SQLite
// file. It must print "pending events: 1". It works offline: the new
// module starts from this repository's go.sum, and the module cache
// already holds what this repository's tests need.
func TestNewModule(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is not on PATH, and this test runs it: %v", err)
	}
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.CopyFS(dir, os.DirFS(filepath.Join("testdata", "newmodule"))); err != nil {
		t.Fatal(err)
	}
	sum, err := os.ReadFile(filepath.Join(repo, "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "go.sum"), sum, 0o644); err != nil {
		t.Fatal(err)
	}
	gomod := "module example.com/shop\n\ngo 1.26.0\n\nrequire github.com/bento-go/bento v0.0.0-00010101000000-000000000000\n\n" +
		"replace github.com/bento-go/bento => " + repo + "\n"
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte(gomod), 0o644); err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(), "GOFLAGS=-mod=mod -buildvcs=false", "GOPROXY=off", "GOSUMDB=off", "GOWORK=off",
		"DB_URL=sqlite://"+filepath.Join(dir, "shop.db"))
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(goBin, args...)
		cmd.Dir, cmd.Env = dir, env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("go %s in the new module: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	run("generate", "./ent")
	if _, err := os.Stat(filepath.Join(dir, "ent", "bento.go")); err != nil {
		t.Fatalf("go generate did not write ent/bento.go (Bento's extension): %v", err)
	}
	if got := run("run", "."); strings.TrimSpace(got) != "pending events: 1" {
		t.Fatalf("go run . printed %q; want %q", got, "pending events: 1")
	}
}
