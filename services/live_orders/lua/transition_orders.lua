-- Apply inventory outcomes to orders, each if the state machine allows it: one call for a
-- consumed batch (on a cluster, for the batch's orders in one slot).
-- KEYS[n] the n-th order's hash   <prefix>lo:{u:<tag>}:order:<order_id>
-- ARGV[1] now (RFC 3339); then per order, in KEYS' order:
--   target status, allowed current statuses (comma separated), seconds the order stays
--   once final (0: the target is not final), the number of extra fields, then the extra
--   field, value, ... to record with the transition (expires_at, reason, ...)
-- Returns per order {"applied" | "same" | "stale" | "missing", previous status, placed_ms},
-- flattened, in KEYS' order; an order named twice sees the first transition's result.
--
-- Kafka delivers at least once: a redelivered or replayed outcome finds the order already
-- in (or past) the target state and changes nothing. Any outcome also proves the order's
-- placement reached inventory, so it is marked published: a send that timed out here but
-- was delivered later by the producer is never published again by a retry. Waiters learn
-- of the change from the consumer's one announcement per batch (handlers.py).
--
-- One call per batch, not per order: a call's own cost in Redis (argument conversion,
-- script lookup, the reply) was as large as the transition's commands.
local now = ARGV[1]
local results = {}
local a = 2
for k = 1, #KEYS do
  local key = KEYS[k]
  local target = ARGV[a]
  local allowed = ARGV[a + 1]
  local retention = tonumber(ARGV[a + 2])
  local extra = tonumber(ARGV[a + 3])
  local first = a + 4
  a = first + extra * 2
  local current = redis.call('HMGET', key, 'status', 'placed_ms')
  local status = current[1]
  if not status then
    results[#results + 1] = 'missing'
    results[#results + 1] = ''
    results[#results + 1] = 0
  else
    local placed_ms = tonumber(current[2]) or 0
    local outcome = 'applied'
    if status == target then
      outcome = 'same'
    elseif not string.find(',' .. allowed .. ',', ',' .. status .. ',', 1, true) then
      outcome = 'stale'
    end
    if outcome == 'applied' then
      -- One HSET for the flag and the transition: each redis.call costs on its own.
      local fields = {'published', '1', 'status', target, 'updated_at', now}
      for i = first, a - 1 do
        fields[#fields + 1] = ARGV[i]
      end
      redis.call('HSET', key, unpack(fields))
      if retention > 0 then
        -- Final: nothing is held any more; the order stays readable for the retention,
        -- then leaves.
        redis.call('EXPIRE', key, retention)
      end
    else
      redis.call('HSET', key, 'published', '1')
    end
    results[#results + 1] = outcome
    results[#results + 1] = status
    results[#results + 1] = placed_ms
  end
end
return results
