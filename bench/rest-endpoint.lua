-- wrk script: EVALSHA of the token-bucket script for a new user on every request (every call allowed),
-- through the local REST endpoint. SHA and token come from the environment (bench/rest-endpoint.sh).
local sha = os.getenv("SCRIPT_SHA")
local token = os.getenv("TOKEN")
local counter = 0
wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer " .. token
wrk.headers["Content-Type"] = "application/json"

request = function()
  counter = counter + 1
  local body = string.format('["EVALSHA","%s","1","rate:bench-%d-%d:/api","","5","0.08333333333333333","60","1"]',
    sha, math.random(1, 1000000000), counter)
  return wrk.format(nil, "/", nil, body)
end

done = function(summary, latency, requests)
  local errors = summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format("RESULT requests=%d seconds=%.2f rps=%.0f p50_us=%d p99_us=%d errors=%d\n",
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99), errors))
end
