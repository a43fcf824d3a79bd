-- wrk script: every connection alternates POST /api/jobs/claim and
-- POST /api/jobs/{lease_id}/complete, the lease id taken from the claim's answer.
--
-- wrk calls response() and then request() on the same connection, so a lease
-- pushed by a claim's answer is popped by that connection's next request: each
-- connection claims, completes, claims, ... State is per wrk thread; each thread
-- claims as its own worker. done() prints one line "WRK_RESULT {json}".

local threads = {}

function setup(thread)
  thread:set("thread_id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  worker_id = "wrk-" .. thread_id
  claim_body = '{"worker_id":"' .. worker_id .. '","labels":[],"lease_ttl_secs":300}'
  headers = {["Content-Type"] = "application/json"}
  leases = {}
  claims, completes, empty_claims, errors = 0, 0, 0, 0
end

function request()
  local lease = table.remove(leases)
  if lease then
    return wrk.format("POST", "/api/jobs/" .. lease .. "/complete", headers, '{"outputs":{}}')
  end
  return wrk.format("POST", "/api/jobs/claim", headers, claim_body)
end

function response(status, headers, body)
  if status ~= 200 then
    errors = errors + 1
    return
  end
  local lease = string.match(body, '"lease_id"%s*:%s*"([^"]+)"')
  if lease then
    claims = claims + 1
    table.insert(leases, lease)
  elseif body == "null" then
    empty_claims = empty_claims + 1
  else
    completes = completes + 1
  end
end

function done(summary, latency, requests)
  local c, k, e, x = 0, 0, 0, 0
  for _, thread in ipairs(threads) do
    c = c + thread:get("claims")
    k = k + thread:get("completes")
    e = e + thread:get("empty_claims")
    x = x + thread:get("errors")
  end
  io.write(string.format(
    'WRK_RESULT {"requests":%d,"duration_us":%d,"socket_errors":%d,"claims":%d,' ..
    '"completes":%d,"empty_claims":%d,"http_errors":%d,"p50_us":%d,"p90_us":%d,' ..
    '"p99_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration,
    summary.errors.connect + summary.errors.read + summary.errors.write +
      summary.errors.timeout,
    c, k, e, x,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
