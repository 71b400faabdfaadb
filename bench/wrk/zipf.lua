-- The realistic mix: callers drawn from a Zipf distribution over 100,000 user ids (exponent s = 1.1:
-- the first id sends about 13% of the requests, the first ten about 36%, and most of the 100,000 are
-- seen once or never: a few API keys doing most of the traffic and a long tail of users). Every request
-- is GET /api/orders, under a per-caller and a per-route limit (bench/run.mjs). Deterministic: a 32-bit
-- LCG (exact in Lua's doubles) seeded from the instance number, so every Worker gets the same sequence
-- and the two instances of a pair different ones; args: instance number, then a run tag (a prefix of
-- the ids, new each run, so no Worker keeps an earlier run's state about a caller).
local N, S = 100000, 1.1
local cdf, total = {}, 0
for k = 1, N do
  total = total + k ^ -S
  cdf[k] = total
end
for k = 1, N do cdf[k] = cdf[k] / total end

local state, tag = 1, "z"
init = function(args)
  state = 20261207 + 7919 * tonumber(args[1] or "1")
  tag = args[2] or "z"
end
local function uniform()
  state = (1664525 * state + 1013904223) % 4294967296
  return state / 4294967296
end
-- The rank whose cumulative share first reaches a uniform draw (binary search: 17 steps).
local function caller()
  local u, lo, hi = uniform(), 1, N
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < u then lo = mid + 1 else hi = mid end
  end
  return lo
end
request = function()
  return wrk.format("GET", "/api/orders", { ["x-user-id"] = tag .. "-" .. caller() })
end
