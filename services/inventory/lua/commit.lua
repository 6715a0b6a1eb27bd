-- commit.lua: order.paid for one order of one sku, in one atomic step.
--
-- KEYS[1] stock   hash: received, available, reserved, sold, v, off:<topic>:<partition>
-- KEYS[2] orders  hash: order_id -> JSON record
-- KEYS[3] buyers  hash: buyer_id -> units held (reserved + paid)
-- KEYS[4] holds   sorted set: order_id scored by deadline (epoch ms)
-- KEYS[5] lots    hash: lot_code -> JSON {warehouse_id, quantity, allocated, expires_on, origin,
--                 producer, harvested_on, inspection} (kept as they are: only allocated moves)
-- KEYS[6] orders-due  sorted set: order_id -> epoch ms its record may be dropped
-- KEYS[7] buyers-due  sorted set: buyer_id -> epoch ms its units may be dropped
-- ARGV[1] now (epoch ms)
-- ARGV[2] offset field `off:<topic>:<partition>`
-- ARGV[3] offset of the order.paid event
-- ARGV[4] order_id
-- ARGV[5] payment_ref
-- ARGV[6] replay window (ms): a final record is kept this long after its last event
--
-- Returns {status, fresh, record_json, {received, available, reserved, sold, v}}:
--   committed  the hold became a sale; record.a holds the lot allocations
--              (fresh 0: committed before, the stored allocations are the answer)
--   expired    the deadline had passed: the hold is released here and now, even if the
--              sweeper has not reached it yet, so a late payment never takes a unit back
--   released, rejected  the order holds nothing; nothing changes
--   unknown    no such order for this sku
--
-- Allocation is first-expired-first-out across every lot of the sku (lots without an
-- expiry date last, ties by lot_code). It is computed completely before anything is
-- written: a script that fails halfway keeps its earlier writes in Redis.

local stock, orders, buyers, holds, lots = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local now = tonumber(ARGV[1])
local offset_field = ARGV[2]
local offset = tonumber(ARGV[3])
local order_id = ARGV[4]
local retention = { orders = KEYS[6], buyers = KEYS[7], due = now + tonumber(ARGV[6]) }

--#include hold.lua

local record, answer = take_hold_event(stock, orders, order_id, offset_field, offset, retention)
if not record then
  return answer
end

local quantity = record.q
if record.x <= now then
  local encoded = release_hold(
    stock, orders, buyers, holds, order_id, record, 'expired', retention)
  -- v orders the sku's stock.changed snapshots: bumped with every counter change.
  redis.call('HINCRBY', stock, 'v', 1)
  return {'expired', 1, encoded, stock_levels(stock)}
end

local candidates = {}
local entries = redis.call('HGETALL', lots)
for i = 1, #entries, 2 do
  local lot = cjson.decode(entries[i + 1])
  if lot.quantity - lot.allocated > 0 then
    lot.code = entries[i]
    candidates[#candidates + 1] = lot
  end
end
table.sort(candidates, function(a, b)
  if a.expires_on ~= b.expires_on then
    if a.expires_on == '' then return false end
    if b.expires_on == '' then return true end
    return a.expires_on < b.expires_on
  end
  return a.code < b.code
end)

local need = quantity
local allocations = {}
local touched = {}
for _, lot in ipairs(candidates) do
  if need == 0 then break end
  local take = math.min(need, lot.quantity - lot.allocated)
  need = need - take
  lot.allocated = lot.allocated + take
  touched[#touched + 1] = lot
  allocations[#allocations + 1] = {
    lot_code = lot.code, warehouse_id = lot.warehouse_id, quantity = take,
    expires_on = lot.expires_on,
  }
end
if need > 0 then
  -- Cannot happen while available + reserved + sold == received holds: reserved units
  -- are always covered by unallocated lot units. Refuse rather than oversell.
  return redis.error_reply('commit: lots of this sku cannot cover ' .. quantity .. ' units')
end

for _, lot in ipairs(touched) do
  local code = lot.code
  lot.code = nil
  redis.call('HSET', lots, code, cjson.encode(lot))
end
redis.call('HINCRBY', stock, 'reserved', -quantity)
redis.call('HINCRBY', stock, 'sold', quantity)
redis.call('HINCRBY', stock, 'v', 1)
redis.call('ZREM', holds, order_id)
record.s = 'committed'
record.a = allocations
record.pr = ARGV[5]
record.ca = now
local encoded = cjson.encode(record)
redis.call('HSET', orders, order_id, encoded)
keep_until(retention.orders, order_id, retention.due)
keep_until(retention.buyers, record.b, retention.due)
return {'committed', 1, encoded, stock_levels(stock)}
