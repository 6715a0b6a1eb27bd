-- Apply one inventory outcome to an order, if the state machine allows it.
-- KEYS[1] order hash   <prefix>lo:{u:<tag>}:order:<order_id>
-- ARGV[1] target status   ARGV[2] allowed current statuses, comma separated
-- ARGV[3] now (RFC 3339)  ARGV[4] seconds the order stays once final (0: the target is not final)
-- ARGV[5..] extra field, value, ... to record with the transition (expires_at, reason, ...)
-- Returns {"applied" | "same" | "stale" | "missing", previous status, placed_ms}
--
-- Kafka delivers at least once: a redelivered or replayed outcome finds the order already
-- in (or past) the target state and changes nothing. Any outcome also proves the order's
-- placement reached inventory, so it is marked published: a send that timed out here but
-- was delivered later by the producer is never published again by a retry. Waiters learn
-- of the change from the consumer's one announcement per batch (outcomes.py).
local current = redis.call('HMGET', KEYS[1], 'status', 'placed_ms')
local status = current[1]
if not status then
  return {'missing', '', 0}
end
local placed_ms = tonumber(current[2]) or 0
if status == ARGV[1] then
  redis.call('HSET', KEYS[1], 'published', '1')
  return {'same', status, placed_ms}
end
if not string.find(',' .. ARGV[2] .. ',', ',' .. status .. ',', 1, true) then
  redis.call('HSET', KEYS[1], 'published', '1')
  return {'stale', status, placed_ms}
end
-- One HSET for the flag and the transition: each redis.call costs on its own.
local fields = {'published', '1', 'status', ARGV[1], 'updated_at', ARGV[3]}
for i = 5, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call('HSET', KEYS[1], unpack(fields))
if tonumber(ARGV[4]) > 0 then
  -- Final: nothing is held any more; the order stays readable for the retention, then leaves.
  redis.call('EXPIRE', KEYS[1], ARGV[4])
end
return {'applied', status, placed_ms}
