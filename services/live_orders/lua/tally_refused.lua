-- Count orders refused by live_orders itself (sold out, not on sale) into per-session
-- tallies, each refused order exactly once: it is counted only if this call takes it out
-- of the order outbox (where it was put before it was stored), so a retry, a concurrent
-- sweep in another process or a republish after a crash counts nothing twice, and an
-- order stored by a request that died before counting is counted by the outbox sweep.
-- KEYS[1] the order outbox           <prefix>lo:{lo:outbox}:orders      (zset)
-- KEYS[2] the unpublished tallies    <prefix>lo:{lo:outbox}:tallies     (hash tally_id -> JSON)
-- KEYS[3] their times                <prefix>lo:{lo:outbox}:tallies-due (zset tally_id -> ms)
-- ARGV[1] tally id prefix (random per call)   ARGV[2] now (epoch ms)   ARGV[3] now (RFC 3339)
-- ARGV[4..] triples: order_id, session_id, reason (`sold_out` | `not_on_sale`)
-- Returns the JSON of every tally made (none when every order was counted already).
local counts = {}
local sessions = {}
for i = 4, #ARGV, 3 do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    local session_id = ARGV[i + 1]
    local count = counts[session_id]
    if not count then
      count = {0, 0}
      counts[session_id] = count
      sessions[#sessions + 1] = session_id
    end
    if ARGV[i + 2] == 'sold_out' then
      count[1] = count[1] + 1
    else
      count[2] = count[2] + 1
    end
  end
end
local made = {}
for n, session_id in ipairs(sessions) do
  local tally_id = ARGV[1] .. '-' .. n
  local count = counts[session_id]
  local record = cjson.encode({
    tally_id = tally_id,
    session_id = session_id,
    sold_out = count[1],
    not_on_sale = count[2],
    tallied_at = ARGV[3],
  })
  redis.call('HSET', KEYS[2], tally_id, record)
  redis.call('ZADD', KEYS[3], ARGV[2], tally_id)
  made[#made + 1] = record
end
return made
