-- release.lua: order.cancelled for one order of one sku, in one atomic step.
--
-- KEYS[1] stock   hash: received, available, reserved, sold, v, off:<topic>:<partition>
-- KEYS[2] orders  hash: order_id -> JSON record
-- KEYS[3] buyers  hash: buyer_id -> units held (reserved + paid)
-- KEYS[4] holds   sorted set: order_id scored by deadline (epoch ms)
-- ARGV[1] now (epoch ms)
-- ARGV[2] offset field `off:<topic>:<partition>`
-- ARGV[3] offset of the order.cancelled event
-- ARGV[4] order_id
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

local function levels()
  return redis.call('HMGET', stock, 'received', 'available', 'reserved', 'sold', 'v')
end

local raw = redis.call('HGET', orders, order_id)
if not raw then
  return {'unknown', 0, '', levels()}
end
local applied = tonumber(redis.call('HGET', stock, offset_field) or '-1')
local record = cjson.decode(raw)
if record.s ~= 'reserved' or offset <= applied then
  return {record.s, 0, raw, levels()}
end
redis.call('HSET', stock, offset_field, offset)

local quantity = record.q
redis.call('HINCRBY', stock, 'available', quantity)
redis.call('HINCRBY', stock, 'reserved', -quantity)
-- v orders the sku's stock.changed snapshots: bumped with every counter change.
redis.call('HINCRBY', stock, 'v', 1)
if redis.call('HINCRBY', buyers, record.b, -quantity) <= 0 then
  redis.call('HDEL', buyers, record.b)
end
redis.call('ZREM', holds, order_id)
if record.x <= now then
  record.s = 'expired'
else
  record.s = 'released'
end
local encoded = cjson.encode(record)
redis.call('HSET', orders, order_id, encoded)
return {record.s, 1, encoded, levels()}
