-- wrk script for bench/server_bench.py: POST a fixed body, count 200 answers per thread,
-- and print the results as one parseable JSON line.
--   wrk -t1 -c32 -d8s --latency -s bench/post_events.lua URL -- BODY_FILE

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   local file = assert(io.open(args[1], "rb"))
   local body = file:read("*a")
   file:close()
   wrk.method = "POST"
   wrk.body = body
   wrk.headers["Content-Type"] = "application/json"
   ok = 0
   other = 0
end

function response(status, headers, body)
   if status == 200 then
      ok = ok + 1
   else
      other = other + 1
   end
end

function done(summary, latency, requests)
   local ok_total, other_total = 0, 0
   for _, thread in ipairs(threads) do
      ok_total = ok_total + thread:get("ok")
      other_total = other_total + thread:get("other")
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_RESULT {"requests": %d, "duration_us": %d, "bytes": %d, "ok": %d, "other": %d,'
         .. ' "non2xx": %d, "connect": %d, "read": %d, "write": %d, "timeout": %d,'
         .. ' "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
      summary.requests, summary.duration, summary.bytes, ok_total, other_total,
      e.status, e.connect, e.read, e.write, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.max, latency.mean))
end
