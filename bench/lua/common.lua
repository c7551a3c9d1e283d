-- Shared wrk logic for the push-token benchmark scenarios.
--
-- Every scenario script sets SCENARIO = { name, keys = "device" | "session", prefix,
-- build } and then runs this file.  Keys are partitioned over wrk threads (global key j
-- belongs to thread j % threads + 1), so no two threads ever write the same key.
--
-- Exact runs (BENCH_EXACT=1, run.py starts them with -tN -cN: one connection per
-- thread): each response() belongs to the thread's latest request(), so the thread
-- knows exactly which of its requests were answered, with what status, and which one
-- was still in flight when wrk stopped; a key is never in flight twice at once.
-- Measured runs (several connections per thread) cannot match answers to requests:
-- the thread only counts, and run.py checks the looser property in bench/README.md.
--
-- Everything a request carries is a pure function of (run, thread, request number):
-- run.py replays the same sequence (bench/workload.py) from the few numbers each
-- thread reports in done(), instead of wrk logging every request.
--
-- Configuration comes from the environment (run.py sets it):
--   BENCH_SESSIONS   file with one "session_token user_index" line per session
--   BENCH_USERS      number of users            BENCH_DEVICES   devices per user
--   BENCH_THREADS    wrk threads                BENCH_EXACT     "1" for exact runs
--   BENCH_RUN        run number (makes tokens unique across wrk runs)
--   BENCH_OUT        where done() writes its JSON summary
--   BENCH_T0_US, BENCH_T1_US   the measurement window, in epoch microseconds
--
-- Throughput is counted over that window only: wrk's own requests/duration counts the
-- requests made while its later threads are still being created (a thousand threads
-- take a second or more) yet leaves that time out of the duration.  In exact runs the
-- latency is measured here too (request() to response() of the thread's connection,
-- in a log histogram with 1 % wide buckets); measured runs use wrk's own histogram.

local ffi = require("ffi")
ffi.cdef([[
typedef struct { long tv_sec; long tv_usec; } bench_timeval;
int gettimeofday(bench_timeval *tv, void *tz);
]])
local tv = ffi.new("bench_timeval")

-- wall-clock microseconds, the clock wrk and run.py use
local function now_us()
   ffi.C.gettimeofday(tv, nil)
   return tonumber(tv.tv_sec) * 1000000 + tonumber(tv.tv_usec)
end

local log = math.log
local floor = math.floor

