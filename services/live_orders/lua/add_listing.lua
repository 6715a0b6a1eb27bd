-- Add a listing to a session that has not ended, once per SKU.
-- KEYS[1] session hash    <prefix>lo:{s:<session_id>}:session
-- KEYS[2] listings hash   <prefix>lo:{s:<session_id>}:listings   (sku -> listing JSON)
-- ARGV[1] sku   ARGV[2] listing JSON
-- Returns "added" | "duplicate" | "ended" | "missing"
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  return 'missing'
end
if status == 'ended' then
  return 'ended'
end
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then
  return 'duplicate'
end
redis.call('HINCRBY', KEYS[1], 'version', 1)
return 'added'
