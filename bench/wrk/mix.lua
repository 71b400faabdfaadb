-- A mix: half the requests from new users, half from one hot user.
local n = 0
local tag = tostring(math.random(1, 1000000000))
request = function()
  n = n + 1
  local id = (n % 2 == 0) and "hot-user" or ("m" .. tag .. "-" .. n)
  return wrk.format("GET", "/api/orders", { ["x-user-id"] = id })
end
