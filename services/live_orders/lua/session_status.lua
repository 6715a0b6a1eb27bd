-- Move a session along scheduled -> live -> ended.
-- KEYS[1] session hash   <prefix>lo:{s:<session_id>}:session
-- ARGV[1] target status   ARGV[2] the status it must be in   ARGV[3] time field to set   ARGV[4] now (RFC 3339)
-- Returns {"applied" | "same" | "conflict" | "missing", status before}
-- The version counter lets the publisher of session.updated notice it sent a stale copy.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  return {'missing', ''}
end
if status == ARGV[1] then
  return {'same', status}
end
if status ~= ARGV[2] then
  return {'conflict', status}
end
redis.call('HSET', KEYS[1], 'status', ARGV[1], ARGV[3], ARGV[4])
redis.call('HINCRBY', KEYS[1], 'version', 1)
return {'applied', status}
