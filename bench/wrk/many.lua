-- Many users: a new x-user-id on every request (every request allowed).
local n = 0
local tag = tostring(math.random(1, 1000000000))
request = function()
  n = n + 1
  return wrk.format("GET", "/api/orders", { ["x-user-id"] = "u" .. tag .. "-" .. n })
end
