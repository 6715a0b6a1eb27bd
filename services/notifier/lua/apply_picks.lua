-- Open the pick tasks of one consumed partition batch of the picks topic, exactly once.
--
-- KEYS[1]   hash  topic:partition -> highest offset applied (the replay guard)
-- KEYS[2]   string  the pick sequence (orders every open and complete of every warehouse)
-- KEYS[3..] the pick hashes, the warehouses' open-pick sorted sets, the orders' pick sets
--           and the trace-code strings of the batch
-- ARGV[1]   the batch's "topic:partition"
-- ARGV[2]   JSON list, in offset order, of
--           [offset, pick_key_index, open_set_index, pick_id, warehouse_id, document JSON,
--            order_picks_index, trace_key_index (0: the pick has no trace code)]
--
-- A pick_id seen before (redelivery, or inventory re-publishing the same pick) changes
-- nothing: every pick.requested yields exactly one task, and a completed task is never
-- reopened. The trace code and the order's pick set are indexed in the same step as the
-- task, so they always agree with it; a code already indexed keeps its first pick.
-- Returns {opened, skipped}.

local tp = ARGV[1]
local entries = cjson.decode(ARGV[2])

local recorded = redis.call('HGET', KEYS[1], tp)
local last = -1
if recorded then
  last = tonumber(recorded)
end

local opened, skipped = 0, 0
for _, entry in ipairs(entries) do
  local offset = tonumber(entry[1])
  local pick_key = KEYS[entry[2]]
  if offset > last and redis.call('EXISTS', pick_key) == 0 then
    local seq = redis.call('INCR', KEYS[2])
    redis.call('HSET', pick_key, 'doc', entry[6], 'status', 'open', 'warehouse_id', entry[5],
      'opened_seq', seq)
    redis.call('ZADD', KEYS[entry[3]], seq, entry[4])
    redis.call('SADD', KEYS[entry[7]], entry[4])
    if entry[8] > 0 then
      redis.call('SET', KEYS[entry[8]], entry[4], 'NX')
    end
    opened = opened + 1
  else
    skipped = skipped + 1
  end
  if offset > last then
    last = offset
  end
end
if last >= 0 then
  redis.call('HSET', KEYS[1], tp, string.format('%d', last))
end
return {opened, skipped}
