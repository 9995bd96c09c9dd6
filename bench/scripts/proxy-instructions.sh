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
up_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
hub_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bench" upstream --port "$up_port" >/dev/null 2>&1 &
up=$!
SWITCHBOARD_LOG=warn SWITCHBOARD_ADMIN_TOKEN=$token \
  valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" \
  "$hub" serve --listen "127.0.0.1:$hub_port" --data-dir "$work/data" >"$work/hub.log" 2>&1 &
vg=$!
trap 'kill $vg $up 2>/dev/null || true; rm -rf "$work"' EXIT
base="http://127.0.0.1:$hub_port"
for _ in $(seq 1 300); do curl -fs -o /dev/null "$base/healthz" && break; sleep 0.2; done
curl -fs -o /dev/null -H "$auth" -H 'content-type: application/json' \
  -d "{\"id\":\"upstream-1\",\"type\":\"bench\",\"endpoint\":\"http://127.0.0.1:$up_port\"}" \
  "$base/api/v1/agents/register"
for _ in $(seq 1 100); do curl -fs -o /dev/null -H "$auth" "$base/gw/bench/ready" && break; sleep 0.2; done
wrk -t1 -c8 -d3s -H "$auth" "$base/gw/bench/x" >/dev/null
callgrind_control -z "$vg" >/dev/null
requests=$(wrk -t1 -c8 -d10s -H "$auth" "$base/gw/bench/x" | awk '/requests in/ {print $1}')
callgrind_control -d "$vg" >/dev/null
sleep 1
total=$(awk '/^summary:|^totals:/ {print $2; exit}' "$work"/cg.out.1)
echo "requests: $requests"
echo "instructions: $total"
echo "instructions per request: $((total / requests))"
