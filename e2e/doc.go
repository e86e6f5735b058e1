// Package e2e holds Bento's end-to-end fault suite: it drives real
// processes (bento serve, bento relay, bento bench) against real servers —
// the machine's PostgreSQL and MariaDB, private server instances it can
// restart (initdb / mariadb-install-db), private NATS servers — injects one
// fault per test under load, and checks the invariants by counting:
// orders acknowledged = orders in the database = OrderPlaced rows in the
// outbox = messages in the stream (by event id), no duplicate orders, no
// idle-in-transaction sessions left, and every caller that got an error got
// a clear, classified one.
//
// go test ./e2e runs the suite with the durations of CI; -e2e.long runs the
// long variants (see docs/reliability.md).
package e2e