local M = 2147483647          -- Park-Miller minimal standard generator, 2^31 - 1
local A = 48271               -- (x * A < 2^53: exact in LuaJIT's doubles)

local FCM_PAD = "APA91bHbenchbenchbenchbench_filler-0123456789abcdefghijklmnopqrstuvwxyz"
    .. "ABCDEFGHIJKLMNOPQRSTUVWXYZ_filler-0123456789abcdefghijklmnopqrstuvwxyz"
    .. "-pad_0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
local APNS_PAD = "be7c4a11f00dcafe0123456789abcdef01234567"
local FCM_LEN = 152

local threads = {}
local next_tid = 1

-- ---------------------------------------------------------------- setup (main state)

function setup(thread)
   thread:set("tid", next_tid)
   next_tid = next_tid + 1
   threads[#threads + 1] = thread
end

-- ---------------------------------------------------------------- running (per thread)

local function env_int(name, default)
   local v = os.getenv(name)
   if v == nil or v == "" then
      return default
   end
   return tonumber(v)
end

function apns_token(run, tid, i)
   return string.format("%08x%08x%08x", run, tid, i) .. APNS_PAD
end

function fcm_token(run, tid, i)
   local head = string.format("bench%x_%x_%x:", run, tid, i)
   return head .. string.sub(FCM_PAD, 1, FCM_LEN - #head)
end

function init(args)
   run = env_int("BENCH_RUN", 1)
   local users = env_int("BENCH_USERS", 1000)
   local devices = env_int("BENCH_DEVICES", 8)
   local nthreads = env_int("BENCH_THREADS", 1)
   local host = wrk.host .. ":" .. tostring(wrk.port or 80)

   -- sessions: index (0-based) -> token, user index
   local tokens, owners = {}, {}
   local path = os.getenv("BENCH_SESSIONS")
   local n = 0
   for line in io.lines(path) do
      local tok, user = line:match("^(%x+)%s+(%d+)")
      if tok then
         tokens[n] = tok
         owners[n] = tonumber(user)
         n = n + 1
      end
   end
   local spu = math.floor(n / users)  -- sessions per user, user u owns [u*spu, u*spu+spu)

   -- this thread's keys: global key j with j % nthreads == tid - 1, ascending
   keys = {}
   local nkeys_total
   if SCENARIO.keys == "device" then
      nkeys_total = users * devices
   else
      nkeys_total = n
   end
   local j = tid - 1
   if SCENARIO.keys == "flood" then
      -- every thread, every request: user 0's first device, through its first session
      nkeys_total = 0
      local k = { session = tokens[0], device = "bench-device-0" }
      k.prefix = SCENARIO.prefix(k, host)
      keys[1] = k
   end
   while j < nkeys_total do
      local k = {}
      if SCENARIO.keys == "device" then
         local u = math.floor(j / devices)
         local d = j % devices
         k.session = tokens[u * spu + (d % spu)]
         k.device = "bench-device-" .. d
      else
         k.session = tokens[j]
      end
      k.prefix = SCENARIO.prefix(k, host)
      keys[#keys + 1] = k
      j = j + nthreads
   end

   rng = (run * 7919 + tid * 104729) % M
   if rng == 0 then
      rng = 1
   end

   exact = os.getenv("BENCH_EXACT") == "1"
   t0 = env_int("BENCH_T0_US", 0)
   t1 = env_int("BENCH_T1_US", 1e18)
   sent_at = 0       -- when the last request was generated
   first_response = 0
   win_done = 0      -- responses inside the window
   win_bad = 0       -- non-2xx responses inside the window
   win_sum = 0       -- their summed latency (us)
   win_max = 0
   hist = {}         -- floor(100 * ln(latency_us)) -> count

   sent = 0          -- request() calls
   responded = 0     -- response() calls
   answered = 0      -- number of the request the last response belonged to
   ok = 0            -- 2xx responses
   lost = {}         -- requests that got no response (the connection failed)
   bad = {}          -- request number, status, ... for every non-2xx response
   statuses = {}     -- status code -> count
end

function request()
   if keys == nil then
      -- wrk calls request() once in the setup state to validate the script
      return wrk.format("GET", "/")
   end
   if exact and sent > 0 and answered ~= sent then
      lost[#lost + 1] = sent
   end
   sent = sent + 1
   rng = (rng * A) % M
   local k = keys[(rng % #keys) + 1]
   local req = SCENARIO.build(k, run, tid, sent)
   sent_at = now_us()
   return req
end

function response(status, headers, body)
   local t = now_us()
   if first_response == 0 then
      first_response = t
   end
   if t >= t0 and t < t1 then
      win_done = win_done + 1
      if status < 200 or status >= 300 then
         win_bad = win_bad + 1
      end
      if exact then
         local lat = t - sent_at
         if lat < 1 then
            lat = 1
         end
         win_sum = win_sum + lat
         if lat > win_max then
            win_max = lat
         end
         local b = floor(log(lat) * 100)
         hist[b] = (hist[b] or 0) + 1
      end
   end
   responded = responded + 1
   answered = sent
   statuses[status] = (statuses[status] or 0) + 1
   if status >= 200 and status < 300 then
      ok = ok + 1
   else
      -- flat pairs: wrk's thread:get() crashes copying nested tables
      bad[#bad + 1] = sent
      bad[#bad + 1] = status
   end
end

-- ---------------------------------------------------------------- done (main state)

local function json_list(t)
   local parts = {}
   for i = 1, #t do
      parts[#parts + 1] = string.format("%d", t[i])
   end
   return "[" .. table.concat(parts, ",") .. "]"
end

local function json_map(t)
   local parts = {}
   for k, v in pairs(t) do
      parts[#parts + 1] = string.format('"%s":%d', tostring(k), v)
   end
   return "{" .. table.concat(parts, ",") .. "}"
end

function done(summary, latency, requests)
   local out = {}
   local e = summary.errors
   out[#out + 1] = string.format(
      '{"scenario":"%s","duration_us":%d,"requests":%d,"bytes":%d,'
         .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},',
      SCENARIO.name, summary.duration, summary.requests, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout)
   out[#out + 1] = string.format(
      '"latency_us":{"min":%d,"mean":%.1f,"stdev":%.1f,"max":%d,'
         .. '"p50":%d,"p75":%d,"p90":%d,"p99":%d,"p99_9":%d},',
      latency.min, latency.mean, latency.stdev, latency.max,
      latency:percentile(50), latency:percentile(75), latency:percentile(90),
      latency:percentile(99), latency:percentile(99.9))
   local ts = {}
   local w = { done = 0, bad = 0, sum = 0, max = 0, last_first = 0, silent = 0 }
   local merged = {}
   for _, thread in ipairs(threads) do
      w.done = w.done + thread:get("win_done")
      w.bad = w.bad + thread:get("win_bad")
      w.sum = w.sum + thread:get("win_sum")
      w.max = math.max(w.max, thread:get("win_max"))
      local first = thread:get("first_response")
      if first == 0 then
         w.silent = w.silent + 1
      elseif first > w.last_first then
         w.last_first = first
      end
      for b, n in pairs(thread:get("hist")) do
         merged[b] = (merged[b] or 0) + n
      end
      ts[#ts + 1] = string.format(
         '{"tid":%d,"sent":%d,"responded":%d,"answered":%d,"ok":%d,'
            .. '"lost":%s,"bad":%s,"statuses":%s}',
         thread:get("tid"), thread:get("sent"), thread:get("responded"),
         thread:get("answered"), thread:get("ok"), json_list(thread:get("lost")),
         json_list(thread:get("bad")), json_map(thread:get("statuses")))
   end
   out[#out + 1] = string.format(
      '"window":{"t0_us":%d,"t1_us":%d,"completed":%d,"non_2xx":%d,"latency_sum_us":%d,'
         .. '"latency_max_us":%d,"last_first_response_us":%d,"threads_without_response":%d,'
         .. '"done_at_us":%d,"hist":%s},',
      env_int("BENCH_T0_US", 0), env_int("BENCH_T1_US", 0), w.done, w.bad, w.sum, w.max,
      w.last_first, w.silent, now_us(), json_map(merged))
   out[#out + 1] = '"threads":[' .. table.concat(ts, ",") .. "]}"
   local text = table.concat(out)
   local path = os.getenv("BENCH_OUT")
   if path and path ~= "" then
      local f = assert(io.open(path, "w"))
      f:write(text, "\n")
      f:close()
   end
   io.write("BENCH_JSON ", text, "\n")
end
