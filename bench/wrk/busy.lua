-- One busy API key: every request carries the same x-user-id, under a 100,000-per-minute limit
-- (every request allowed); two Worker instances are driven at once (bench/run.mjs).
request = function()
  return wrk.format("GET", "/api/orders", { ["x-user-id"] = "busy-api-key" })
end
