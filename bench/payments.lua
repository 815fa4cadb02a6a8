-- wrk script for bench/writes.sh: every request is a new createPayment between two random
-- accounts (with probability HOT_SHARE one side is the hot account, ACCOUNTS[1]), each
-- with an idempotency key of its own ("<RUN>-<thread>-<n>"). Responses carrying GraphQL
-- errors are counted, and done() prints one line for the script to read:
--   wrk-result <responses> <errors> <p50 ms> <p99 ms> <seconds>
-- Environment: API_KEY, ACCOUNTS (comma-separated account ids), HOT_SHARE, RUN.

local accounts = {}
for id in string.gmatch(os.getenv("ACCOUNTS") or "", "[^,]+") do
  accounts[#accounts + 1] = id
end
local hot_share = tonumber(os.getenv("HOT_SHARE") or "0")
local run = os.getenv("RUN") or "wrk"
local threads = {}
local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("thread_id", thread_count)
  threads[#threads + 1] = thread
end

function init(args)
  math.randomseed(os.time() * 1000 + (thread_id or 0))
  sequence = 0
  errors = 0
  wrk.method = "POST"
  wrk.path = "/graphql"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("API_KEY")
end

local mutation = "mutation($input: CreatePaymentInput!) { createPayment(input: $input) "
  .. "{ payment { id status } replayed } }"

function request()
  sequence = sequence + 1
  local from = math.random(#accounts)
  local to = math.random(#accounts - 1)
  if to >= from then
    to = to + 1
  end
  if math.random() < hot_share then
    if math.random() < 0.5 then
      from = 1
      if to == 1 then to = 2 end
    else
      to = 1
      if from == 1 then from = 2 end
    end
  end
  local cents = math.random(1, 2000)
  local body = string.format(
    '{"query":"%s","variables":{"input":{"idempotencyKey":"%s-%d-%d","fromAccountId":"%s",'
      .. '"toAccountId":"%s","amount":"%d.%02d","currency":"USD"}}}',
    mutation, run, thread_id, sequence, accounts[from], accounts[to],
    math.floor(cents / 100), cents % 100)
  return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
  if status ~= 200 or string.find(body, '"errors"', 1, true) then
    errors = errors + 1
  end
end

function done(summary, latency, requests)
  local failed = 0
  for _, thread in ipairs(threads) do
    failed = failed + (thread:get("errors") or 0)
  end
  io.write(string.format("wrk-result %d %d %.3f %.3f %.3f\n", summary.requests, failed,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, summary.duration / 1e6))
end
