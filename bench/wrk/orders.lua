-- wrk script of bench/http_load.py: POST an order per request, each with its own
-- Idempotency-Key and a bearer token drawn from a pool of buyers, and count the answers by
-- status (and by `reason` for 409s).
--
-- Configured by the file named in $BENCH_WRK_CONFIG (key=value lines, written by
-- bench/wrk_runner.py), because wrk hands `--` arguments to the threads' init() only, and
-- done() runs in a separate Lua state that needs the output path too.
--
-- Two modes:
--   timed  (quota=0): as many requests as the server answers within wrk's -d duration.
--   quota  (quota=N): exactly N requests in total, thread i sending its share; requests are
--          paced over `window_s` seconds (never faster, as fast as answers allow if the
--          server is slower); a thread stops once all its answers are in and leaves a
--          marker file, so the harness can end wrk early (wrk's main thread otherwise
--          sleeps out the whole -d).
--
-- Every wrk thread runs its own Lua state: counters are globals per thread, collected in
-- done() through the thread objects that setup() kept.
--
-- histogram=1 (bench/scale_out.py) adds wrk's whole latency histogram to the result (the
-- count of every 1 µs bucket that has one), so the histograms of wrk instances that ran
-- side by side can be added up and their percentiles taken together.

local function read_config(path)
   local cfg = {}
   for line in io.lines(path) do
      local key, value = string.match(line, "^([%w_]+)=(.*)$")
      if key then
         cfg[key] = value
      end
   end
   return cfg
end

local cfg = read_config(assert(os.getenv("BENCH_WRK_CONFIG"), "BENCH_WRK_CONFIG is not set"))
local threads_total = tonumber(cfg.threads)
local quota = tonumber(cfg.quota)
local window_s = tonumber(cfg.window_s)

-- A monotonic clock for pacing and for the time of the last answer: plain Lua only has
-- os.time() (whole seconds) and os.clock() (CPU time). wrk embeds LuaJIT, so use its FFI.
local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local timespec = ffi.new("bench_timespec")
local function now_s()
   ffi.C.clock_gettime(CLOCK_MONOTONIC, timespec)
   return tonumber(timespec.tv_sec) + tonumber(timespec.tv_nsec) * 1e-9
end

-- ---------------------------------------------------------------- main state: setup/done

local thread_objects = {}

