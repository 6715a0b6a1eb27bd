-- forget_decisions.lua: drop the order records and buyer units of one sku whose time came.
--
-- KEYS[1] orders      hash: order_id -> JSON record
-- KEYS[2] orders-due  sorted set: order_id -> epoch ms the record may be dropped
-- KEYS[3] buyers      hash: buyer_id -> units held (reserved + paid)
-- KEYS[4] buyers-due  sorted set: buyer_id -> epoch ms its units may be dropped
-- ARGV[1] now (epoch ms)
-- ARGV[2] most entries of each kind to drop in this call (keeps one call short)
--
-- Returns {orders dropped, buyers dropped, orders still scheduled, buyers still scheduled}.
--
-- An entry is scheduled (now + the topics' replay window) by every script that ends a
-- hold or finds an ended one, so when it is due no event that could need it (a replayed
-- order.placed, order.paid or order.cancelled) is left in the log. A record still
-- `reserved` is never dropped here: its hold keeps it, and ending the hold schedules it
-- again (it can only be due if a hold outlived the whole window, the sweeper being down).

local orders, orders_due, buyers, buyers_due = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])

local dropped_orders = 0
for _, order_id in ipairs(redis.call('ZRANGEBYSCORE', orders_due, '-inf', now, 'LIMIT', 0, limit)) do
  redis.call('ZREM', orders_due, order_id)
  local raw = redis.call('HGET', orders, order_id)
  if raw and cjson.decode(raw).s ~= 'reserved' then
    redis.call('HDEL', orders, order_id)
    dropped_orders = dropped_orders + 1
  end
end

local dropped_buyers = 0
for _, buyer in ipairs(redis.call('ZRANGEBYSCORE', buyers_due, '-inf', now, 'LIMIT', 0, limit)) do
  redis.call('ZREM', buyers_due, buyer)
  dropped_buyers = dropped_buyers + redis.call('HDEL', buyers, buyer)
end

return {dropped_orders, dropped_buyers, redis.call('ZCARD', orders_due), redis.call('ZCARD', buyers_due)}
