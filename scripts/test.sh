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

# with_progress runs a command and, every minute until it ends, prints how
# long it has run and which test binaries (its children named *.test) are
# running, so that a long run (e2e takes minutes) is never silent. The
# command's own output, go test's ok/FAIL lines included, is untouched.
#
# The command's output goes through a pipe: go test's vet step reopens
# /dev/stdout and fails with "copy_file_range: bad file descriptor" when
# that is a file (seen on a run with its output sent to a file).
with_progress() {
  local start pid ticker rc=0
  start=$(date +%s)
  "$@" 2>&1 | cat &
  pid=$!
  (
    while sleep 60; do
      kill -0 "$pid" 2>/dev/null || exit 0
      running=$(ps -eo args= 2>/dev/null | awk '{print $1}' | grep '\.test$' |
        xargs -r -n1 basename | sed 's/\.test$//' | sort -u | tr '\n' ' ' || true)
      echo "test: ... $(( ($(date +%s) - start) / 60 )) min into '$*'; running now: ${running:-building or starting packages}"
    done
  ) &
  ticker=$!
  wait "$pid" || rc=$?
  kill "$ticker" 2>/dev/null || true
  wait "$ticker" 2>/dev/null || true
  return "$rc"
}

# The module cache must hold every go.mod of the module graph, not only
# the modules the build needs: unitofwork's TestNewModule resolves a new
# module's graph offline (GOPROXY=off), and a module that predates graph
# pruning (pgpassfile) brings requirements no build of ours downloads.
echo "test: go list -m all (the module graph, into the module cache)"
go list -m all >/dev/null

echo "test: go generate leaves no diff"
go generate ./...
# Generated code that does not compile is a generator failure, never
# something to commit (ent's parallel formatting once dropped an import
# from ent/tx.go; ent/entc.go now formats serially).
if ! build_err=$(go build ./ent/... ./internal/configdoc/... 2>&1); then
  echo "$build_err" >&2
  echo "test: go generate ./... produced code that does not compile: do NOT commit it." >&2
  echo "test: restore the committed code (git checkout -- ent/ README.md), run go generate ./... again and report the failure." >&2
  exit 1
fi
if ! git diff --exit-code --stat -- ent/ README.md; then
  echo "test: go generate ./... changed generated code (it compiles): the committed code is out of date; run go generate ./... and commit the result" >&2
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
with_progress go test -count=1 -timeout 25m ${BENTO_TEST_FLAGS:-} ./...

echo "test: short fuzz runs (the committed corpora also run as regression tests above)"
# Budgets are counts of inputs, about 10 s each on 2 cores, not durations:
# with a duration, Go 1.26's fuzzing coordinator can report its own
# deadline as "context deadline exceeded" and fail a target that found
# nothing (golang/go#75804, fixed in Go 1.27); a count has no deadline.
# BENTO_FUZZTIME (a -fuzztime value) overrides them all.
for target in "./config FuzzParseURL 100000x" "./config FuzzRedact 2000x" "./config FuzzDuration 150000x" \
              "./shop FuzzPlaceOrderBody 12000x"; do
  set -- $target
  go test "$1" -run '^$' -fuzz "^$2\$" -fuzztime "${BENTO_FUZZTIME:-$3}"
done
