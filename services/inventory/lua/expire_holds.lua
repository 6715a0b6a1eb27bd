-- expire_holds.lua: the sweeper's step for one sku: release holds whose deadline passed.
--
-- KEYS[1] stock   hash: received, available, reserved, sold, v
-- KEYS[2] orders  hash: order_id -> JSON record
-- KEYS[3] buyers  hash: buyer_id -> units held (reserved + paid)
-- KEYS[4] holds   sorted set: order_id scored by deadline (epoch ms)
-- KEYS[5] outbox  hash: order_id -> JSON record of an expiry not yet published
-- KEYS[6] orders-due  sorted set: order_id -> epoch ms its record may be dropped
-- KEYS[7] buyers-due  sorted set: buyer_id -> epoch ms its units may be dropped
-- ARGV[1] now (epoch ms)
-- ARGV[2] most holds to release in this call (keeps one call short)
-- ARGV[3] replay window (ms): a final record is kept this long after its last event
--
-- Returns {released, holds_left, outbox_len, {received, available, reserved, sold, v}}.
--
-- Several sweepers may run this on the same sku at once: Redis runs scripts one at a
-- time and a released hold leaves the sorted set in the same step, so each hold is
-- released exactly once. The outcome goes to the outbox in that step too; the outbox is
-- removed only after Kafka acknowledged it, so a crash in between loses no expiry.

--#include hold.lua

local stock, orders, buyers, holds, outbox = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local now = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local retention = { orders = KEYS[6], buyers = KEYS[7], due = now + tonumber(ARGV[3]) }

local released = 0
local due = redis.call('ZRANGEBYSCORE', holds, '-inf', now, 'LIMIT', 0, limit)
for _, order_id in ipairs(due) do
  redis.call('ZREM', holds, order_id)
  local raw = redis.call('HGET', orders, order_id)
  if raw then
    local record = cjson.decode(raw)
    if record.s == 'reserved' then
      local encoded = release_hold(
        stock, orders, buyers, holds, order_id, record, 'expired', retention)
      redis.call('HSET', outbox, order_id, encoded)
      released = released + 1
    end
  end
end
if released > 0 then
  -- v orders the sku's stock.changed snapshots: one bump for the whole call is enough,
  -- since nobody can read the counters between its releases.
  redis.call('HINCRBY', stock, 'v', 1)
end
return {
  released,
  redis.call('ZCARD', holds),
  redis.call('HLEN', outbox),
  stock_levels(stock),
}
