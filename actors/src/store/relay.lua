-- Copies an organization's new stream entries to its firehose shard (Redis Cluster: the shard
-- is in another slot than the organization, so apply.lua cannot write it; see relay.rs). Runs
-- in the shard's slot; what it has copied is recorded there too, in the same call, so an entry
-- is copied once however many relays (retries, replicas) send it. A copy carries `org` first,
-- then the entry's own fields (entry schema 2: an organization's entries leave it to the key;
-- an entry written before schema 2 has `org` first already and is copied as it is).
--
-- KEYS: 1 the shard's checkpoint hash, 2 the shard's status stream, 3 its events stream.
-- ARGV: 1 maxlen, 2 MINID threshold ("0" = none), 3 "1" to trim by maxlen too, 4 org, 5 "1"
--   to write a checkpoint even when nothing is copied (the caller WAITs for this connection's
--   writes: an earlier copy, perhaps made on another connection, is then covered too), then
--   for status and then events: the number of entries, then per entry: id, number of field
--   and value strings, those strings (as XRANGE gave them, in order).
-- Entries must be in stream order, contiguous from just after the checkpoint the caller read
-- (or from the relay-start mark when there was none). Those at or before the checkpoint found
-- here are skipped: another relay copied them meanwhile.
-- Returns the number of entries copied.
local maxlen, minid, both, org, touch = ARGV[1], ARGV[2], ARGV[3] == '1', ARGV[4], ARGV[5] == '1'

-- Whether stream id `a` ("<ms>-<seq>") comes after `b`.
local function after(a, b)
  local ams, aseq = a:match('^(%d+)-(%d+)$')
  local bms, bseq = b:match('^(%d+)-(%d+)$')
  ams, bms = tonumber(ams), tonumber(bms)
  if ams ~= bms then return ams > bms end
  return tonumber(aseq) > tonumber(bseq)
end

-- The fields of the entry in ARGV[first..final] as its copy has them: `org` first (an entry
-- written before schema 2 has it first already).
local function fields(first, final)
  if ARGV[first] == 'org' then return unpack(ARGV, first, final) end
  return 'org', org, unpack(ARGV, first, final)
end

local copied, a = 0, 6
for t, kind in ipairs({ 'status', 'events' }) do
  local shard, field = KEYS[1 + t], org .. ':' .. kind
  local checkpoint = redis.call('HGET', KEYS[1], field)
  local last, trimmed = nil, false
  for _ = 1, tonumber(ARGV[a]) do
    local id, nf = ARGV[a + 1], tonumber(ARGV[a + 2])
    local first, final = a + 3, a + 2 + nf
    a = final
    if not checkpoint or after(id, checkpoint) then
      if trimmed then
        redis.call('XADD', shard, '*', fields(first, final))
      else
        -- Trimmed by its first entry of the call, as apply.lua does.
        trimmed = true
        if minid == '0' then
          redis.call('XADD', shard, 'MAXLEN', '~', maxlen, '*', fields(first, final))
        else
          if both then redis.call('XTRIM', shard, 'MAXLEN', '~', maxlen) end
          redis.call('XADD', shard, 'MINID', '~', minid, '*', fields(first, final))
        end
      end
      last = id
      copied = copied + 1
    end
  end
  a = a + 1
  if last then
    redis.call('HSET', KEYS[1], field, last)
  elseif touch and checkpoint then
    redis.call('HSET', KEYS[1], field, checkpoint)
  end
end
return copied
