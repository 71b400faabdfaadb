-- One hot user: every request after the fifth is denied.
request = function()
  return wrk.format("GET", "/api/orders", { ["x-user-id"] = "hot-user" })
end
