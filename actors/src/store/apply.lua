-- Applies one xAPI message atomically. All keys share the {org} hash tag.
-- KEYS: 1 status stream, 2 events stream, 3 device state hash, 4 device stamps hash, 5 dedupe key,
--       6 tenant hash (message counters)
-- ARGV: 1 kind ("status"|"events"), 2 dedupe ttl secs, 3 maxlen, 4 org, 5 workspace, 6 device,
--       7 msg timestamp (verbatim), 8 source, 9 app, 10 ts_ms, 11 full_sync ("0"|"1"),
--       12 "1" to touch the dedupe key of a duplicate (see below),
--       13 n_updated, then n_updated pairs (key, json), then n_removed, then removed keys
--       (events: 13 n_events, then triples key, json, timestamp)
-- Returns: -1 when the message was already applied, else the number of stream entries written.
if redis.call('SET', KEYS[5], '1', 'NX', 'EX', ARGV[2]) == false then
  -- With redis.wait_replicas the caller WAITs for this connection's writes. A duplicate writes
  -- something too, so that the WAIT also covers the first write of this message, made perhaps
  -- on another connection and not yet replicated (its 503 is what brought the retry here).
  if ARGV[12] == '1' then redis.call('EXPIRE', KEYS[5], ARGV[2]) end
  return -1
end
local maxlen = ARGV[3]
local org, ws, dev, ts, src, app = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local n = tonumber(ARGV[13])
local written = 0
redis.call('HINCRBY', KEYS[6], 'received:' .. src, 1)
if ARGV[1] == 'events' then
  local i = 14
  for _ = 1, n do
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*',
      'org', org, 'workspace', ws, 'device', dev, 'key', ARGV[i], 'value', ARGV[i + 1],
      'ts', ARGV[i + 2], 'msg_ts', ts, 'source', src, 'app', app)
    i = i + 3
    written = written + 1
  end
  return written
end
local ts_ms = tonumber(ARGV[10])
local full = ARGV[11]
local known = redis.call('EXISTS', KEYS[4]) == 1
local updated = {}
local i = 14
for _ = 1, n do
  local k, v = ARGV[i], ARGV[i + 1]
  updated[k] = true
  local stamp = tonumber(redis.call('HGET', KEYS[4], k) or '-1')
  if stamp <= ts_ms then
    redis.call('HSET', KEYS[4], k, ts_ms)
    local prev = redis.call('HGET', KEYS[3], k)
    if prev ~= v then
      redis.call('HSET', KEYS[3], k, v)
      if prev then
        redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', 'org', org, 'workspace', ws,
          'device', dev, 'key', k, 'op', 'set', 'value', v, 'prev', prev, 'ts', ts,
          'full_sync', full, 'source', src, 'app', app)
      else
        redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', 'org', org, 'workspace', ws,
          'device', dev, 'key', k, 'op', 'set', 'value', v, 'ts', ts,
          'full_sync', full, 'source', src, 'app', app)
      end
      written = written + 1
    end
  end
  i = i + 2
end
local removals = {}
local nr = tonumber(ARGV[i])
for j = 1, nr do
  removals[#removals + 1] = ARGV[i + j]
end
if full == '1' then
  for _, k in ipairs(redis.call('HKEYS', KEYS[3])) do
    if not updated[k] then removals[#removals + 1] = k end
  end
end
local done = {}
for _, k in ipairs(removals) do
  if not updated[k] and not done[k] then
    done[k] = true
    local stamp = tonumber(redis.call('HGET', KEYS[4], k) or '-1')
    if stamp <= ts_ms then
      local prev = redis.call('HGET', KEYS[3], k)
      if prev or not known then
        redis.call('HSET', KEYS[4], k, ts_ms)
        redis.call('HDEL', KEYS[3], k)
        if prev then
          redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', 'org', org, 'workspace', ws,
            'device', dev, 'key', k, 'op', 'remove', 'prev', prev, 'ts', ts,
            'full_sync', full, 'source', src, 'app', app)
        else
          redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', 'org', org, 'workspace', ws,
            'device', dev, 'key', k, 'op', 'remove', 'ts', ts,
            'full_sync', full, 'source', src, 'app', app)
        end
        written = written + 1
      end
    end
  end
end
if not known then redis.call('HSET', KEYS[4], '\0known', '1') end
return written
