-- track_holds.lua: put skus on the sweeper's index with a fresh stamp each.
--
-- KEYS[1] index     sorted set: sku -> stamp of the latest call that left it a hold
-- KEYS[2] sequence  counter the stamps come from (never repeats, so no ABA in forget_sku)
-- ARGV[1..] skus that hold units after the call just made
--
-- Returns the stamp used.

local stamp = redis.call('INCR', KEYS[2])
for _, sku in ipairs(ARGV) do
  redis.call('ZADD', KEYS[1], stamp, sku)
end
return stamp
