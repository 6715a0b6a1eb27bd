-- forget_sku.lua: take a sku off the sweeper's index, unless it got a new hold meanwhile.
--
-- KEYS[1] index  sorted set: sku -> stamp of the latest call that left it a hold
-- ARGV[1] sku
-- ARGV[2] the stamp the sweeper read before it found the sku without holds
--
-- Returns 1 when removed. The index lives outside the sku's slot, so the scripts that add
-- holds cannot update it; the consumer stamps the sku afterwards (track_holds.lua) with a
-- number never used before. A hold added after the sweeper looked therefore changes the
-- stamp, and this compare-and-delete leaves the sku in place.

local stamp = redis.call('ZSCORE', KEYS[1], ARGV[1])
if stamp and tonumber(stamp) == tonumber(ARGV[2]) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
