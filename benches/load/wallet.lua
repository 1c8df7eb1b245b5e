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
-- ID_BASE, ID_STRIDE, THREAD_SPAN (optional, default 0, 1 and 7919): the n-th
--   request of thread t goes to user
--   ((n + t * THREAD_SPAN + ID_BASE) * ID_STRIDE) % USERS + 1. With a stride
--   coprime with USERS that is a permutation: ids scattered over the whole
--   space; with THREAD_SPAN above a thread's requests the threads reach
--   different users, and a run with another ID_BASE users no earlier run did.
-- done() prints one JSON line (prefixed "RESULT ") that load.sh collects.

local scenario = os.getenv("SCENARIO") or "get"
local users = tonumber(os.getenv("USERS") or "10000")
local hot_user = os.getenv("HOT_USER") or "1"
local counter = 0
local id_base = tonumber(os.getenv("ID_BASE") or "0")
local id_stride = tonumber(os.getenv("ID_STRIDE") or "1")
-- A global, not a local: setup() sets it in each thread's state
-- (thread:set), which a local of the same name would hide.
thread_offset = 0
local threads = {}

local addrs = {}
for addr in string.gmatch(os.getenv("ADDRS") or "", "[^,]+") do
  table.insert(addrs, addr)
end

function setup(thread)
  thread:set("thread_offset", #threads * (tonumber(os.getenv("THREAD_SPAN")) or 7919))
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
  local id = (((counter + thread_offset + id_base) * id_stride) % users) + 1
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
