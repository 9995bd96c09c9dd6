#!/usr/bin/env bash
# Instructions the hub executes in user space per durable publish over
# HTTP (`POST /api/v1/events`, one 128-byte event with a fresh id each),
# counted by callgrind: repeatable for one binary whatever else the machine
# does, unlike times. wrk (8 connections) warms the hub up for 3 s, the
# counters are zeroed, wrk runs 10 s, and the instructions of every thread
# (serving threads and the group commit alike) are divided by the requests
# wrk counted. Under valgrind the threads take turns on one core, so group
# commits are smaller than at full speed: compare builds with it, not with
# the durable scenario's CPU figures.
#
#   bench/scripts/publish-instructions.sh [HUB_BINARY]
#
# Needs valgrind, wrk and curl (Debian packages) and a release build of
# switchboard.
set -euo pipefail
hub=${1:-target/release/switchboard}
token=switchboard-bench-admin-token-0123456789abcdef
work=$(mktemp -d)
. "$(dirname "$0")/callgrind-hub.sh"
# Ids differ between the two wrk runs too: a repeated id would be
# answered from the deduplication window, a different path.
cat >"$work/publish.lua" <<LUA
local n = 0
function init(args)
  prefix = "w" .. tostring(os.time()) .. "-" .. tostring(os.clock()) .. "-"
end
request = function()
  n = n + 1
  local body = '{"specversion":"1.0","id":"' .. prefix .. n .. '","source":"/bench/durable",'
    .. '"type":"bench.event","topic":"bench.durable","datacontenttype":"application/json",'
    .. '"data":{"payload":"' .. string.rep("x", 100) .. '"}}'
  return wrk.format("POST", "/api/v1/events",
    {["Content-Type"] = "application/json", ["Authorization"] = "Bearer $token"}, body)
end
LUA
wrk -t1 -c8 -d3s -s "$work/publish.lua" "$base" >/dev/null
callgrind_control -z "$vg" >/dev/null
out=$(wrk -t1 -c8 -d10s -s "$work/publish.lua" "$base")
requests=$(echo "$out" | awk '/requests in/ {print $1}')
if echo "$out" | grep -q "Non-2xx"; then
  echo "some publishes were refused:" >&2
  echo "$out" >&2
  exit 1
fi
count_since_zeroed "$requests"
