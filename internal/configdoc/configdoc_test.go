package configdoc

import (
	"os"
	"testing"
)

func TestREADMETableIsCurrent(t *testing.T) {
	doc, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	want, err := Splice(string(doc))
	if err != nil {
		t.Fatal(err)
	}
	if want != string(doc) {
		t.Fatalf("README.md's settings table is stale: run go generate ./internal/configdoc and commit README.md")
	}
}
