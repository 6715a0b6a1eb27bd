-- Per-buyer token bucket and idempotency claim, in one atomic step.
-- KEYS[1] token bucket hash     <prefix>lo:{b:<buyer>}:bucket   (tokens, ts_ms)
-- KEYS[2] idempotency record    <prefix>lo:{b:<buyer>}:idem:<Idempotency-Key>  ("<order_id>|<fingerprint>")
-- ARGV[1] burst (bucket size)   ARGV[2] refill per second   ARGV[3] order_id to claim with
-- ARGV[4] request fingerprint   ARGV[5] idempotency record TTL in seconds
-- Returns {"replay", order_id} | {"mismatch", order_id} | {"limited", retry_after_ms} | {"claimed", order_id}
--
-- Both keys share the {b:<buyer>} hash tag, so this is one Redis Cluster slot. A repeated
-- key is answered before the bucket is touched: a retry (or 50 identical requests sent at
-- once) creates nothing new, so it costs no token and is never refused with 429.
local existing = redis.call('GET', KEYS[2])
if existing then
  local sep = string.find(existing, '|', 1, true)
  local order_id = string.sub(existing, 1, sep - 1)
  if string.sub(existing, sep + 1) == ARGV[4] then
    return {'replay', order_id}
  end
  return {'mismatch', order_id}
end

-- Server time, so every live_orders process refills the bucket by the same clock.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local burst = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now_ms
if now_ms > ts then
  tokens = math.min(burst, tokens + (now_ms - ts) * rate / 1000)
end
-- The bucket disappears once it would be full again: idle buyers cost no memory.
local ttl_s = 3600
if rate > 0 then
  ttl_s = math.ceil((burst - tokens + 1) / rate) + 1
end
if tokens < 1 then
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now_ms))
  redis.call('EXPIRE', KEYS[1], ttl_s)
  local retry_ms = 60000
  if rate > 0 then
    retry_ms = math.ceil((1 - tokens) * 1000 / rate)
  end
  return {'limited', retry_ms}
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens - 1), 'ts', tostring(now_ms))
redis.call('EXPIRE', KEYS[1], ttl_s)
redis.call('SET', KEYS[2], ARGV[3] .. '|' .. ARGV[4], 'EX', ARGV[5])
return {'claimed', ARGV[3]}
