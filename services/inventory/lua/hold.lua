-- hold.lua: steps on one sku's holds that several scripts share (included with
-- `--#include hold.lua` by commit.lua, release.lua and expire_holds.lua; not a script of
-- its own). The caller passes the keys it was given.

-- Retention (docs/operations.md "Retention"): an order record, and a buyer's units, that
-- no hold needs any more are kept until `retention.due` (now + the topics' replay window,
-- so every event that could replay them is gone by then) in the sorted sets
-- `retention.orders` / `retention.buyers` (member -> epoch ms it may go); the decision
-- sweep (forget_decisions.lua) drops them then. GT: a later time already set stays.
local function keep_until(due_set, member, due)
  redis.call('ZADD', due_set, 'GT', due, member)
end

-- The sku's counters as every script answers them.
local function stock_levels(stock)
  return redis.call('HMGET', stock, 'received', 'available', 'reserved', 'sold', 'v')
end

-- Give a held order's units back to the pool and end its hold: available up, reserved
-- and the buyer's units down, out of the holds set, the record stored as `state`.
-- Returns the record as stored. The caller bumps the stock version `v`.
local function release_hold(stock, orders, buyers, holds, order_id, record, state, retention)
  local quantity = record.q
  redis.call('HINCRBY', stock, 'available', quantity)
  redis.call('HINCRBY', stock, 'reserved', -quantity)
  if redis.call('HINCRBY', buyers, record.b, -quantity) <= 0 then
    redis.call('HDEL', buyers, record.b)
  end
  redis.call('ZREM', holds, order_id)
  record.s = state
  local encoded = cjson.encode(record)
  redis.call('HSET', orders, order_id, encoded)
  keep_until(retention.orders, order_id, retention.due)
  keep_until(retention.buyers, record.b, retention.due)
  return encoded
end

-- The first step of an event on one order's hold (order.paid, order.cancelled): the
-- order's record when the hold is live and this event's offset is new (the offset is
-- recorded then); otherwise nil and the answer to give: `unknown`, or the state reached
-- earlier (a replay, or the hold ended before this event), which changes nothing but the
-- time the record may go: this event is in the log now, and may be replayed as long.
local function take_hold_event(stock, orders, order_id, offset_field, offset, retention)
  local raw = redis.call('HGET', orders, order_id)
  if not raw then
    return nil, {'unknown', 0, '', stock_levels(stock)}
  end
  local applied = tonumber(redis.call('HGET', stock, offset_field) or '-1')
  local record = cjson.decode(raw)
  if record.s ~= 'reserved' or offset <= applied then
    if record.s ~= 'reserved' then
      keep_until(retention.orders, order_id, retention.due)
    end
    return nil, {record.s, 0, raw, stock_levels(stock)}
  end
  redis.call('HSET', stock, offset_field, offset)
  return record, nil
end
