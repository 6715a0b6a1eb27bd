-- upsert_lot.lua: create a lot or change its received quantity, in one atomic step.
--
-- KEYS[1] stock  hash: received, available, reserved, sold, v
-- KEYS[2] lots   hash: lot_code -> JSON {warehouse_id, quantity, allocated, expires_on, origin,
--                producer, harvested_on, inspection}
-- ARGV[1] lot_code
-- ARGV[2] warehouse_id
-- ARGV[3] quantity: the lot's total received units
-- ARGV[4] expires_on (YYYY-MM-DD, '' for none)
-- ARGV[5] origin ('' for none)
-- ARGV[6] producer ('' for none)
-- ARGV[7] harvested_on (YYYY-MM-DD, '' for none)
-- ARGV[8] inspection ('' for none)
--
-- Returns {status, lot_json_or_detail, {received, available, reserved, sold, v}}, status one
-- of created, updated, conflict. The sku's received and available move by the change of
-- the lot's quantity. A decrease may take neither units already allocated to this lot
-- (sold) nor units the sku no longer has available (held by reservations): that is a
-- conflict and nothing changes, so available + reserved + sold == received stays true.

local stock, lots = KEYS[1], KEYS[2]
local lot_code = ARGV[1]
local quantity = tonumber(ARGV[3])

local function levels()
  return redis.call('HMGET', stock, 'received', 'available', 'reserved', 'sold', 'v')
end

local raw = redis.call('HGET', lots, lot_code)
local previous, allocated = 0, 0
if raw then
  local lot = cjson.decode(raw)
  previous, allocated = lot.quantity, lot.allocated
end
if quantity < allocated then
  return {'conflict', 'lot ' .. lot_code .. ' has ' .. allocated ..
    ' units allocated to paid orders; its quantity cannot go below that', levels()}
end
local delta = quantity - previous
local available = tonumber(redis.call('HGET', stock, 'available') or '0')
if delta < 0 and -delta > available then
  return {'conflict', 'lowering lot ' .. lot_code .. ' by ' .. -delta .. ' needs ' .. -delta ..
    ' available units of the sku, but only ' .. available ..
    ' are available (the rest are held or sold)', levels()}
end

redis.call('HSETNX', stock, 'reserved', 0)
redis.call('HSETNX', stock, 'sold', 0)
redis.call('HINCRBY', stock, 'received', delta)
redis.call('HINCRBY', stock, 'available', delta)
-- v orders the sku's stock.changed snapshots: bumped with every counter change (also a
-- lot created at 0 or set to its current quantity: harmless, the snapshot is just newer).
redis.call('HINCRBY', stock, 'v', 1)
local encoded = cjson.encode({
  warehouse_id = ARGV[2], quantity = quantity, allocated = allocated,
  expires_on = ARGV[4], origin = ARGV[5],
  producer = ARGV[6], harvested_on = ARGV[7], inspection = ARGV[8],
})
redis.call('HSET', lots, lot_code, encoded)
local status = 'updated'
if not raw then status = 'created' end
return {status, encoded, levels()}
