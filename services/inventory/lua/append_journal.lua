-- append_journal.lua: append one entry to a lot's journal if the journal still ends where
-- the caller computed the entry from (compare-and-append), once per dedup key.
--
-- KEYS[1] lots     hash: lot_code -> lot JSON (read only: the lot must exist, and its
--                  current state is returned for lot.updated)
-- KEYS[2] journal  list: the lot's entries, JSON {seq, type, at, data, prev_hash, hash}
-- KEYS[3] heads    hash: lot_code -> hash of the lot's last entry
-- KEYS[4] dedup    hash: dedup key -> seq of the entry appended under it
-- KEYS[5] dedup-due  sorted set: dedup key -> epoch ms it may be dropped (the journal
--                  itself is never trimmed: it is the lot's tamper-evident record)
-- ARGV[1] lot_code
-- ARGV[2] expected head: hash of the last entry (64 zeros for an empty journal)
-- ARGV[3] seq of the new entry (expected length + 1)
-- ARGV[4] dedup key
-- ARGV[5] the entry, JSON, stored as given
-- ARGV[6] the entry's hash (the new head)
-- ARGV[7] epoch ms the dedup key may go: now + the topics' replay window (an event that
--         could append under it again is gone from the log by then)
--
-- Returns {status, entry_json, seq, head, lot_json}: seq and head are where the journal
-- ends after the call, lot_json the lot as it is now.
--   appended  the entry is the new last one
--   known     the dedup key was used before: entry_json is the entry appended then, and
--             nothing changes (a replayed payment, a redelivered pick.completed)
--   moved     another append came first: nothing changes; recompute from seq and head
--   no_lot    no such lot: nothing changes
--
-- SHA-256 is not available in Redis Lua: the caller hashes, this script only keeps the
-- chain linear. Checking the head and appending in one step means two writers can never
-- both chain onto the same head; the loser gets `moved` and recomputes.

local lots, journal, heads, dedup = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local lot_code = ARGV[1]

local function head()
  return redis.call('HGET', heads, lot_code) or string.rep('0', 64)
end

local lot = redis.call('HGET', lots, lot_code)
if not lot then
  return {'no_lot', '', redis.call('LLEN', journal), head(), ''}
end

local known = redis.call('HGET', dedup, ARGV[4])
if known then
  -- The replayed event is in the log now: keep the key as long as it can come again.
  redis.call('ZADD', KEYS[5], 'GT', ARGV[7], ARGV[4])
  local entry = redis.call('LINDEX', journal, tonumber(known) - 1)
  return {'known', entry or '', redis.call('LLEN', journal), head(), lot}
end

local length = redis.call('LLEN', journal)
local current = head()
if current ~= ARGV[2] or length + 1 ~= tonumber(ARGV[3]) then
  return {'moved', '', length, current, lot}
end

redis.call('RPUSH', journal, ARGV[5])
redis.call('HSET', heads, lot_code, ARGV[6])
redis.call('HSET', dedup, ARGV[4], length + 1)
redis.call('ZADD', KEYS[5], 'GT', ARGV[7], ARGV[4])
return {'appended', ARGV[5], length + 1, ARGV[6], lot}
