-- wrk script for benches/load.sh. The scenario comes from the environment:
--   SCENARIO=get      GET /point/{id} over USERS users (round robin per thread)
--   SCENARIO=charge   PATCH /point/{id}/charge {"amount":1} over USERS users
--   SCENARIO=hot      one user (HOT_USER), alternating charge and use of 1
-- ADDRS=host:port,host:port,...  (optional) thread i sends to the i-th address
--   (wrk -t must equal their number): several instances loaded by one wrk, whose
--   figures are then the sum and the merged latency distribution.
-- AUTHORIZATION=value  (optional) sent as the Authorization header of every
--   request: a bearer token for a server with authentication on (an admin
--   token, scope points:admin, acts on every user).
-- done() prints one JSON line (prefixed "RESULT ") that load.sh collects.

local scenario = os.getenv("SCENARIO") or "get"
local users = tonumber(os.getenv("USERS") or "10000")
local hot_user = os.getenv("HOT_USER") or "1"
local counter = 0
local thread_offset = 0
local threads = {}

local addrs = {}
for addr in string.gmatch(os.getenv("ADDRS") or "", "[^,]+") do
  table.insert(addrs, addr)
end

function setup(thread)
  thread:set("thread_offset", #threads * 7919)
  if #addrs > 0 then
    local host, port = string.match(addrs[(#threads % #addrs) + 1], "^(.*):(%d+)$")
    thread.addr = wrk.lookup(host, port)[1]
  end
  table.insert(threads, thread)
end

local json_headers = { ["Content-Type"] = "application/json" }
local get_headers = {}
local authorization = os.getenv("AUTHORIZATION")
if authorization then
  json_headers["Authorization"] = authorization
  get_headers["Authorization"] = authorization
end
local amount_body = '{"amount":1}'

function request()
  counter = counter + 1
  if scenario == "hot" then
    local op = (counter % 2 == 1) and "charge" or "use"
    return wrk.format("PATCH", "/point/" .. hot_user .. "/" .. op, json_headers, amount_body)
  end
  local id = ((counter + thread_offset) % users) + 1
  if scenario == "charge" then
    return wrk.format("PATCH", "/point/" .. id .. "/charge", json_headers, amount_body)
  end
  return wrk.format("GET", "/point/" .. id, get_headers)
end

function done(summary, latency, requests)
  local seconds = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    'RESULT {"scenario":"%s","requests":%d,"seconds":%.3f,"rps":%.1f,' ..
    '"p50_us":%d,"p99_us":%d,"max_us":%d,"non2xx":%d,"socket_errors":%d}\n',
    scenario, summary.requests, seconds, summary.requests / seconds,
    latency:percentile(50), latency:percentile(99), latency.max,
    e.status, e.connect + e.read + e.write + e.timeout))
end
