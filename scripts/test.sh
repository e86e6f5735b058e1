#!/usr/bin/env bash
# test.sh is Bento's test command (the README's, and CI's): it starts the
# services the tests need, makes the PostgreSQL streaming replica, checks
# that generated code is up to date, vets, and runs every test against the
# real servers.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh
scripts/replica.sh
scripts/promtool.sh # alerting rules: promtool check rules, promtool test rules

echo "test: go generate leaves no diff"
go generate ./...
if ! git diff --exit-code --stat -- ent/ README.md; then
  echo "test: go generate ./... changed generated code: run it and commit the result" >&2
  exit 1
fi
echo "test: gofmt and go vet"
unformatted=$(gofmt -l $(git ls-files '*.go'))
if [ -n "$unformatted" ]; then
  echo "test: gofmt would change: $unformatted" >&2
  exit 1
fi
go vet ./...
echo "test: go test"
go test -count=1 -timeout 25m ${BENTO_TEST_FLAGS:-} ./...

echo "test: short fuzz runs (the committed corpora also run as regression tests above)"
for target in "./config FuzzParseURL" "./config FuzzDuration" "./shop FuzzPlaceOrderBody"; do
  set -- $target
  go test "$1" -run '^$' -fuzz "^$2\$" -fuzztime "${BENTO_FUZZTIME:-10s}"
done
