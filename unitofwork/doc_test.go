package unitofwork_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDocCodeBlocks keeps docs/unitofwork.md honest: every ```go block of
// the page must be a contiguous excerpt (blank lines and indentation aside)
// of a file that compiles — the examples in this package, the reference
// schema or ent's generator — so no block can show code that does not
// build.
func TestDocCodeBlocks(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "docs", "unitofwork.md"))
	if err != nil {
		t.Fatal(err)
	}
	var sources [][]string
	for _, f := range []string{"example_test.go", "../schema/order.go", "../ent/entc.go"} {
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
			t.Errorf("Go block %d of docs/unitofwork.md is not an excerpt of example_test.go, schema/order.go or ent/entc.go:\n%s", i+1, block)
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
