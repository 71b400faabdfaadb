#!lua flags=allow-key-locking
-- Token buckets, checked and consumed all-or-nothing in one atomic call.
--
-- Every key the script touches is in KEYS, so Upstash's allow-key-locking
-- (above) locks only these keys, and a cluster could route the call.
--
-- KEYS[i]            bucket i: a hash with fields `tokens` (may be fractional)
--                    and `lastRefill` (epoch seconds, may be fractional)
-- ARGV[1]            clock: "" = Redis TIME (default); otherwise the caller's
--                    epoch time in whole milliseconds (worker-clock mode)
-- ARGV[2 + 5(i-1)]   capacity of bucket i (tokens, > 0)
-- ARGV[3 + 5(i-1)]   refill rate of bucket i (tokens per second, > 0)
-- ARGV[4 + 5(i-1)]   TTL of bucket i in whole seconds (>= time to refill fully)
-- ARGV[5 + 5(i-1)]   cost of this request against bucket i (tokens, > 0)
-- ARGV[6 + 5(i-1)]   "1" if bucket i is in shadow mode: it never denies, and it is debited
--                    only when it can pay; "0" otherwise
--
-- Returns integers only (Redis truncates Lua numbers):
--   { allowed (1|0), denied_by (index of the first enforcing bucket short of tokens, 0 when allowed),
--     then for each bucket i: remaining (whole tokens left after this call),
--                             retry_ms (until bucket i could pay this cost; 0 if it can now,
--                                       so a shadow bucket "would have denied" when > 0),
--                             reset_ms (until bucket i is full again) }
-- A denied call writes nothing: the refill is a pure function of the stored state.

local now
if ARGV[1] == "" then
  local t = redis.call("TIME")
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[1]) / 1000
end

local n = #KEYS
local level, stamp, cap, rate, ttl, cost = {}, {}, {}, {}, {}, {}
local denied_by = 0

for i = 1, n do
  local a = 2 + (i - 1) * 5
  local c, r, k = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 3])
  cap[i], rate[i], ttl[i], cost[i] = c, r, ARGV[a + 2], k
  local h = redis.call("HMGET", KEYS[i], "tokens", "lastRefill")
  local tokens, last = tonumber(h[1]), tonumber(h[2])
  local t = now
  if h[1] == false and h[2] == false then
    tokens = c                                 -- a new (or expired) bucket is full
  elseif tokens == nil or last == nil or tokens ~= tokens or last ~= last then
    tokens = 0                                 -- unreadable state: assume empty, never full
  else
    if t < last then t = last end              -- a bucket's clock never runs backwards
    tokens = math.min(c, tokens + (t - last) * r)
  end
  level[i], stamp[i] = tokens, t
  if denied_by == 0 and tokens < k and ARGV[a + 4] ~= "1" then denied_by = i end
end

local out = { denied_by == 0 and 1 or 0, denied_by }
for i = 1, n do
  local tokens, r, k = level[i], rate[i], cost[i]
  local retry = 0
  if tokens < k then retry = math.ceil((k - tokens) / r * 1000) end
  if denied_by == 0 and tokens >= k then
    tokens = tokens - k
    -- Lua numbers reach Redis in a round-trip-exact form, so tonumber() reads back the same double.
    redis.call("HSET", KEYS[i], "tokens", tokens, "lastRefill", stamp[i])
    redis.call("EXPIRE", KEYS[i], ttl[i])
  end
  out[#out + 1] = math.floor(tokens)
  out[#out + 1] = retry
  out[#out + 1] = math.ceil((cap[i] - tokens) / r * 1000)
end
return out
