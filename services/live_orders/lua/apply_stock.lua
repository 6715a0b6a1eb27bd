-- Record whether a SKU is sold out, from one stock.changed event, unless a newer one won.
-- KEYS[1] sold-out set            <prefix>lo:{lo:stock}:sold-out
-- KEYS[2] last applied position   <prefix>lo:{lo:stock}:seen      (sku -> "<partition>:<offset>")
-- KEYS[3] last applied version    <prefix>lo:{lo:stock}:versions  (sku -> version)
-- ARGV[1] pub/sub channel of stock updates   ARGV[2] sku   ARGV[3] partition   ARGV[4] offset
-- ARGV[5] "1" sold out | "0" available
-- ARGV[6] the event's version ("" when it carries none)
-- Returns 1 when applied, 0 when a newer state of the SKU was applied already.
--
-- Several inventory processes publish stock.changed, each with the counters it read, and
-- their events may reach the partition in another order than those states: an older
-- "sold out" published after a restock must not win. The version (bumped by inventory in
-- the same step as every counter change) orders them; a redelivered event (after a
-- rebalance) carries its old version too, so it is refused the same way.
-- Events without a version (from before it existed) fall back to the partition:offset
-- guard, and only while no versioned event was applied for the SKU: they cannot be
-- ordered against one, and the versioned publishers are the current ones.
local version = ARGV[6]
if version ~= '' then
  local stored = redis.call('HGET', KEYS[3], ARGV[2])
  if stored and tonumber(stored) >= tonumber(version) then
    return 0
  end
  redis.call('HSET', KEYS[3], ARGV[2], version)
else
  if redis.call('HEXISTS', KEYS[3], ARGV[2]) == 1 then
    return 0
  end
  local seen = redis.call('HGET', KEYS[2], ARGV[2])
  if seen then
    local sep = string.find(seen, ':', 1, true)
    local partition = string.sub(seen, 1, sep - 1)
    local offset = tonumber(string.sub(seen, sep + 1))
    if partition == ARGV[3] and offset >= tonumber(ARGV[4]) then
      return 0
    end
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
