-- Apply one inventory outcome to an order, if the state machine allows it.
-- KEYS[1] order hash   <prefix>lo:{o:<order_id>}:order
-- ARGV[1] pub/sub channel of order updates   ARGV[2] order_id   ARGV[3] target status
-- ARGV[4] allowed current statuses, comma separated   ARGV[5] now (RFC 3339)
-- ARGV[6..] extra field, value, ... to record with the transition (expires_at, reason, ...)
-- Returns {"applied" | "same" | "stale" | "missing", previous status, placed_ms}
--
-- Kafka delivers at least once: a redelivered or replayed outcome finds the order already
-- in (or past) the target state and changes nothing. Any outcome also proves the order's
-- placement reached inventory, so it is marked published: a send that timed out here but
-- was delivered later by the producer is never published again by a retry. The notification is published in the
-- same script, so a transition that happened is always announced to the waiters.
local current = redis.call('HMGET', KEYS[1], 'status', 'placed_ms')
local status = current[1]
if not status then
  return {'missing', '', 0}
end
local placed_ms = tonumber(current[2]) or 0
redis.call('HSET', KEYS[1], 'published', '1')
if status == ARGV[3] then
  return {'same', status, placed_ms}
end
if not string.find(',' .. ARGV[4] .. ',', ',' .. status .. ',', 1, true) then
  return {'stale', status, placed_ms}
end
local fields = {'status', ARGV[3], 'updated_at', ARGV[5]}
for i = 6, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('PUBLISH', ARGV[1], ARGV[2])
return {'applied', status, placed_ms}
