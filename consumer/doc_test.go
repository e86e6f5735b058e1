package consumer_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestDocCodeBlocks keeps docs/consumers.md honest: every ```go block of
// the page is a contiguous excerpt (blank lines and indentation aside) of
// a file that compiles: this package's examples or the reference
// projection.
func TestDocCodeBlocks(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "docs", "consumers.md"))
	if err != nil {
		t.Fatal(err)
	}
	var sources [][]string
	for _, f := range []string{"example_test.go", "../shop/summary.go"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		sources = append(sources, codeLines(string(b)))
	}
	var blocks []string
	for i, part := range strings.Split(string(doc), "```go\n")[1:] {
		block, _, ok := strings.Cut(part, "```")
		if !ok {
			t.Fatalf("Go block %d of docs/consumers.md is not closed", i+1)
		}
		blocks = append(blocks, block)
	}
	if len(blocks) < 3 {
		t.Fatalf("found %d Go blocks in docs/consumers.md; the page lost its examples?", len(blocks))
	}
	for i, block := range blocks {
		lines := codeLines(block)
		if !slices.ContainsFunc(sources, func(src []string) bool { return excerpt(src, lines) }) {
			t.Errorf("Go block %d of docs/consumers.md is not an excerpt of example_test.go or shop/summary.go:\n%s", i+1, block)
		}
	}
}

// codeLines returns the non-blank lines of s without their indentation.
func codeLines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// excerpt reports whether run appears in src as consecutive lines.
func excerpt(src, run []string) bool {
	for i := 0; len(run) > 0 && i+len(run) <= len(src); i++ {
		if slices.Equal(src[i:i+len(run)], run) {
			return true
		}
	}
	return false
}
