-- Records an exchange intent (ARGV[3]) if the lease epoch is still ARGV[1] and the secrets
-- still at version ARGV[2]; returns {1, the intent left before or ''}, {-1} (stale) or {-2}
-- (fenced).
--
-- KEYS: 1 the tenant hash.
-- ARGV: 1 lease epoch, 2 token_version, 3 the encoded intent.
if redis.call('HGET', KEYS[1], 'lease_epoch') ~= ARGV[1] then return {-2} end
if tonumber(redis.call('HGET', KEYS[1], 'token_version') or '0') ~= tonumber(ARGV[2]) then
  return {-1}
end
local prev = redis.call('HGET', KEYS[1], 'exchange_intent') or ''
redis.call('HSET', KEYS[1], 'exchange_intent', ARGV[3])
return {1, prev}
