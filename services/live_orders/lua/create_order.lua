-- Store a new order once, or hand out the right to (re)publish its creation event.
-- KEYS[1] order hash   <prefix>lo:{o:<order_id>}:order
-- ARGV[1] now (epoch ms)   ARGV[2] publish lease (ms)   ARGV[3..] field, value, ... of the new order
-- Returns {created (0|1), publish (0|1), field, value, ...} with the order as stored.
--
-- The idempotency claim (buyer slot) and the order (order slot) are two Lua calls, so a
-- request can die between them, or between this call and the Kafka publish. Whoever finds
-- the order missing creates it; whoever finds it unpublished with an expired lease takes
-- the lease and publishes again (same deterministic event id, inventory dedups by
-- order_id). The lease keeps 50 concurrent duplicates from publishing 50 times.
local now = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
local created = 0
local publish = 0
if redis.call('EXISTS', KEYS[1]) == 0 then
  local fields = {}
  for i = 3, #ARGV do
    fields[#fields + 1] = ARGV[i]
  end
  redis.call('HSET', KEYS[1], unpack(fields))
  redis.call('HSET', KEYS[1], 'published', '0', 'lease_until', tostring(now + lease))
  created = 1
  publish = 1
else
  local state = redis.call('HMGET', KEYS[1], 'published', 'lease_until')
  if state[1] == '0' and (tonumber(state[2]) or 0) <= now then
    redis.call('HSET', KEYS[1], 'lease_until', tostring(now + lease))
    publish = 1
  end
end
local result = {created, publish}
local stored = redis.call('HGETALL', KEYS[1])
for i = 1, #stored do
  result[#result + 1] = stored[i]
end
return result
