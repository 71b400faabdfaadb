#!lua flags=allow-key-locking
-- Rate limits, checked and consumed all-or-nothing in one atomic call: token
-- buckets and sliding-window counters side by side, with live overrides read
-- in the same call.
--
-- Every key the script touches is in KEYS, so Upstash's allow-key-locking
-- (above) locks only these keys, and a cluster could route the call.
--
-- KEYS[1..n]         limit i's state: for "c" a sorted set (below); otherwise a hash: token bucket `tokens`, `lastRefill` (epoch s), and while it
--                    leases, `lq`/`lp` (tokens leased in the current / previous lease slot), `li` (the
--                    current slot's index, floor(time / `ll`)) and `ll` (the slot's length, s);
--                    sliding window `start` (epoch s), `count`, `previous`; both keep `x`, the key's
--                    deadline (script time, s: see `expiry` below)
-- KEYS[n+1..]        override keys (strings "<capacity> <rate>"), read with one MGET (and perhaps the
--                    overrides' version key: ARGV[4+8n]); with op "4" the last key is the settle marker
-- ARGV[1]            clock: "" = Redis TIME (default); otherwise the caller's epoch ms (worker-clock mode)
-- ARGV[2]            the operation: "" take (decide this request); "1" peek: report every limit without
--                    consuming or writing anything; "2" give back: return unused lease tokens (below);
--                    "3" settle after the response: release in-flight slots, charge or refund the
--                    difference between a request's actual and reserved cost (a batch: several requests'
--                    releases and settlements in one call); "4" the same, exactly once: the last key is the
--                    batch's settle marker, and a call that finds it set does nothing
-- ARGV[3]            n, the number of limits
-- limit i's 8 arguments, from a = 4 + 8(i-1):
--   ARGV[a]          algorithm: "t" token bucket, "w" sliding-window counter, "f" fixed window (aligned to
--                    the clock: windows of capacity / rate seconds from the epoch; the hash field `n`
--                    counts the current window and the key dies when it ends), "c" in-flight slots: a
--                    sorted set of request ids scored by when their slot expires (epoch ms); capacity = slots
--   ARGV[a+1]        capacity (tokens; for a window, requests per window), > 0
--   ARGV[a+2]        rate (tokens per second, > 0); a window lasts capacity / rate seconds
--   ARGV[a+3]        TTL in whole seconds (>= the time to refill fully; 2 windows for a window; for "c" the
--                    slot's TTL: a slot expires that long after it was taken)
--   ARGV[a+4]        cost of this request (tokens, > 0; a slot takes 1); when giving back, the unused tokens
--                    of a lease; when settling, actual minus reserved cost (signed: < 0 refunds; 0 for a slot)
--   ARGV[a+5]        limit i's mode: "0" enforcing; "1" shadow: it never denies, and it is debited only when
--                    the call is allowed and it can pay; "2" candidate (a policy being tried on live
--                    traffic): it never denies, and the candidate limits are debited all or nothing among
--                    themselves, whatever the enforcing limits say; "3" report only: never denies, never debited.
--                    A mode may be followed by " <ms>" (a shard change at that script time): a key that
--                    does not exist then starts as if empty at that time and refilled since — a bucket
--                    with (now - ms) * rate tokens, a sliding window whose window before that time was
--                    full, a fixed window full in the window of that time — never more than the database
--                    the subject moved from can hold, whose history this one lacks
--   ARGV[a+6]        override KEYS indexes, most specific first, space-separated ("" = none): the first
--                    override key that exists replaces capacity and rate (the TTL grows to match);
--                    one whose numbers the gateway would refuse (capacity above 1e9, a full refill
--                    slower than MAX_WINDOW) is ignored
--   ARGV[a+7]        for "c": the request's id (its member; settling, one or more, space-separated). For "t" and "w" settling: the script's ms when
--                    the reservation was taken. Otherwise the lease: when taking, "0" (none) or "<want> <slot ms> <share> <settle> <since>": the whole
--                    tokens this isolate would like to hold beyond the cost, the longest a lease can live
--                    (its horizon plus the call's deadline), the most of the capacity in effect one grant
--                    may take, and the lease tokens it spent since it last said so (no longer outstanding),
--                    all from grants made at or after `since` (the script's epoch ms, as returned).
--                    An allowed call that debits an enforcing or shadow limit also debits
--                    min(want, floor(half of what is left after the cost), floor(share * capacity)) if that
--                    is at least MIN_LEASE, and reports it as leased. A token bucket counts what it leased
--                    in slots of that length, and never refills above capacity minus the tokens leased in
--                    the current and the previous slot (an upper bound of what may still be spent from
--                    leases: a lease lives at most one slot), so bucket plus leases never exceed the
--                    capacity. A window leases only if the lease ends before the window does.
--                    When giving back, "<taken> <settle> <since>": the time (the script's epoch ms, as
--                    returned) the oldest tokens were taken, and the tokens no longer outstanding (these,
--                    and the ones spent since the last call) with their `since`: a bucket gets the tokens back (never above capacity); a
--                    window takes them off the count of the window they were counted in (the current or
--                    the previous one; older ones have slid out). A key that no longer exists (expired,
--                    reset) gets nothing.
--                    When settling: a "c" limit's slot (its member) is removed; a "t" or "w" limit is charged
--                    the difference (a bucket may go below zero: the caller waits longer, and the key lives
--                    until it is full again) or refunded it (a bucket never above capacity; a window off the
--                    window the reservation was counted in). A key whose state is unreadable gets nothing.
-- ARGV[4+8n]         optional, what this isolate knows of the overrides: "<v> <version> <j>...": the
--                    override KEYS indexes j are believed not to exist and are not read, unless KEYS[v]
--                    (the overrides' version key, read in the same MGET; v = 0: not read) holds another
--                    version than <version>: then they are read too, in a second MGET. With v > 0 the
--                    reply ends with the version read (0 when the key does not exist).
-- Every TTL is clamped to two MAX_WINDOWs: Lua writes numbers from 1e14 on with an exponent, which
-- EXPIRE refuses, and a failing call would mean no decision at all.
--
-- Returns integers only (Redis truncates Lua numbers):
--   { allowed (1|0), denied_by (index of the first enforcing limit short of tokens, 0 when allowed),
--     then for each limit i: remaining (whole tokens left after this call),
--                            retry_ms (until limit i could pay this cost; 0 if it can now,
--                                      so a shadow limit "would have denied" when > 0),
--                            reset_ms (until limit i is full again),
--                            capacity and window_s (ceil(capacity / rate)) in effect, overrides applied,
--                            leased (tokens debited beyond the cost for this isolate's lease),
--     then the script's time in epoch ms (floored), then the overrides' version if it was read }
-- For "c": retry_ms is 1000 when no slot is free (when one frees is unknown), reset_ms 1000 when none is
-- left, window_s 1 (the gateway passes rate = capacity). Op "3"/"4" replies in the same shape; with op
-- "4" a first element of 0 means this request was settled before and nothing was done.
-- A denied call writes nothing to its enforcing and shadow limits (candidate limits pay by their own
-- verdict): refill and window roll-over are pure functions of the stored state.

local now
if ARGV[1] == "" then
  local t = redis.call("TIME")
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[1]) / 1000
end
local MAX_WINDOW = 3153600000                  -- 100 years (src/policy/limit.rs MAX_WINDOW_SECONDS)
local MIN_LEASE = 4                            -- src/limiter/lease.rs MIN_LEASE
local peek = ARGV[2] == "1"
local give = ARGV[2] == "2"
local settle = ARGV[2] == "3" or ARGV[2] == "4"
local n = tonumber(ARGV[3])
local last = #KEYS
if ARGV[2] == "4" then
  last = last - 1
  if not redis.call("SET", KEYS[#KEYS], "1", "NX", "EX", 3600) then
    -- This request was settled before (a retried call): nothing more, and the reply says so.
    local out = { 0, 0 }
    for _ = 1, 6 * n do out[#out + 1] = 0 end
    out[#out + 1] = math.floor(now * 1000)
    return out
  end
end

-- Overrides: one MGET of the override keys this isolate knows exist (and the version key when its
-- check is due); the others only when the version read is not the one expected (a new override).
local overrides, version = {}, nil
if last > n then
  local vidx, expected, skip = 0, nil, {}
  local known = ARGV[4 + 8 * n]
  if known then
    local words = string.gmatch(known, "%-?%d+")
    vidx, expected = tonumber(words() or "0"), tonumber(words() or "")
    for j in words do skip[tonumber(j)] = true end
  end
  local names, at, later = {}, {}, {}
  for j = n + 1, last do
    if skip[j] then
      later[#later + 1] = j
    else
      names[#names + 1] = KEYS[j]
      at[#at + 1] = j
    end
  end
  if #names > 0 then
    local values = redis.call("MGET", unpack(names))
    for m = 1, #names do overrides[at[m]] = values[m] end
  end
  if vidx > 0 then
    version = tonumber(overrides[vidx]) or 0
    overrides[vidx] = nil
    if version ~= expected and #later > 0 then
      names = {}
      for m = 1, #later do names[m] = KEYS[later[m]] end
      local values = redis.call("MGET", unpack(names))
      for m = 1, #later do overrides[later[m]] = values[m] end
    end
  end
end

local algo, level, stamp, cap, rate, ttl, cost, win, mode, known, slots, fresh, deadline, stray =
  {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}

-- A write: the hash `fields`, and the key must live until `need` (script time, s). The key keeps its
-- deadline in field `x`; EXPIRE is sent only when that deadline is less than a quarter TTL beyond
-- `need`, and then sets it half a TTL beyond the later of `need` and a TTL from now. So a busy key
-- pays one EXPIRE per quarter TTL at most, and a deadline set by an isolate whose clock runs up to a
-- quarter TTL ahead of the next writer's is still never short.
local function expiry(i, t, need, fields)
  local x = deadline[i]
  -- A fixed window's count left in the hash (the limit's algorithm changed): its PEXPIRE set the
  -- TTL, not `x`; dropped, and the TTL set anew.
  if stray[i] then redis.call("HDEL", KEYS[i], "n") end
  if x == nil or x ~= x or x < need + ttl[i] / 4 then
    x = math.min(math.max(need, t + ttl[i]) + ttl[i] / 2, t + 2 * MAX_WINDOW)
    fields[#fields + 1] = "x"
    fields[#fields + 1] = x
    redis.call("HSET", KEYS[i], unpack(fields))
    redis.call("EXPIRE", KEYS[i], math.ceil(x - t))
  else
    redis.call("HSET", KEYS[i], unpack(fields))
  end
end
local denied_by = 0
local candidate_denied = false

for i = 1, n do
  local a = 4 + (i - 1) * 8
  local c, r, ttl_i, k = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  for j in string.gmatch(ARGV[a + 6], "%d+") do
    local v = overrides[tonumber(j)]
    local sp = v and string.find(v, " ", 1, true)
    if sp then
      local oc, orate = tonumber(string.sub(v, 1, sp - 1)), tonumber(string.sub(v, sp + 1))
      if oc and orate and oc > 0 and oc <= 1000000000 and orate > 0 and oc / orate <= MAX_WINDOW then
        c, r = oc, orate
        break
      end
    end
  end
  algo[i], cap[i], rate[i], cost[i] = ARGV[a], c, r, k
  local m, seed = string.match(ARGV[a + 5], "^(%d) (%d+)$")
  seed = tonumber(seed)
  if seed then seed = seed / 1000 else m = ARGV[a + 5] end
  local tokens, t, usable, new = 0, now, true, false
  if ARGV[a] == "c" then
    -- In-flight slots: those not yet expired count (a settle call only removes its own).
    local live = 0
    if not settle then live = redis.call("ZCOUNT", KEYS[i], "(" .. math.floor(now * 1000), "+inf") end
    tokens = c - live
  elseif ARGV[a] == "f" then
    -- Fixed window, aligned to the clock: field `n` counts this window, and the key dies when the
    -- window ends. A take counts first (HINCRBY: one command) and takes it back if not admitted.
    local w = c / r
    local ends = (math.floor(t / w) + 1) * w
    -- (t / w rounded across a window's edge: the window is the one t is in)
    if ends <= t then ends = ends + w elseif ends - w > t then ends = ends - w end
    local count, counted = nil, false
    if peek or give or settle or m == "3" then
      local ok, v = pcall(redis.call, "HGET", KEYS[i], "n")
      if ok then count = v == false and 0 or tonumber(v) end
    else
      local ok, v = pcall(redis.call, "HINCRBY", KEYS[i], "n", k)
      if ok then count, counted = v - k, true end
    end
    if count == nil or count ~= count then
      count, usable = c, false                 -- unreadable state: assume full for a window
    elseif count == 0 and seed and ends - w <= seed then
      count, new = c, true                     -- new in a shard change: full in the window of the change
    else
      new = count == 0
    end
    win[i] = { ends - w, count, counted, w }
    tokens = c - count
  elseif ARGV[a] == "w" then
    -- Sliding-window counter: the previous window's count, weighted by how much of it still
    -- overlaps the sliding window, plus this window's count.
    local w = c / r
    local h = redis.call("HMGET", KEYS[i], "start", "count", "previous", "x", "n")
    deadline[i] = h[5] == false and tonumber(h[4]) or nil  -- (a fixed window's count: its PEXPIRE ruled)
    if h[5] ~= false then stray[i] = true end
    local start, cur, prev = tonumber(h[1]), tonumber(h[2]), tonumber(h[3])
    if h[1] == false and h[2] == false and h[3] == false and seed then
      -- New in a shard change: the window before the change full, rolled on to now.
      start, cur, prev = math.min(seed, now), 0, c
      local moved = math.floor((t - start) / w)
      if moved >= 2 then
        start, prev = start + moved * w, 0
      elseif moved == 1 then
        start, prev = start + w, 0
      end
    elseif h[1] == false and h[2] == false and h[3] == false then
      start, cur, prev, usable, new = now, 0, 0, false, true  -- a new (or expired) window is empty
    elseif start == nil or cur == nil or prev == nil or start ~= start or cur ~= cur or prev ~= prev then
      start, cur, prev, usable = now, c, 0, false  -- unreadable state: assume full for a window
    else
      if t < start then t = start end          -- a window's clock never runs backwards
      local moved = math.floor((t - start) / w)
      if moved >= 2 then
        start, cur, prev = start + moved * w, 0, 0
      elseif moved == 1 then
        start, cur, prev = start + w, 0, cur
      end
    end
    win[i] = { start, cur, prev, w }
    tokens = c - (prev * (1 - (t - start) / w) + cur)
    ttl_i = math.max(ttl_i, math.ceil(2 * w))
  else
    local h = redis.call("HMGET", KEYS[i], "tokens", "lastRefill", "lq", "lp", "li", "ll", "x", "n")
    deadline[i] = h[8] == false and tonumber(h[7]) or nil  -- (a fixed window's count: its PEXPIRE ruled)
    if h[8] ~= false then stray[i] = true end
    local last = tonumber(h[2])
    tokens = tonumber(h[1])
    local lq, lp, li, ll = tonumber(h[3]), tonumber(h[4]), tonumber(h[5]), tonumber(h[6])
    local leasing = h[6] ~= false
    if leasing and (lq == nil or lp == nil or li == nil or ll == nil or not (ll > 0) or lq ~= lq or lp ~= lp or li ~= li) then
      tokens = nil                             -- unreadable lease slots: the whole state is unreadable
    end
    if h[1] == false and h[2] == false and not leasing and seed then
      tokens = math.min(c, math.max(0, (t - seed) * r))  -- new in a shard change: empty then, refilled since
    elseif h[1] == false and h[2] == false and not leasing then
      tokens, usable, new = c, false, true     -- a new (or expired) bucket is full
    elseif tokens == nil or last == nil or tokens ~= tokens or last ~= last then
      tokens, usable = 0, false                -- unreadable state: assume empty, never full
    else
      if t < last then t = last end            -- a bucket's clock never runs backwards
      local out = 0
      if leasing then
        local idx = math.floor(t / ll)
        if idx == li + 1 then
          lq, lp, li = 0, lq, idx
        elseif idx > li + 1 then
          lq, lp, li = 0, 0, idx
        end
        -- Lease tokens the caller reports spent or given back no longer count: those of grants made
        -- from `since` (script ms) on, so in since's slot or later; the oldest slot first, and nothing
        -- once since's slot has slid out (it cannot tell how many were in it).
        local settle, since = string.match(ARGV[a + 7] or "", give and "^%d+ (%d+) (%d+)$" or "^%d+ %d+ [0-9.]+ (%d+) (%d+)$")
        settle, since = tonumber(settle), tonumber(since)
        if settle and since and not peek then
          local at = math.floor((since - 1) / 1000 / ll)
          if at == li then
            lq = math.max(0, lq - settle)
          elseif at == li - 1 then
            local p = math.min(lp, settle)
            lq, lp = math.max(0, lq - (settle - p)), lp - p
          end
        end
        slots[i] = { lq, lp, li, ll }
        out = lq + lp
      end
      -- Never above capacity minus what leases may still spend; refill never takes tokens away.
      tokens = math.min(c, math.max(tokens, math.min(c - out, tokens + (t - last) * r)))
    end
    ttl_i = math.max(ttl_i, math.ceil(c / r))
  end
  if not (ttl_i <= 2 * MAX_WINDOW) then ttl_i = 2 * MAX_WINDOW end
  level[i], stamp[i], ttl[i], mode[i], known[i], fresh[i] = tokens, t, ttl_i, m, usable, new
  if give or settle then
    -- giving back and settling decide nothing
  elseif tokens < k then
    if mode[i] == "2" then
      candidate_denied = true
    elseif denied_by == 0 and mode[i] ~= "1" and mode[i] ~= "3" then
      denied_by = i
    end
  end
end

local out = { denied_by == 0 and 1 or 0, denied_by }
for i = 1, n do
  local tokens, c, r, k, t = level[i], cap[i], rate[i], cost[i], stamp[i]
  local consume = denied_by == 0 and tokens >= k and not peek and not give and not settle
  local lease = 0
  if mode[i] == "2" then
    consume = not candidate_denied and not peek and not give and not settle
  elseif mode[i] == "3" then
    consume = false
  elseif consume then
    local want, slot_ms, share = string.match(ARGV[4 + (i - 1) * 8 + 7] or "", "^(%d+) (%d+) ([0-9.]+) %d+ %d+$")
    want, slot_ms, share = tonumber(want), tonumber(slot_ms), tonumber(share)
    if want and slot_ms and share and slot_ms > 0 then
      lease = math.min(want, math.floor((tokens - k) / 2), math.floor(c * share))
      if (algo[i] == "w" or algo[i] == "f") and win[i][4] - (t - win[i][1]) < slot_ms / 1000 then
        lease = 0                              -- a window's lease must end within its window
      end
      if not (lease >= MIN_LEASE) then lease = 0 end
      if lease > 0 and algo[i] == "t" then
        local ll = slot_ms / 1000
        local sl = slots[i]
        if sl == nil then
          sl = { 0, 0, math.floor(t / ll), ll }
        elseif sl[4] ~= ll then
          sl = { 0, sl[1] + sl[2], math.floor(t / ll), ll }  -- another slot length: all counted as previous
        end
        sl[1] = sl[1] + lease
        slots[i] = sl
      end
    end
  end
  local back = give and known[i]
  local settling = settle and (known[i] or (fresh[i] and k > 0))  -- a refund to a fresh key changes nothing
  local retry, reset = 0, 0
  if algo[i] == "c" then
    local ms = math.floor(t * 1000)
    -- When a slot frees is unknown (a response ends): callers are told to try again in a second.
    if tokens < k and not settle then retry = 1 end
    if consume then
      -- (expired members, left by releases that never came, are pruned by releases, not here: a
      -- take is ZCOUNT, ZADD and EXPIRE)
      redis.call("ZADD", KEYS[i], ms + ttl[i] * 1000, ARGV[4 + (i - 1) * 8 + 7])
      redis.call("EXPIRE", KEYS[i], ttl[i])
      tokens = tokens - k
    elseif settle then
      local ids = {}
      for id in string.gmatch(ARGV[4 + (i - 1) * 8 + 7], "%S+") do ids[#ids + 1] = id end
      if #ids > 0 then redis.call("ZREM", KEYS[i], unpack(ids)) end
      -- Expired members (left by releases that never came) are pruned by the releases made in one
      -- second of every eight: one more command for an eighth of them, and a busy key is pruned
      -- every eight seconds.
      if math.floor(t) % 8 == 0 then redis.call("ZREMRANGEBYSCORE", KEYS[i], "-inf", ms) end
    end
    if tokens < 1 then reset = 1 end
  elseif algo[i] == "f" then
    local start, count, counted, w = win[i][1], win[i][2], win[i][3], win[i][4]
    local left = start + w - t                 -- until the window ends
    local ttl_ms = math.ceil(left * 1000)
    if tokens < k and not give and not settle then retry = left end
    if consume then
      tokens = tokens - k - lease
      if lease > 0 then redis.call("HINCRBY", KEYS[i], "n", lease) end
      if count == 0 then redis.call("PEXPIRE", KEYS[i], ttl_ms) end
      count = count + k + lease
    elseif counted then
      -- Not admitted (or a candidate not paying): counted back; a count this call began is deleted.
      if count == 0 or fresh[i] then redis.call("DEL", KEYS[i]) else redis.call("HINCRBY", KEYS[i], "n", -k) end
    elseif back or (settling and k < 0) then
      -- Given back or refunded to the window it was counted in, if that is still this one.
      local at = (tonumber(string.match(ARGV[4 + (i - 1) * 8 + 7] or "", "^(%d+)")) or 0) / 1000
      if at >= start and count > 0 and not fresh[i] then  -- (a key new in a shard change counted nothing)
        local d = math.min(count, math.abs(k))
        redis.call("HINCRBY", KEYS[i], "n", -d)
        count = count - d
      end
      tokens = c - count
    elseif settling and k > 0 then
      -- Charged now, in the current window (beyond the capacity: the rest of the window is denied); a
      -- key new in a shard change stores the full count it starts from.
      redis.call("HINCRBY", KEYS[i], "n", fresh[i] and count + k or k)
      if count == 0 or fresh[i] then redis.call("PEXPIRE", KEYS[i], ttl_ms) end
      count = count + k
      tokens = c - count
    end
    if count > 0 then reset = left end
  elseif algo[i] == "w" then
    local start, cur, prev, w = win[i][1], win[i][2], win[i][3], win[i][4]
    local into = t - start
    if tokens < k and not give and not settle then
      local need = k - tokens
      if prev > 0 and into + need * w / prev <= w then
        retry = need * w / prev                -- the previous window slides out in time
      elseif cur + k <= c then
        retry = w - into                       -- this window's count becomes the (fading) previous one
      elseif cur > 0 then
        retry = w - into + (cur + k - c) * w / cur
      else
        retry = 2 * w - into                   -- the cost exceeds the capacity: not within two windows
      end
    end
    if consume then
      tokens, cur = tokens - k - lease, cur + k + lease
    elseif back then
      local taken = (tonumber(string.match(ARGV[4 + (i - 1) * 8 + 7] or "", "^(%d+)")) or 0) / 1000
      if taken >= start then
        cur = math.max(0, cur - k)
      elseif taken >= start - w then
        prev = math.max(0, prev - k)
      end
      tokens = c - (prev * (1 - into / w) + cur)
    elseif settling then
      if k > 0 then
        cur = cur + k                          -- charged now, in the current window
      else
        local taken = (tonumber(ARGV[4 + (i - 1) * 8 + 7]) or 0) / 1000
        if taken >= start then
          cur = math.max(0, cur + k)
        elseif taken >= start - w then
          prev = math.max(0, prev + k)
        end
      end
      tokens = c - (prev * (1 - into / w) + cur)
    end
    if consume or back or settling then
      expiry(i, t, start + 2 * w, { "start", start, "count", cur, "previous", prev })
    end
    if cur > 0 then reset = 2 * w - into elseif prev > 0 then reset = w - into end
  else
    if tokens < k and not give and not settle then retry = (k - tokens) / r end
    if consume or back or settling then
      if consume then
        tokens = tokens - k - lease
      elseif back or k < 0 then
        tokens = math.min(c, tokens + math.abs(k))  -- given back or refunded: never above capacity
      else
        tokens = tokens - k                    -- charged: below zero is debt, paid off by the refill
      end
      -- The key lives until it is full again, whatever wrote it: a bucket in debt (a charge, or a
      -- refund or a take after one) must never expire back to full.
      local full = math.min(math.ceil((c - tokens) / r), 2 * MAX_WINDOW)
      -- Lua numbers reach Redis in a round-trip-exact form, so tonumber() reads back the same double.
      local sl = slots[i]
      if sl then
        expiry(i, t, t + full, { "tokens", tokens, "lastRefill", t, "lq", sl[1], "lp", sl[2], "li", sl[3], "ll", sl[4] })
      else
        expiry(i, t, t + full, { "tokens", tokens, "lastRefill", t })
      end
    end
    reset = (c - tokens) / r
  end
  out[#out + 1] = math.floor(tokens)
  out[#out + 1] = math.ceil(retry * 1000)
  out[#out + 1] = math.ceil(reset * 1000)
  out[#out + 1] = c
  out[#out + 1] = math.ceil(c / r)
  out[#out + 1] = lease
end
out[#out + 1] = math.floor(now * 1000)
if version ~= nil then out[#out + 1] = version end
return out
