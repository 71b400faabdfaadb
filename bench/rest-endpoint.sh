#!/usr/bin/env bash
# Throughput of the local Upstash REST endpoint: EVALSHA of lua/ratelimit.lua (flagged, as the Worker
# sends it), one new bucket per request, driven by wrk on 127.0.0.1. Bounded: DURATION seconds (default 10).
# Prints the endpoint's figures beside the same script sent straight to Redis (redis-benchmark) as the ceiling.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-32}
command -v wrk >/dev/null || { echo "bench: installing wrk (apt-get)"; apt-get install -y -qq wrk >/dev/null; }
cargo build --quiet --release -p upstash-local
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
RP=$(port); HP=$(port); TOKEN=bench-token
redis-server --port "$RP" --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 &
redis_pid=$!
trap 'kill $redis_pid $rest_pid 2>/dev/null || true' EXIT
for _ in $(seq 50); do redis-cli -p "$RP" ping >/dev/null 2>&1 && break; sleep 0.1; done
target/release/upstash-local --listen "127.0.0.1:$HP" --redis "redis://127.0.0.1:$RP" --token "$TOKEN" >/dev/null &
rest_pid=$!
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$HP") 2>/dev/null && break; sleep 0.1; done
script=$(python3 -c 'import json; print(json.dumps(["SCRIPT","LOAD",open("lua/ratelimit.lua").read()]))')
SCRIPT_SHA=$(curl -s -H "Authorization: Bearer $TOKEN" -d "$script" "http://127.0.0.1:$HP/" | python3 -c 'import json,sys; print(json.load(sys.stdin)["result"])')
echo "bench: script $SCRIPT_SHA; wrk -t2 -c$CONNECTIONS -d${DURATION}s on 127.0.0.1 ($(nproc) cores shared by wrk, endpoint and Redis)"
rest=$(SCRIPT_SHA=$SCRIPT_SHA TOKEN=$TOKEN wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" -s bench/rest-endpoint.lua "http://127.0.0.1:$HP/" | grep '^RESULT')
# The plain variant (shebang line emptied), exactly as the Worker sends it to a vanilla Redis.
plain_sha=$(python3 -c 'import sys; s=open("lua/ratelimit.lua").read(); sys.stdout.write(s[s.index("\n"):])' | redis-cli -p "$RP" -x script load)
direct=$(redis-benchmark -p "$RP" -c "$CONNECTIONS" -n 200000 -r 1000000000 -q \
  evalsha "$plain_sha" 1 "rate:direct-__rand_int__:/api" "" 5 0.08333333333333333 60 1 | tr '\r' '\n' | grep -o '[0-9.]* requests per second' | tail -n1)
echo
echo "| path | EVALSHA/s | p50 | p99 | errors |"
echo "|---|---|---|---|---|"
echo "$rest" | awk '{for(i=2;i<=NF;i++){split($i,kv,"=");v[kv[1]]=kv[2]} printf "| upstash-local (HTTP/1.1 keep-alive, JSON) | %d | %.2f ms | %.2f ms | %d |\n", v["rps"], v["p50_us"]/1000, v["p99_us"]/1000, v["errors"]}'
echo "| redis-benchmark straight to Redis (ceiling) | ${direct% requests per second} | | | |"
