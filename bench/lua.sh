#!/usr/bin/env bash
# The Lua scripts alone under redis-benchmark: this project's token bucket (one limit, Redis TIME and
# worker-clock modes; three limits in one call) beside @upstash/ratelimit's token bucket script, a new
# key per call. Bounded: REQUESTS calls each (default 200000). Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${REQUESTS:-200000}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
ours=$(python3 -c 'import sys; s=open("lua/ratelimit.lua").read(); sys.stdout.write(s[s.index("\n"):])' | redis-cli -p "$port" -x script load)
anchor=$(node -e '
  const src = require("fs").readFileSync("node_modules/@upstash/ratelimit/dist/index.js", "utf8");
  const m = src.match(/tokenBucketLimitScript = `([\s\S]*?)`;/);
  process.stdout.write(m[1].replace(/^#!lua[^\n]*\n/, "\n"));
' | redis-cli -p "$port" -x script load)
now=$(($(date +%s) * 1000))
run() { redis-benchmark -p "$port" -c 32 -n "$REQUESTS" -r 1000000000 -q "$@" | tr '\r' '\n' | grep -o '[0-9.]* requests per second' | tail -n1 | cut -d' ' -f1; }
a=$(run evalsha "$anchor" 1 "anchor:__rand_int__" 5 60000 5 "$now" 1)
t=$(run evalsha "$ours" 1 "rate:__rand_int__:/api" "" 5 0.08333333333333333 60 1 0)
w=$(run evalsha "$ours" 1 "rate:__rand_int__:/api" "$now" 5 0.08333333333333333 60 1 0)
m=$(run evalsha "$ours" 3 "rate:__rand_int__:/a" "rate:@ip/__rand_int__:/a" "rate:@global:/a" "" 5 0.08333333333333333 60 1 0 100 1.6666666666666667 60 1 0 1000 16.666666666666668 60 1 0)
echo "| script (redis-benchmark, -c 32, $REQUESTS calls, new key per call) | calls/s | × @upstash/ratelimit |"
echo "|---|---|---|"
echo "| @upstash/ratelimit token bucket (client time) | $a | 1.00 |"
awk -v t="$t" -v w="$w" -v m="$m" -v a="$a" 'BEGIN {
  printf "| edge-ratelimit, 1 limit, Redis TIME | %s | %.2f |\n", t, t / a
  printf "| edge-ratelimit, 1 limit, worker clock | %s | %.2f |\n", w, w / a
  printf "| edge-ratelimit, 3 limits in one call | %s | %.2f |\n", m, m / a
}'
