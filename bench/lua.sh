#!/usr/bin/env bash
# The Lua scripts alone under redis-benchmark: this project's lua/ratelimit.lua (token bucket and sliding
# window, Redis TIME and worker-clock modes, with and without override keys, several limits in one call)
# beside @upstash/ratelimit's token bucket and sliding window scripts, a new key per call (__rand_int__;
# redis-benchmark draws each occurrence separately). Every invocation is checked once with redis-cli first:
# the script exits 1 if one returns an error or an unexpected reply (redis-benchmark would happily time
# error replies). Bounded: REQUESTS calls per run (default 200000), -c 32, median of ROUNDS runs (default 3).
# Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${REQUESTS:-200000}
CLIENTS=32
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
cli() { redis-cli -p "$port" "$@"; }

# Our script as a vanilla Redis runs it: the plain variant (shebang line emptied, as build.rs does).
ours=$(python3 -c 'import sys; s=open("lua/ratelimit.lua").read(); sys.stdout.write(s[s.index("\n"):])' | cli -x script load)
# @upstash/ratelimit's single-region scripts, taken from its dist (shebang line emptied the same way).
upstash_script() {
  node -e '
    const src = require("fs").readFileSync("node_modules/@upstash/ratelimit/dist/index.js", "utf8");
    const m = src.match(new RegExp("var " + process.argv[1] + " = `([\\s\\S]*?)`;"));
    if (!m) { console.error("bench: " + process.argv[1] + " not found in @upstash/ratelimit dist"); process.exit(1); }
    process.stdout.write(m[1].replace(/^#!lua[^\n]*\n/, "\n"));
  ' "$1"
}
tb_anchor=$(upstash_script tokenBucketLimitScript | cli -x script load)
sw_anchor=$(upstash_script slidingWindowLimitScript | cli -x script load)
for sha in "$ours" "$tb_anchor" "$sw_anchor"; do
  [[ $sha =~ ^[0-9a-f]{40}$ ]] || { echo "bench: SCRIPT LOAD failed: $sha" >&2; exit 1; }
done

now=$(($(date +%s) * 1000))
window_ms=60000
cw=$((now / window_ms))
R=0.08333333333333333   # 5 per minute
# The override keys the production Worker always passes (caller, route, tier), most specific first.
O_CALLER="ratelimit:override:caller:__rand_int__"
O_ROUTE="ratelimit:override:route:/api"
O_TIER="ratelimit:override:tier:free"
O_SET="ratelimit:override:caller:bench"
cli set "$O_SET" "100 1.6666666666666667" >/dev/null
cli del "$O_ROUTE" "$O_TIER" >/dev/null

# @upstash/ratelimit's token bucket: KEYS [identifier], ARGV [maxTokens, interval ms, refillRate, now ms, incrementBy]
# (its optional dynamic-limit KEYS[2] is passed only with dynamicLimits: on, off by default).
A_TB=(evalsha "$tb_anchor" 1 "anchor:__rand_int__" 5 "$window_ms" 5 "$now" 1)
# Its sliding window: KEYS [identifier:currentWindow, identifier:previousWindow], ARGV [tokens, now ms,
# window ms, incrementBy] (Ratelimit.slidingWindow(5, "60 s"), no dynamic limit key).
A_SW=(evalsha "$sw_anchor" 2 "anchor-sw:__rand_int__:$cw" "anchor-sw:__rand_int__:$((cw - 1))" 5 "$now" "$window_ms" 1)
# Ours: KEYS [limit keys..., override keys...], ARGV [clock, op, n, then per limit: algo capacity rate ttl cost mode overrides lease].
T_REDIS=(evalsha "$ours" 1 "rate:__rand_int__:/api" "" "" 1 t 5 $R 60 1 0 "" 0)
T_WORKER=(evalsha "$ours" 1 "rate:__rand_int__:/api" "$now" "" 1 t 5 $R 60 1 0 "" 0)
W_REDIS=(evalsha "$ours" 1 "rate:__rand_int__:/api" "" "" 1 w 5 $R 120 1 0 "" 0)
W_WORKER=(evalsha "$ours" 1 "rate:__rand_int__:/api" "$now" "" 1 w 5 $R 120 1 0 "" 0)
T_OVR=(evalsha "$ours" 4 "rate:__rand_int__:/api" "$O_CALLER" "$O_ROUTE" "$O_TIER" "" "" 1 t 5 $R 60 1 0 "2 3 4" 0)
T_OVR_SET=(evalsha "$ours" 4 "rate:__rand_int__:/api" "$O_SET" "$O_ROUTE" "$O_TIER" "" "" 1 t 5 $R 60 1 0 "2 3 4" 0)
W_OVR=(evalsha "$ours" 4 "rate:__rand_int__:/api" "$O_CALLER" "$O_ROUTE" "$O_TIER" "" "" 1 w 5 $R 120 1 0 "2 3 4" 0)
# Three limits: per caller, per IP, and a global one on a shared key (sized so that every call is allowed:
# a global limit that runs dry would make this row time denials, which write nothing).
G=(1000000000 16666666.666666668 60 1 0 "" 0)
M_TTT=(evalsha "$ours" 3 "rate:__rand_int__:/a" "rate:@ip/__rand_int__:/a" "rate:@global:/a" "" "" 3
  t 5 $R 60 1 0 "" 0 t 100 1.6666666666666667 60 1 0 "" 0 t "${G[@]}")
M_TWT=(evalsha "$ours" 3 "rate:__rand_int__:/a" "rate:@ip/__rand_int__:/a" "rate:@global:/a" "" "" 3
  t 5 $R 60 1 0 "" 0 w 100 1.6666666666666667 120 1 0 "" 0 t "${G[@]}")

# check LABEL LINES LINE VALUE CMD...: one call (with __rand_int__ replaced), which must reply LINES integers,
# line LINE being VALUE; exits 1 otherwise.
check() {
  local label=$1 lines=$2 at=$3 want=$4; shift 4
  local args=("${@//__rand_int__/check-$RANDOM}") reply
  reply=$(cli "${args[@]}" 2>&1) || true
  if ! grep -qvE '^-?[0-9]+$' <<<"$reply" && [[ $(wc -l <<<"$reply") -eq $lines ]] && [[ $(sed -n "${at}p" <<<"$reply") == "$want" ]]; then
    return 0
  fi
  echo "bench: $label: unexpected reply (want $lines integers, line $at = $want):" >&2
  echo "$reply" >&2
  exit 1
}
# Allowed with 4 tokens left (anchors: remaining first); ours: allowed, then capacity of limit 1 on line 6
# (ours: 2 + 6 integers per limit + the script's time).
check "@upstash/ratelimit token bucket" 3 1 4 "${A_TB[@]}"
check "@upstash/ratelimit sliding window" 2 1 4 "${A_SW[@]}"
check "token bucket, Redis TIME" 9 1 1 "${T_REDIS[@]}"
check "token bucket, worker clock" 9 1 1 "${T_WORKER[@]}"
check "sliding window, Redis TIME" 9 1 1 "${W_REDIS[@]}"
check "sliding window, worker clock" 9 1 1 "${W_WORKER[@]}"
check "token bucket + overrides (unset)" 9 1 1 "${T_OVR[@]}"
check "token bucket + overrides (unset): capacity" 9 6 5 "${T_OVR[@]}"
check "token bucket + caller override set" 9 1 1 "${T_OVR_SET[@]}"
check "token bucket + caller override set: capacity" 9 6 100 "${T_OVR_SET[@]}"
check "sliding window + overrides (unset)" 9 1 1 "${W_OVR[@]}"
check "3 limits (t, t, t)" 21 1 1 "${M_TTT[@]}"
check "3 limits (t, w, t)" 21 1 1 "${M_TWT[@]}"

# Every run starts from an empty keyspace (scripts stay loaded): keys left by earlier runs (200,000 per
# run, TTL 60 s) would make later rows pay for a growing, rehashing keyspace.
once() { cli flushall >/dev/null; cli set "$O_SET" "100 1.6666666666666667" >/dev/null; redis-benchmark -p "$port" -c "$CLIENTS" -n "$REQUESTS" -r 1000000000 -q "$@" | tr '\r' '\n' | grep -o '[0-9.]* requests per second' | tail -n1 | cut -d' ' -f1; }
# The median of ROUNDS runs (default 3): single runs of the same row differ by up to ±15% on 2 cores.
run() { for _ in $(seq "${ROUNDS:-3}"); do once "$@"; done | sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
a=$(run "${A_TB[@]}")
s=$(run "${A_SW[@]}")
rows=()
row() { local label=$1 kind=$2; shift 2; rows+=("$label|$kind|$(run "$@")"); }
row "edge-ratelimit token bucket, 1 limit, Redis TIME" t "${T_REDIS[@]}"
row "edge-ratelimit token bucket, 1 limit, worker clock" t "${T_WORKER[@]}"
row "edge-ratelimit sliding window, 1 limit, Redis TIME" w "${W_REDIS[@]}"
row "edge-ratelimit sliding window, 1 limit, worker clock" w "${W_WORKER[@]}"
row "edge-ratelimit token bucket, 1 limit + 3 override keys (unset), Redis TIME" t "${T_OVR[@]}"
row "edge-ratelimit token bucket, 1 limit + 3 override keys (caller's set), Redis TIME" t "${T_OVR_SET[@]}"
row "edge-ratelimit sliding window, 1 limit + 3 override keys (unset), Redis TIME" w "${W_OVR[@]}"
row "edge-ratelimit 3 limits in one call (t, t, t), Redis TIME" t "${M_TTT[@]}"
row "edge-ratelimit 3 limits in one call (t, w, t), Redis TIME" m "${M_TWT[@]}"

echo "| script (redis-benchmark, -c $CLIENTS, $REQUESTS calls, new key per call) | calls/s | × @upstash/ratelimit token bucket | × @upstash/ratelimit sliding window |"
echo "|---|---|---|---|"
awk -v a="$a" -v s="$s" 'BEGIN {
  printf "| @upstash/ratelimit token bucket (client time) | %s | 1.00 | |\n", a
  printf "| @upstash/ratelimit sliding window (client time) | %s | %.2f | 1.00 |\n", s, s / a
}'
for r in "${rows[@]}"; do
  IFS='|' read -r label kind v <<<"$r"
  awk -v l="$label" -v k="$kind" -v v="$v" -v a="$a" -v s="$s" 'BEGIN {
    printf "| %s | %s | %.2f |%s|\n", l, v, v / a, (k == "w" ? sprintf(" %.2f ", v / s) : " ")
  }'
done
