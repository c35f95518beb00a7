-- Applies a batch of xAPI messages in one call (on Redis Cluster, the messages of one
-- organization: every key carries its {org} hash tag). Each message is applied exactly as if
-- alone; a duplicate (same content applied before) writes nothing.
--
-- KEYS: per organization 1 status stream, 2 events stream (then, with the firehose, 3 and 4:
--   its shard's status and events streams; then, when ARGV 7 asks for marks, its relay-start
--   hash), then per message of it 1 device state hash, 2 device stamps hash, 3 dedupe set of
--   the message's time bucket.
-- ARGV: 1 maxlen, 2 "1" to touch the dedupe set of a duplicate (see below), 3 MINID threshold
--   of retention ("0" = none), 4 "1" to trim by maxlen too when trimming by MINID, 5 "1" to
--   write the organization's streams, 6 "1" when the firehose keys are given, 7 the relay
--   marks wanted (Redis Cluster, see relay.rs): two characters, "1" in the first to record
--   the first status entry's id in the relay-start hash (HSETNX, field = the stream's key),
--   in the second the first events entry's; "00" = none. Then per
--   organization: org (only when ARGV 6 is "1": the firehose's entries carry it), number of
--   messages, then per message: kind ("status"|"events"),
--   workspace, device, msg timestamp (verbatim), source, ts_ms (see `ms` below),
--   fingerprint, dedupe set expiry (Unix seconds; "-" before it when the caller has set that
--   set's expiry already), full_sync ("0"|"1"), n, then
--   status: n pairs (key, json), n_removed, removed keys
--   events: n triples (key, json, timestamp)
--   The counts (number of messages, n, n_removed) are hexadecimal: see `ms`.
-- Returns one integer per message, in order: -1 when it was already applied, else the number
--   of stream entries written for it.
--
-- What it costs is mostly calls and the tables Lua builds, so: one HMGET of the stamps (with
-- the "state known" marker) and one of the values per message, one HSET (and one HDEL) to write
-- them back, keys shared by an organization's messages passed once, and no table for what a
-- message does not need. (The tenants' message counters are added by the engine, off this
-- path, once a second.)
-- Globals read once: each use of a global is a table lookup.
local ARGV, KEYS, call, tonumber, unpack = ARGV, KEYS, redis.call, tonumber, unpack
local maxlen, touch, minid, both = ARGV[1], ARGV[2] == '1', ARGV[3], ARGV[4] == '1'
local per_org, firehose = ARGV[5] == '1', ARGV[6] == '1'
local mark_status, mark_events = ARGV[7]:sub(1, 1) == '1', ARGV[7]:sub(2, 2) == '1'
-- Every entry carries the version of the entry schemas in docs/schemas. Schema 2: an entry
-- has always the same fields in the same order (Redis then keeps their names once per stream
-- node instead of in every entry: see docs/streams.md), `value` and `prev` empty when absent,
-- and no `org` in an organization's own streams (its key names it) — the firehose's carry it.
local SCHEMA = '2'

-- Numbers from strings: Lua 5.1's tonumber(s) is glibc's strtod, while tonumber(s, 16) is
-- strtoul, far cheaper (≈ 3,500 instructions fewer per 3-change message, counted by callgrind).
-- So counts come in hexadecimal, and ts_ms as "0x<hex>" (decimal when negative). The stamps hold
-- ts_ms as the caller wrote it; those written as decimal (before 2026-12-03) are still read so.
local function ms(text)
  if text:byte(2) == 120 then return tonumber(text, 16) end
  return tonumber(text)
end

-- Lua's unpack is bounded by its C stack: commands with many fields go in chunks.
local CHUNK = 1000
-- Both take the number of items: the tables they read are reused from message to message (see
-- `asked` below), so what lies beyond it is a previous message's.
local function hmget(key, fields, count)
  if count <= CHUNK then return call('HMGET', key, unpack(fields, 1, count)) end
  local res = {}
  for i = 1, count, CHUNK do
    local part = call('HMGET', key, unpack(fields, i, math.min(i + CHUNK - 1, count)))
    for j = 1, #part do res[#res + 1] = part[j] end
  end
  return res
end
local function each_chunk(cmd, key, items, total, step)
  if total == 0 then return end
  if total <= CHUNK * step then
    call(cmd, key, unpack(items, 1, total))
    return
  end
  for i = 1, total, CHUNK * step do
    call(cmd, key, unpack(items, i, math.min(i + CHUNK * step - 1, total)))
  end
end

-- A stream is trimmed by its first entry in a call (MINID ~ for retention by age, else MAXLEN
-- ~; with both, an XTRIM MAXLEN ~ in the calls the caller marks); the call's other entries go
-- without trim arguments. Until the next call trims it, a stream can hold one call's entries
-- beyond its limits (besides the slack `~` allows anyway).
local trimmed = {}
local function xadd(stream, ...)
  if trimmed[stream] then return call('XADD', stream, '*', ...) end
  trimmed[stream] = true
  if minid == '0' then return call('XADD', stream, 'MAXLEN', '~', maxlen, '*', ...) end
  if both then call('XTRIM', stream, 'MAXLEN', '~', maxlen) end
  return call('XADD', stream, 'MINID', '~', minid, '*', ...)
end
-- An entry goes to the organization's stream and to its firehose shard (there with the
-- organization `org` first), as configured. The first entry of a stream in `marks` records its
-- id in the organization's relay-start hash.
local marker, marks, org = nil, {}, nil
local function emit(stream, shard, ...)
  if per_org then
    if trimmed[stream] and not marks[stream] then
      -- The common case, with one function call less (each passes the entry's 20 arguments on).
      call('XADD', stream, '*', ...)
    else
      local id = xadd(stream, ...)
      if marks[stream] then
        marks[stream] = nil
        call('HSETNX', marker, stream, id)
      end
    end
  end
  if shard then xadd(shard, 'org', org, ...) end
end

local out, expiring = {}, {}
-- A status message's fields asked for and what it writes back, in tables made once per call and
-- reused by every message (with their lengths kept apart): tables made per message were a
-- measurable part of the script's cost (their allocation, growth and collection).
local asked, new_stamps, new_values, dropped = {}, {}, {}, {}
local a, k, m = 8, 0, 0
while a <= #ARGV do
  if firehose then
    org = ARGV[a]
    a = a + 1
  end
  local count = tonumber(ARGV[a], 16)
  a = a + 1
  local status, events = KEYS[k + 1], KEYS[k + 2]
  k = k + 2
  local hose_status, hose_events
  if firehose then
    hose_status, hose_events = KEYS[k + 1], KEYS[k + 2]
    k = k + 2
  end
  if mark_status or mark_events then
    marker = KEYS[k + 1]
    k = k + 1
    marks = {}
    if mark_status then marks[status] = true end
    if mark_events then marks[events] = true end
  end
  for _ = 1, count do
    local state_key, stamps_key, seen_key = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
    k = k + 3
    m = m + 1
    local kind, ws, dev, ts, src = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
    -- ts_ms is compared as a number and written back as the caller's string (a Lua number
    -- would be formatted by Redis for every HSET).
    local ts_text, fingerprint, expire_at = ARGV[a + 5], ARGV[a + 6], ARGV[a + 7]
    local ts_ms = ms(ts_text)
    -- "-<secs>" when the caller set the expiry already: stripped only where used (a duplicate
    -- with `touch`), not for every message (a new string each time).
    local expiry_set = expire_at:byte(1) == 45
    local full, n = ARGV[a + 8], tonumber(ARGV[a + 9], 16)
    a = a + 10
    if call('SADD', seen_key, fingerprint) == 0 then
      -- With redis.wait_replicas the caller WAITs for this connection's writes. A duplicate
      -- writes something too, so that the WAIT also covers the first write of this message,
      -- made perhaps on another connection and not yet replicated (its 503 brought the retry).
      if touch then
        call('EXPIREAT', seen_key, expiry_set and expire_at:sub(2) or expire_at)
      end
      out[m] = -1
      if kind == 'events' then a = a + 3 * n else a = a + 2 * n; a = a + 1 + tonumber(ARGV[a], 16) end
    else
      if not expiry_set and not expiring[seen_key] then
        expiring[seen_key] = true
        call('EXPIREAT', seen_key, expire_at)
      end
      local written = 0
      if kind == 'events' then
        for _ = 1, n do
          emit(events, hose_events, 'workspace', ws, 'device', dev, 'key', ARGV[a],
            'value', ARGV[a + 1], 'ts', ARGV[a + 2], 'msg_ts', ts, 'source', src, 'schema', SCHEMA)
          a = a + 3
          written = written + 1
        end
      else
        -- Updated keys are ARGV[u], ARGV[u + 2], … (values after each); then the removals.
        local u = a
        a = a + 2 * n
        local nr = tonumber(ARGV[a], 16)
        local r0 = a + 1
        a = r0 + nr
        -- The fields asked for: the "state known" marker, the updated keys, the removals
        -- (explicit ones — not updated, each once — and, with a full sync, every key the
        -- device has that the sync no longer lists).
        asked[1] = '\0known'
        for i = 0, n - 1 do asked[i + 2] = ARGV[u + 2 * i] end
        local na = n + 1
        local state
        if nr == 1 and full ~= '1' then
          -- The common case (one removal, as in the seed's example): no table for it.
          local key = ARGV[r0]
          local clash = false
          for i = 0, n - 1 do
            if ARGV[u + 2 * i] == key then clash = true end
          end
          if not clash then na = na + 1; asked[na] = key end
        elseif nr > 0 or full == '1' then
          local skip = {}
          for i = 0, n - 1 do skip[ARGV[u + 2 * i]] = true end
          for j = r0, r0 + nr - 1 do
            local key = ARGV[j]
            if not skip[key] then skip[key] = true; na = na + 1; asked[na] = key end
          end
          if full == '1' then
            state = {}
            local all = call('HGETALL', state_key)
            for i = 1, #all, 2 do
              local key = all[i]
              state[key] = all[i + 1]
              if not skip[key] then skip[key] = true; na = na + 1; asked[na] = key end
            end
          end
        end
        local stamps = hmget(stamps_key, asked, na)
        local known = stamps[1] ~= false
        local current
        if not state then
          -- Values of asked[2..]: the marker's slot is read too (it is never a state field),
          -- which keeps the two replies aligned without a second table.
          current = hmget(state_key, asked, na)
        end
        local ns, nv, nd = 0, 0, 0
        for i = 2, n + 1 do
          if not stamps[i] or ms(stamps[i]) <= ts_ms then
            local key, v = asked[i], ARGV[u + 2 * (i - 2) + 1]
            new_stamps[ns + 1], new_stamps[ns + 2] = key, ts_text
            ns = ns + 2
            local prev
            if state then prev = state[key] else prev = current[i] end
            if prev ~= v then
              new_values[nv + 1], new_values[nv + 2] = key, v
              nv = nv + 2
              emit(status, hose_status, 'workspace', ws, 'device', dev, 'key', key, 'op', 'set',
                'value', v, 'prev', prev or '', 'ts', ts, 'full_sync', full, 'source', src,
                'schema', SCHEMA)
              written = written + 1
            end
          end
        end
        for i = n + 2, na do
          if not stamps[i] or ms(stamps[i]) <= ts_ms then
            local key = asked[i]
            local prev
            if state then prev = state[key] else prev = current[i] end
            if prev or not known then
              new_stamps[ns + 1], new_stamps[ns + 2] = key, ts_text
              ns = ns + 2
              -- Deleting a field the hash does not have would change nothing.
              if prev then nd = nd + 1; dropped[nd] = key end
              emit(status, hose_status, 'workspace', ws, 'device', dev, 'key', key,
                'op', 'remove', 'value', '', 'prev', prev or '', 'ts', ts, 'full_sync', full,
                'source', src, 'schema', SCHEMA)
              written = written + 1
            end
          end
        end
        if not known then
          new_stamps[ns + 1], new_stamps[ns + 2] = '\0known', '1'
          ns = ns + 2
        end
        each_chunk('HSET', stamps_key, new_stamps, ns, 2)
        each_chunk('HSET', state_key, new_values, nv, 2)
        each_chunk('HDEL', state_key, dropped, nd, 1)
      end
      out[m] = written
    end
  end
end
return out
