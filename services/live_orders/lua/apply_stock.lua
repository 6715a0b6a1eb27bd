-- Record whether a SKU is sold out, from one stock.changed event, unless a newer one won.
-- KEYS[1] sold-out set            <prefix>lo:{lo:stock}:sold-out
-- KEYS[2] last applied position   <prefix>lo:{lo:stock}:seen   (sku -> "<partition>:<offset>")
-- ARGV[1] pub/sub channel of stock updates   ARGV[2] sku   ARGV[3] partition   ARGV[4] offset
-- ARGV[5] "1" sold out | "0" available
-- Returns 1 when applied, 0 when an event at or after this offset was applied already.
--
-- Every stock.changed of one SKU travels in one partition, so its offset orders them; a
-- redelivered older event (after a rebalance) must not mark a restocked SKU sold out again.
local seen = redis.call('HGET', KEYS[2], ARGV[2])
if seen then
  local sep = string.find(seen, ':', 1, true)
  local partition = string.sub(seen, 1, sep - 1)
  local offset = tonumber(string.sub(seen, sep + 1))
  if partition == ARGV[3] and offset >= tonumber(ARGV[4]) then
    return 0
  end
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3] .. ':' .. ARGV[4])
if ARGV[5] == '1' then
  redis.call('SADD', KEYS[1], ARGV[2])
else
  redis.call('SREM', KEYS[1], ARGV[2])
end
redis.call('PUBLISH', ARGV[1], ARGV[5] .. ' ' .. ARGV[2])
return 1
