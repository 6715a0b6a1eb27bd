-- Complete one pick task; completing it again changes nothing.
--
-- KEYS[1]  hash  the pick
-- KEYS[2]  zset  the warehouse's open picks
-- KEYS[3]  zset  the warehouse's done picks
-- KEYS[4]  string  the pick sequence
-- KEYS[5]  zset  completions whose pick.completed is not yet acknowledged (the outbox)
-- KEYS[6]  zset  the warehouse's done picks -> epoch ms they leave `done` (the retention
--                sweep takes them out of KEYS[3] then)
-- KEYS[7]  set   the order's pick ids (the order's trace)
-- KEYS[8]  string  the pick's trace code -> pick_id (absent: the pick has no code)
-- ARGV[1]  pick_id
-- ARGV[2]  completed_at (RFC 3339)
-- ARGV[3]  who completed it (token sub)
-- ARGV[4]  now, epoch ms (the outbox score: the sweep republishes what waits too long)
-- ARGV[5]  pick retention (ms): how long a completed pick stays listed as done
-- ARGV[6]  trace retention (s): how long the task, its trace code and the order's pick set
--          stay readable after completion (they are the box's trace; an open task never
--          expires, and the retention is longer than the topics' replay window, so a
--          replayed pick.requested still finds the task and opens nothing)
--
-- The first completion enters the outbox in the same step as the task's status, so its
-- pick.completed is published even if this process dies right after (the sweep of any
-- notifier process sends it).
-- Returns {status, completed_at, completed_by}: 'done' with the first completion's time
-- and author, or {'missing'} when no such pick exists.

if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'missing'}
end
if redis.call('HGET', KEYS[1], 'status') == 'open' then
  local seq = redis.call('INCR', KEYS[4])
  redis.call('HSET', KEYS[1], 'status', 'done', 'completed_at', ARGV[2], 'completed_by', ARGV[3],
    'done_seq', seq)
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZADD', KEYS[3], seq, ARGV[1])
  redis.call('ZADD', KEYS[5], ARGV[4], ARGV[1])
  redis.call('ZADD', KEYS[6], tonumber(ARGV[4]) + tonumber(ARGV[5]), ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[6])
  redis.call('EXPIRE', KEYS[7], ARGV[6])
  if KEYS[8] then
    redis.call('EXPIRE', KEYS[8], ARGV[6])
  end
end
local done = redis.call('HMGET', KEYS[1], 'completed_at', 'completed_by')
return {'done', done[1], done[2]}
