#!/usr/bin/env bash
# Instructions the hub executes in user space per proxied request, counted
# by callgrind: repeatable for one binary whatever else the machine does,
# unlike times. The hub (authentication on) proxies to the bench's upstream;
# wrk warms it up for 3 s, then the counters are zeroed, wrk runs 10 s, and
# the counters are dumped and divided by the requests wrk counted.
#
#   bench/scripts/proxy-instructions.sh [HUB_BINARY]
#
# Needs valgrind, wrk and curl (Debian packages), and release builds of
# switchboard and switchboard-bench.
set -euo pipefail
hub=${1:-target/release/switchboard}
bench=target/release/switchboard-bench
token=switchboard-bench-admin-token-0123456789abcdef
auth="Authorization: Bearer $token"
work=$(mktemp -d)
. "$(dirname "$0")/callgrind-hub.sh"
up_port=$(free_port)
"$bench" upstream --port "$up_port" >/dev/null 2>&1 &
up=$!
curl -fs -o /dev/null -H "$auth" -H 'content-type: application/json' \
  -d "{\"id\":\"upstream-1\",\"type\":\"bench\",\"endpoint\":\"http://127.0.0.1:$up_port\"}" \
  "$base/api/v1/agents/register"
for _ in $(seq 1 100); do curl -fs -o /dev/null -H "$auth" "$base/gw/bench/ready" && break; sleep 0.2; done
wrk -t1 -c8 -d3s -H "$auth" "$base/gw/bench/x" >/dev/null
callgrind_control -z "$vg" >/dev/null
requests=$(wrk -t1 -c8 -d10s -H "$auth" "$base/gw/bench/x" | awk '/requests in/ {print $1}')
count_since_zeroed "$requests"
