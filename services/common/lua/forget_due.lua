-- forget_due.lua: drop the members whose time came from the keys that hold them.
--
-- KEYS[1]   due        sorted set: member -> epoch ms it may be dropped
-- KEYS[2..] containers the members are dropped from: hashes (HDEL the field), sorted sets
--           (ZREM) or sets (SREM); all in the slot of KEYS[1] (same hash tag)
-- ARGV[1]   now (epoch ms)
-- ARGV[2]   most members to drop in this call (keeps one call short)
--
-- Returns {members dropped, members still scheduled}.
--
-- Redis 7.0 has no per-field expiry (HEXPIRE came in 7.4): a hash entry, or a member of
-- a set, that must go after a while is scheduled in a companion sorted set by the script
-- that wrote it, and a background sweep of the service calls this.

local due = KEYS[1]
local members = redis.call('ZRANGEBYSCORE', due, '-inf', tonumber(ARGV[1]), 'LIMIT', 0, tonumber(ARGV[2]))
if #members > 0 then
  for i = 2, #KEYS do
    local kind = redis.call('TYPE', KEYS[i]).ok
    if kind == 'hash' then
      redis.call('HDEL', KEYS[i], unpack(members))
    elseif kind == 'zset' then
      redis.call('ZREM', KEYS[i], unpack(members))
    elseif kind == 'set' then
      redis.call('SREM', KEYS[i], unpack(members))
    end
  end
  redis.call('ZREM', due, unpack(members))
end
return {#members, redis.call('ZCARD', due)}
