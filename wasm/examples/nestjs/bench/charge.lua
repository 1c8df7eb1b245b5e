-- wrk script of bench/compare.js: PATCH /point/{id}/charge {"amount":1}, the
-- ids cycling over the number of users given after `--` (10000: spread; 1: one
-- hot user). done() prints one line the driver parses.
local users = 1
local counter = 0

function init(args)
  users = tonumber(args[1]) or 1
end

wrk.method = "PATCH"
wrk.body = '{"amount":1}'
wrk.headers["Content-Type"] = "application/json"

function request()
  counter = counter + 1
  return wrk.format(nil, "/point/" .. (counter % users + 1) .. "/charge")
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d max_us=%d status_errors=%d socket_errors=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    e.status, e.connect + e.read + e.write + e.timeout))
end
