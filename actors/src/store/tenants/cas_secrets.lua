-- Compare-and-set of the secrets: writes only if `token_version` is still the one the new
-- secrets were derived from and, when a fencing epoch is given (ARGV[4]), only if it is still
-- the tenant's current lease epoch (a paused ex-owner cannot write). Bumps the version.
-- Returns the new version, -1 (version moved on) or -2 (fenced off). ARGV[5], when set, is
-- the exchange intent whose result this write stores: it is removed in the same step.
--
-- KEYS: 1 the tenant hash.
-- ARGV: 1 expected token_version, 2 sealed secrets, 3 record JSON ('' = leave the record),
--   4 lease epoch ('' = not fenced), 5 exchange intent ('' = none).
if ARGV[4] ~= '' and redis.call('HGET', KEYS[1], 'lease_epoch') ~= ARGV[4] then return -2 end
local v = tonumber(redis.call('HGET', KEYS[1], 'token_version') or '0')
if v ~= tonumber(ARGV[1]) then return -1 end
redis.call('HSET', KEYS[1], 'secrets', ARGV[2], 'token_version', v + 1)
if ARGV[5] ~= '' and redis.call('HGET', KEYS[1], 'exchange_intent') == ARGV[5] then
  redis.call('HDEL', KEYS[1], 'exchange_intent')
end
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[1], 'record', ARGV[3])
  redis.call('HINCRBY', KEYS[1], 'record_version', 1)
end
return v + 1
