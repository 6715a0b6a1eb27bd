-- Place an order in one atomic step: idempotency claim, the buyer's token bucket, and the
-- order record (created once, or the right to publish it again).
-- KEYS[1] token bucket         <prefix>lo:{u:<tag>}:tokens:<buyer>   ("<tokens> <ts ms>")
-- KEYS[2] idempotency record    <prefix>lo:{u:<tag>}:idem:<buyer>:<Idempotency-Key>  ("<order_id>|<fingerprint>")
-- KEYS[3] the new order's hash  <prefix>lo:{u:<tag>}:order:<ARGV[3]>
-- ARGV[1] burst   ARGV[2] refill per second   ARGV[3] new order_id (starts with <tag>)
-- ARGV[4] request fingerprint   ARGV[5] idempotency record TTL (s)
-- ARGV[6] now (epoch ms)   ARGV[7] publish lease (ms)
-- ARGV[8] order key prefix (`<prefix>lo:{u:`): the key of an order named by a stored record
-- ARGV[9] retention of an order born final (s): as long as its idempotency record
-- ARGV[10] "1" if the new order is born final (rejected), else "0"
-- ARGV[11], ARGV[12], ... field, value, ... of the new order, without order_id (arguments,
--          not a JSON document: decoding one in Lua cost more than the rest of the script)
-- Returns {"limited", retry_after_ms}
--       | {"mismatch", order_id}
--       | {"claimed" | "replay", order_id, created (0|1), publish (0|1), field, value, ...}
--         with the order's fields only when it was not created by this call.
--
-- All keys share the buyer's {u:<tag>} hash tag (order ids start with their buyer's tag),
-- so this is one Redis Cluster slot. A repeated key is answered before the bucket is
-- touched: a retry (or 50 identical requests sent at once) creates nothing new, costs no
-- token and is never refused with 429. The order is created by whoever finds it missing
-- (only this call writes it first, but a replayed key whose claim predates this script
-- may name an order never stored), and whoever finds it unpublished with an expired lease
-- takes the lease and publishes again (same deterministic event id; inventory dedups by
-- order_id). The lease keeps concurrent duplicates from publishing many times.
--
-- Every redis.call costs ~1-2 us of Redis' CPU on top of what it does, and this script
-- runs once per attempt (a sale's refusals outnumber its orders a hundred to one): the
-- key is claimed and looked up in one SET NX GET (undone by a DEL in the rare limited
-- case), and the bucket is a string written with its TTL in one SET.
local order_id = ARGV[3]
local order_key = KEYS[3]
local outcome = 'claimed'
local existing = redis.call('SET', KEYS[2], order_id .. '|' .. ARGV[4], 'NX', 'GET', 'EX', ARGV[5])
if existing then
  local sep = string.find(existing, '|', 1, true)
  order_id = string.sub(existing, 1, sep - 1)
  if string.sub(existing, sep + 1) ~= ARGV[4] then
    return {'mismatch', order_id}
  end
  outcome = 'replay'
  order_key = ARGV[8] .. string.sub(order_id, 1, 4) .. '}:order:' .. order_id
else
  -- Server time, so every live_orders process refills the bucket by the same clock.
  local t = redis.call('TIME')
  local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local burst = tonumber(ARGV[1])
  local rate = tonumber(ARGV[2])
  local tokens = burst
  local ts = now_ms
  local state = redis.call('GET', KEYS[1])
  if state then
    local sep = string.find(state, ' ', 1, true)
    tokens = tonumber(string.sub(state, 1, sep - 1))
    ts = tonumber(string.sub(state, sep + 1))
  end
  if now_ms > ts then
    tokens = math.min(burst, tokens + (now_ms - ts) * rate / 1000)
  end
  local limited = tokens < 1
  if not limited then
    tokens = tokens - 1
  end
  -- The bucket disappears once it would be full again: idle buyers cost no memory.
  local ttl_s = 3600
  if rate > 0 then
    ttl_s = math.ceil((burst - tokens) / rate) + 1
  end
  redis.call('SET', KEYS[1], tostring(tokens) .. ' ' .. tostring(now_ms), 'EX', ttl_s)
  if limited then
    redis.call('DEL', KEYS[2])
    local retry_ms = 60000
    if rate > 0 then
      retry_ms = math.ceil((1 - tokens) * 1000 / rate)
    end
    return {'limited', retry_ms}
  end
end

local now = tonumber(ARGV[6])
local lease = tonumber(ARGV[7])
-- A key claimed just now names the candidate, whose id is new: no need to look.
if outcome == 'claimed' or redis.call('EXISTS', order_key) == 0 then
  redis.call(
    'HSET', order_key, 'order_id', order_id, 'published', '0',
    'lease_until', tostring(now + lease), unpack(ARGV, 11)
  )
  if ARGV[10] == '1' then
    -- Born rejected: it holds nothing, so it leaves after the retention like any final order.
    redis.call('EXPIRE', order_key, ARGV[9])
  end
  if outcome == 'claimed' then
    return {outcome, order_id, 1, 1}
  end
  local result = {outcome, order_id, 1, 1}
  local stored = redis.call('HGETALL', order_key)
  for i = 1, #stored do
    result[#result + 1] = stored[i]
  end
  return result
end
local publish = 0
local state = redis.call('HMGET', order_key, 'published', 'lease_until')
if state[1] == '0' and (tonumber(state[2]) or 0) <= now then
  redis.call('HSET', order_key, 'lease_until', tostring(now + lease))
  publish = 1
end
local result = {outcome, order_id, 0, publish}
local stored = redis.call('HGETALL', order_key)
for i = 1, #stored do
  result[#result + 1] = stored[i]
end
return result
