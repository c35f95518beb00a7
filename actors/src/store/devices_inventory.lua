-- Diffs a full listing against the stored hash and writes only the changes, atomically:
-- `HSET`/`HDEL` plus one `add`/`update`/`remove` entry each on the inventory stream.
-- Idempotent: the same listing applied twice writes nothing the second time, whichever
-- replica applies it.
--
-- KEYS: 1 hash, 2 stream.
-- ARGV: 1 kind, 2 org, 3 ts, 4 maxlen, then id, json pairs.
-- Returns {added, updated, removed}.
local current = redis.call('HGETALL', KEYS[1])
local have = {}
for i = 1, #current, 2 do have[current[i]] = current[i + 1] end
local added, updated, removed = 0, 0, 0
local seen = {}
for i = 5, #ARGV, 2 do
  local id, json = ARGV[i], ARGV[i + 1]
  seen[id] = true
  local prev = have[id]
  if prev == nil then
    redis.call('HSET', KEYS[1], id, json)
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'org', ARGV[2], 'kind', ARGV[1],
      'id', id, 'op', 'add', 'value', json, 'ts', ARGV[3])
    added = added + 1
  elseif prev ~= json then
    redis.call('HSET', KEYS[1], id, json)
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'org', ARGV[2], 'kind', ARGV[1],
      'id', id, 'op', 'update', 'value', json, 'prev', prev, 'ts', ARGV[3])
    updated = updated + 1
  end
  have[id] = json
end
for i = 1, #current, 2 do
  local id = current[i]
  if not seen[id] then
    redis.call('HDEL', KEYS[1], id)
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'org', ARGV[2], 'kind', ARGV[1],
      'id', id, 'op', 'remove', 'prev', current[i + 1], 'ts', ARGV[3])
    removed = removed + 1
  end
end
return {added, updated, removed}
