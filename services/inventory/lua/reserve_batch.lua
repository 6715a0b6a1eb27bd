-- reserve_batch.lua: decide a run of order.placed events of ONE sku in one atomic step.
--
-- KEYS[1] stock   hash: received, available, reserved, sold, v (the version: bumped in the
--                 same step as every counter change, so stock.changed snapshots can be
--                 ordered by consumers), and `off:<topic>:<partition>` (the highest Kafka
--                 offset applied to this sku from that partition)
-- KEYS[2] orders  hash: order_id -> JSON record (decision and current state of the order)
-- KEYS[3] buyers  hash: buyer_id -> units the buyer holds of this sku (reserved + paid)
-- KEYS[4] holds   sorted set: order_id scored by its payment deadline (epoch ms)
-- KEYS[5] orders-due  sorted set: order_id -> epoch ms its record may be dropped (final
--                 records only: a held order is kept by its hold, and scheduled when it ends)
-- KEYS[6] buyers-due  sorted set: buyer_id -> epoch ms its units may be dropped (a buyer
--                 who holds units now is taken out: kept while held)
-- ARGV[1] now (epoch ms)
-- ARGV[2] hold time to live (ms)
-- ARGV[3] offset field of the consumed partition, `off:<topic>:<partition>`
-- ARGV[4] replay window (ms): a final record is kept this long after its last event, so a
--         replay from the oldest record Kafka still holds finds the decision
-- ARGV[5..] seven values per order, in offset order:
--           offset, order_id, buyer_id, quantity, per_user_limit, session_id, total_cents
--
-- Returns {{received, available, reserved, sold, v}, {{order_id, fresh, record_json}, ...}}.
-- fresh is 1 when this call decided the order, 0 when it returned a stored decision
-- (replay); record_json is "" for an offset already applied whose order is unknown.
--
-- Why one script: the dedup by order_id, the per-user limit, the stock check, the hold
-- and the offset record must be one step, or two consumers (or a replay racing the
-- original) could both see the same free unit. Redis runs a script without interleaving.

local stock, orders, buyers, holds = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local orders_due, buyers_due = KEYS[5], KEYS[6]
local now = tonumber(ARGV[1])
local deadline = now + tonumber(ARGV[2])
local offset_field = ARGV[3]
local drop_at = now + tonumber(ARGV[4])

local applied = tonumber(redis.call('HGET', stock, offset_field) or '-1')
local highest = applied
local available = tonumber(redis.call('HGET', stock, 'available') or '0')
local reserved = tonumber(redis.call('HGET', stock, 'reserved') or '0')
local held = false
local results = {}

for i = 5, #ARGV, 7 do
  local offset = tonumber(ARGV[i])
  local order_id = ARGV[i + 1]
  local stored = redis.call('HGET', orders, order_id)
  if stored then
    -- Decided before (a replayed batch, or the same order published twice): answer
    -- what was decided then, change nothing (but keep a final decision as long as this
    -- replayed event can come again).
    if cjson.decode(stored).s ~= 'reserved' then
      redis.call('ZADD', orders_due, 'GT', drop_at, order_id)
    end
    results[#results + 1] = {order_id, 0, stored}
  elseif offset <= applied then
    -- This offset was applied already but left no decision under this id: never apply
    -- an offset twice.
    results[#results + 1] = {order_id, 0, ''}
  else
    local buyer = ARGV[i + 2]
    local quantity = tonumber(ARGV[i + 3])
    local limit = tonumber(ARGV[i + 4])
    local record = {
      s = 'rejected', b = buyer, q = quantity, sid = ARGV[i + 5], t = ARGV[i + 6],
    }
    local owned = tonumber(redis.call('HGET', buyers, buyer) or '0')
    -- per_user_limit 0 means the listing has no per-buyer cap.
    if limit > 0 and owned + quantity > limit then
      record.r = 'limit_exceeded'
    elseif available < quantity then
      record.r = 'sold_out'
    else
      available = available - quantity
      reserved = reserved + quantity
      held = true
      redis.call('HINCRBY', buyers, buyer, quantity)
      redis.call('ZREM', buyers_due, buyer)
      redis.call('ZADD', holds, deadline, order_id)
      record.s = 'reserved'
      record.x = deadline
    end
    local encoded = cjson.encode(record)
    redis.call('HSET', orders, order_id, encoded)
    if record.s == 'rejected' then
      redis.call('ZADD', orders_due, 'GT', drop_at, order_id)
    end
    results[#results + 1] = {order_id, 1, encoded}
  end
  if offset > highest then
    highest = offset
  end
end

if held then
  redis.call('HSET', stock, 'available', available, 'reserved', reserved)
  -- Rejections leave the counters as they were: only a hold moves the version.
  redis.call('HINCRBY', stock, 'v', 1)
end
if highest > applied then
  redis.call('HSET', stock, offset_field, highest)
end
local levels = redis.call('HMGET', stock, 'received', 'available', 'reserved', 'sold', 'v')
return {levels, results}
