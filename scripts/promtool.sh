#!/usr/bin/env bash
# promtool.sh checks Bento's Prometheus alerting rules with promtool:
# `promtool check rules deploy/prometheus/alerts.yml` (syntax, PromQL) and
# `promtool test rules deploy/prometheus/alerts_test.yml` (each alert fires
# from synthetic series, and none on a healthy service). It also parses the
# PromQL of every panel of the Grafana dashboard deploy/grafana/bento.json:
# jq turns the expressions, with Grafana's variables replaced, into
# recording rules for `promtool check rules`.
#
# promtool is taken from $PROMTOOL, else from PATH, else from a cache
# directory ($BENTO_TOOLS_DIR, default ~/.cache/bento-tools). When it is in
# none of them, the script downloads Debian's prometheus package with
# `apt-get download` (19 MB, seconds) and extracts only usr/bin/promtool
# into the cache: nothing is installed, no user created, no Prometheus
# server started. Idempotent: a cached promtool is reused. Building promtool
# with `go install` instead would fetch some 250 modules (cloud SDKs,
# Kubernetes clients) and compile for minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
  echo "promtool: $*" >&2
  exit 1
}

tmp=""   # the download directory, if any
rules="" # the dashboard's expressions as recording rules
trap 'rm -rf ${tmp:+"$tmp"} ${rules:+"$rules"}' EXIT

cache=${BENTO_TOOLS_DIR:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/bento-tools}

works() { [ -n "$1" ] && "$1" --version >/dev/null 2>&1; }

install_promtool() {
  command -v apt-get >/dev/null 2>&1 ||
    fail "promtool is not on PATH and apt-get is missing to fetch it: install promtool (Prometheus) or set PROMTOOL=/path/to/promtool"
  tmp=$(mktemp -d)
  local sandbox=()
  # As root, apt-get download drops to the _apt user, which cannot write
  # to a private temporary directory.
  if [ "$(id -u)" = 0 ]; then sandbox=(-o APT::Sandbox::User=root); fi
  echo "promtool: fetching Debian's prometheus package to extract promtool into $cache"
  if ! (cd "$tmp" && apt-get -qq "${sandbox[@]}" download prometheus) >"$tmp/apt.log" 2>&1; then
    # A fresh machine may have no package lists yet.
    if [ "$(id -u)" = 0 ]; then
      apt-get -qq update >>"$tmp/apt.log" 2>&1 || true
    fi
    (cd "$tmp" && apt-get -qq "${sandbox[@]}" download prometheus) >>"$tmp/apt.log" 2>&1 ||
      fail "could not download Debian's prometheus package (for promtool):
$(tail -n 5 "$tmp/apt.log")
install promtool (Prometheus) or set PROMTOOL=/path/to/promtool"
  fi
  local deb
  deb=$(ls "$tmp"/prometheus_*.deb)
  mkdir -p "$tmp/x" "$cache"
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp/x" ./usr/bin/promtool ||
    fail "$deb holds no usr/bin/promtool"
  install -m 0755 "$tmp/x/usr/bin/promtool" "$cache/promtool.new"
  mv "$cache/promtool.new" "$cache/promtool"
}

promtool=${PROMTOOL:-}
if [ -n "$promtool" ]; then
  works "$promtool" || fail "PROMTOOL=$promtool does not run (promtool --version failed)"
elif works "$(command -v promtool || true)"; then
  promtool=$(command -v promtool)
else
  promtool=$cache/promtool
  works "$promtool" || install_promtool
  works "$promtool" || fail "$promtool does not run after extracting it"
fi

echo "promtool: $("$promtool" --version 2>&1 | head -n 1)"
"$promtool" check rules deploy/prometheus/alerts.yml
"$promtool" test rules deploy/prometheus/alerts_test.yml

command -v jq >/dev/null 2>&1 || fail "jq is needed to read deploy/grafana/bento.json (apt-get install jq)"
rules=$(mktemp --suffix=.json)
jq '[.panels[] | select(.type != "row") | .targets[] | .expr] | to_entries
  | {groups: [{name: "grafana-dashboard", rules: map({
      record: "bento_dashboard:panel_expr_\(.key)",
      expr: (.value | gsub("\\$__rate_interval"; "5m") | gsub("\\$__range"; "1h") | gsub("\\$(job|instance)"; ".*"))})}]}' \
  deploy/grafana/bento.json >"$rules"
echo "Checking the PromQL of deploy/grafana/bento.json's panels"
"$promtool" check rules "$rules"
