-- Apply the effects of one consumed partition batch, exactly once, in one atomic step.
--
-- KEYS[1]   hash  topic:partition -> highest offset applied (the replay guard)
-- KEYS[2..] every hash / set / sorted set the batch touches (all in the `{nt}` slot)
-- ARGV[1]   the batch's "topic:partition"
-- ARGV[2]   seconds a guard set lives after its last write (covers the topics' retention)
-- ARGV[3]   JSON list of entries, in offset order:
--           [offset, guard_key_index (0: none), guard_member, op, op, ...]
--           op = ["i", key_index, field, amount]   HINCRBY
--              | ["s", key_index, field, value]    HSET
--              | ["z", key_index, member, amount]  ZINCRBY
--              | ["a", key_index, member]          SADD
--              | ["n", key_index, field, value, versions_key_index, version]
--                HSET only if newer: `version` ("" for none) is compared with the one
--                recorded for `field` in the versions hash (see projection.AssignIfNewer)
--              | ["d", key_index, member]          ZADD GT ARGV[4] member: the member may
--                be dropped (from the hash the sorted set accompanies) at ARGV[4]
--              | ["g", key_index, field, amount, set_key_index, member]
--                HINCRBY only if SADD set member adds it (a count two events may carry:
--                the first one makes it; the set is a guard set, kept as long)
-- ARGV[4]   epoch ms: now + the trace retention (for "d" ops)
--
-- An entry at or below the recorded offset was applied before (Kafka redelivered the
-- batch after a crash or a rebalance) and is skipped. An entry whose guard member is
-- already in its set was applied under another offset (the producer re-published the
-- same outcome) and is skipped too. The offset moves forward either way.
-- Returns {applied, skipped, highest offset applied or -1}.

local tp = ARGV[1]
local guard_ttl = tonumber(ARGV[2])
local entries = cjson.decode(ARGV[3])

local recorded = redis.call('HGET', KEYS[1], tp)
local last = -1
if recorded then
  last = tonumber(recorded)
end

local applied, skipped = 0, 0
local guards = {}
for _, entry in ipairs(entries) do
  local offset = tonumber(entry[1])
  local fresh = offset > last
  if fresh and entry[2] > 0 then
    local guard_key = KEYS[entry[2]]
    guards[guard_key] = true
    fresh = redis.call('SADD', guard_key, entry[3]) == 1
  end
  if fresh then
    for i = 4, #entry do
      local op = entry[i]
      local key = KEYS[op[2]]
      if op[1] == 'i' then
        redis.call('HINCRBY', key, op[3], op[4])
      elseif op[1] == 's' then
        redis.call('HSET', key, op[3], op[4])
      elseif op[1] == 'z' then
        redis.call('ZINCRBY', key, op[4], op[3])
      elseif op[1] == 'a' then
        redis.call('SADD', key, op[3])
      elseif op[1] == 'g' then
        local seen = KEYS[op[5]]
        guards[seen] = true
        if redis.call('SADD', seen, op[6]) == 1 then
          redis.call('HINCRBY', key, op[3], op[4])
        end
      elseif op[1] == 'd' then
        redis.call('ZADD', key, 'GT', ARGV[4], op[3])
      elseif op[1] == 'n' then
        -- A snapshot applies if newer than the stored one. Without a version (an event
        -- from an older publisher) it applies only while no versioned one was stored;
        -- it cannot be ordered against one.
        local versions = KEYS[op[5]]
        local stored = redis.call('HGET', versions, op[3])
        local version = op[6]
        local newer
        if version == '' then
          newer = not stored
        else
          newer = (not stored) or tonumber(version) > tonumber(stored)
        end
        if newer then
          redis.call('HSET', key, op[3], op[4])
          if version ~= '' then
            redis.call('HSET', versions, op[3], version)
          end
        end
      else
        return redis.error_reply('unknown op ' .. tostring(op[1]))
      end
    end
    applied = applied + 1
  else
    skipped = skipped + 1
  end
  if offset > last then
    last = offset
  end
end

for guard_key, _ in pairs(guards) do
  redis.call('EXPIRE', guard_key, guard_ttl)
end
if last >= 0 then
  redis.call('HSET', KEYS[1], tp, string.format('%d', last))
end
return {applied, skipped, last}