function setup(thread)
   table.insert(thread_objects, thread)
   thread:set("id", #thread_objects)
end

local function json_string(s)
   return '"' .. string.gsub(tostring(s), '[%c"\\]', function(c)
      return string.format("\\u%04x", string.byte(c))
   end) .. '"'
end

local function json(value)
   local kind = type(value)
   if kind == "table" then
      local parts = {}
      for k, v in pairs(value) do
         parts[#parts + 1] = json_string(k) .. ":" .. json(v)
      end
      return "{" .. table.concat(parts, ",") .. "}"
   elseif kind == "string" then
      return json_string(value)
   elseif kind == "number" then
      if value ~= value or value == math.huge or value == -math.huge then
         return "null"
      end
      return string.format("%.17g", value)
   elseif kind == "boolean" then
      return tostring(value)
   end
   return "null"
end

-- wrk's latency histogram as {µs = count}: every bucket that holds an answer (after wrk's
-- own coordinated-omission correction, which its percentiles are taken from too).
local function histogram(latency)
   local buckets = {}
   if type(latency[1]) == "number" then
      -- wrk after 4.1: latency[i] is the count of bucket i-1 (µs)
      for us = latency.min, latency.max do
         local count = latency[us + 1]
         if count > 0 then
            buckets[us] = count
         end
      end
   else
      -- wrk 4.1 (Debian's): #latency buckets are occupied, latency(i) is the i-th one's
      -- (value, count)
      for i = 1, #latency do
         local us, count = latency(i)
         buckets[us] = count
      end
   end
   return buckets
end

function done(summary, latency, requests)
   local result = {
      duration_us = summary.duration,
      answered = summary.requests,
      bytes = summary.bytes,
      errors = summary.errors,
      latency_us = {
         min = latency.min,
         max = latency.max,
         mean = latency.mean,
         stdev = latency.stdev,
         p50 = latency:percentile(50),
         p90 = latency:percentile(90),
         p99 = latency:percentile(99),
         p999 = latency:percentile(99.9),
      },
      threads = {},
   }
   if cfg.histogram == "1" then
      -- Reading the histogram is wrk's work but not load generation: its CPU time (all
      -- other threads have stopped) is reported so that it can be taken out again.
      local started = os.clock()
      result.latency_histogram_us = histogram(latency)
      result.histogram_cpu_s = os.clock() - started
   end
   for _, thread in ipairs(thread_objects) do
      result.threads[tostring(thread:get("id"))] = {
         sent = thread:get("sent"),
         answered = thread:get("answered"),
         statuses = thread:get("statuses"),
         reasons = thread:get("reasons"),
         first_sent = thread:get("first_sent"),
         last_sent = thread:get("last_sent"),
         last_answer = thread:get("last_answer"),
      }
   end
   local out = assert(io.open(cfg.out, "w"))
   out:write(json(result), "\n")
   out:close()
end

-- ---------------------------------------------------------------- thread states

local tokens = {}
local share = 0 -- quota mode: this thread's number of requests
local gap_s = 0 -- quota mode: seconds between two scheduled sends of this thread
local scheduled = 0 -- quota mode: requests released by delay()
local verified = false
local head, body

function init(args)
   sent = 0
   answered = 0
   statuses = {}
   reasons = {}
   for line in io.lines(cfg.tokens) do
      if line ~= "" then
         tokens[#tokens + 1] = line
      end
   end
   assert(#tokens > 0, "no tokens in " .. cfg.tokens)
   body = '{"sku":"' .. cfg.sku .. '","quantity":1}'
   local host = wrk.host
   if wrk.port then
      host = host .. ":" .. wrk.port
   end
   -- Built by hand rather than with wrk.format (a table and a string.format per header per
   -- request): the generator must stay cheap next to the server it measures.
   head = "POST " .. cfg.path .. " HTTP/1.1\r\nHost: " .. host
      .. "\r\nContent-Type: application/json\r\nContent-Length: " .. #body
      .. "\r\nAuthorization: Bearer "
   if quota > 0 then
      share = math.floor(quota / threads_total)
      if id <= quota % threads_total then
         share = share + 1
      end
      gap_s = window_s / math.max(share, 1)
   end
end

local function build(n, key)
   -- Request n of thread `id` is attempt (n-1)*threads + id overall: consecutive attempts
   -- go to consecutive buyers, so every buyer gets attempts/buyers of them, spread out.
   local buyer = ((n - 1) * threads_total + (id - 1)) % #tokens + 1
   return head .. tokens[buyer] .. "\r\nIdempotency-Key: " .. key .. "\r\n\r\n" .. body
end

function request()
   if id == 1 and not verified then
      -- wrk calls request() once on the first thread before the run to check that it
      -- parses; that request is never sent, so it must not count.
      verified = true
      return build(1, cfg.nonce .. "-verify")
   end
   sent = sent + 1
   if quota > 0 then
      last_sent = now_s()
   end
   return build(sent, cfg.nonce .. "-" .. id .. "-" .. sent)
end

local PARKED_MS = 1e9 -- longer than any run: the connection never sends again

if quota > 0 then
   -- Defined only in quota mode: wrk calls delay() before every request when it exists.
   function delay()
      if scheduled >= share then
         return PARKED_MS
      end
      local t = now_s()
      if first_sent == nil then
         first_sent = t
      end
      local due = first_sent + scheduled * gap_s
      scheduled = scheduled + 1
      if due <= t then
         return 0
      end
      return math.floor((due - t) * 1000)
   end
end

function response(status, headers, body)
   answered = answered + 1
   statuses[status] = (statuses[status] or 0) + 1
   if status == 409 then
      local reason = string.match(body, '"reason"%s*:%s*"([^"]*)"') or "?"
      reasons[reason] = (reasons[reason] or 0) + 1
   end
   if quota > 0 then
      last_answer = now_s()
      if answered >= share then
         local marker = assert(io.open(cfg.done_dir .. "/thread-" .. id .. ".done", "w"))
         marker:close()
         wrk.thread:stop()
      end
   end
end
