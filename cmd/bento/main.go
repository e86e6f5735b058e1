// Command bento is Bento's command line and its only composition root:
// it loads the configuration, opens the database with the layers the
// command needs, and runs one subcommand.
//
//	bento migrate            create or update the schema
//	bento migrate diff NAME  write a versioned migration file (apply, status, hash)
//	bento health             exit 0 if the database answers, 1 if not
//	bento info [--json]      dialect, server version, redacted URL, pool
//	bento version            the build's version
//
// Every setting is an environment variable (DB_URL) and a flag (--db-url);
// --config names an optional YAML file. A bad setting exits 2 with one line
// on stderr naming it.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], env{stdout: os.Stdout, stderr: os.Stderr, environ: os.Environ})
	stop()
	os.Exit(code)
}
