# Sourced by the *-instructions.sh scripts. Given $hub (the binary), $token
# (the admin token) and $work (a scratch directory), starts the hub under
# callgrind on a free port, waits until it answers, and sets $vg (its pid)
# and $base (its URL); on exit it is stopped, with $up if set, and $work
# removed. `count_since_zeroed N` dumps the counters and prints the
# instructions per request for N requests.

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

hub_port=$(free_port)
SWITCHBOARD_LOG=warn SWITCHBOARD_ADMIN_TOKEN=$token \
  valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" \
  "$hub" serve --listen "127.0.0.1:$hub_port" --data-dir "$work/data" >"$work/hub.log" 2>&1 &
vg=$!
trap 'kill $vg ${up:-} 2>/dev/null || true; rm -rf "$work"' EXIT
base="http://127.0.0.1:$hub_port"
for _ in $(seq 1 300); do curl -fs -o /dev/null "$base/healthz" && break; sleep 0.2; done

count_since_zeroed() {
  callgrind_control -d "$vg" >/dev/null
  sleep 1
  local total
  total=$(awk '/^summary:|^totals:/ {print $2; exit}' "$work"/cg.out.1)
  echo "requests: $1"
  echo "instructions: $total"
  echo "instructions per request: $((total / $1))"
}
