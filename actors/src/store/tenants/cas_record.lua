-- Compare-and-set of the record: writes only if `record_version` is still ARGV[1].
--
-- KEYS: 1 the tenant hash.
-- ARGV: 1 expected record_version, 2 record JSON.
-- Returns the new version, or -1 (version moved on).
local v = tonumber(redis.call('HGET', KEYS[1], 'record_version') or '0')
if v ~= tonumber(ARGV[1]) then return -1 end
redis.call('HSET', KEYS[1], 'record', ARGV[2], 'record_version', v + 1)
return v + 1
