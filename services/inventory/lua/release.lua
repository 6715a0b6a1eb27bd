-- release.lua: order.cancelled for one order of one sku, in one atomic step.
--
-- KEYS[1] stock   hash: received, available, reserved, sold, v, off:<topic>:<partition>
-- KEYS[2] orders  hash: order_id -> JSON record
-- KEYS[3] buyers  hash: buyer_id -> units held (reserved + paid)
-- KEYS[4] holds   sorted set: order_id scored by deadline (epoch ms)
-- KEYS[5] orders-due  sorted set: order_id -> epoch ms its record may be dropped
-- KEYS[6] buyers-due  sorted set: buyer_id -> epoch ms its units may be dropped
-- ARGV[1] now (epoch ms)
-- ARGV[2] offset field `off:<topic>:<partition>`
-- ARGV[3] offset of the order.cancelled event
-- ARGV[4] order_id
-- ARGV[5] replay window (ms): a final record is kept this long after its last event
--
-- Returns {status, fresh, record_json, {received, available, reserved, sold, v}}:
--   released  a live hold: its units are back in the pool
--   expired   the deadline had passed (swept now if the sweeper had not yet)
--   committed, rejected, unknown  nothing held: nothing changes
-- A replay (fresh 0) reports the state reached the first time and changes nothing, so a
-- cancel delivered twice gives the units back once.

local stock, orders, buyers, holds = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now = tonumber(ARGV[1])
local offset_field = ARGV[2]
local offset = tonumber(ARGV[3])
local order_id = ARGV[4]
local retention = { orders = KEYS[5], buyers = KEYS[6], due = now + tonumber(ARGV[5]) }

--#include hold.lua

local record, answer = take_hold_event(stock, orders, order_id, offset_field, offset, retention)
if not record then
  return answer
end

local state = 'released'
if record.x <= now then
  state = 'expired'
end
local encoded = release_hold(stock, orders, buyers, holds, order_id, record, state, retention)
-- v orders the sku's stock.changed snapshots: bumped with every counter change.
redis.call('HINCRBY', stock, 'v', 1)
return {state, 1, encoded, stock_levels(stock)}
