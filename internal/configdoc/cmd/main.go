// Command cmd rewrites the settings table of README.md (go generate).
package main

import (
	"log"
	"os"

	"github.com/bento-go/bento/internal/configdoc"
)

func main() {
	path := "README.md"
	if len(os.Args) > 1 {
		path = os.Args[1]
	}
	doc, err := os.ReadFile(path)
	if err != nil {
		log.Fatal(err)
	}
	out, err := configdoc.Splice(string(doc))
	if err != nil {
		log.Fatal(err)
	}
	if out != string(doc) {
		if err := os.WriteFile(path, []byte(out), 0o644); err != nil {
			log.Fatal(err)
		}
	}
}
