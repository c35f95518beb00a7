-- Take over a record. Returns the new epoch (> 0), 0 when the record changed meanwhile,
-- -1 when the tenant is gone.
--
-- KEYS: 1 record, 2 tenant hash.
-- ARGV: 1 replica, 2 the value the record must still have ('' = absent).
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[2] then return 0 end
if redis.call('HEXISTS', KEYS[2], 'record') == 0 then return -1 end
local e = redis.call('HINCRBY', KEYS[2], 'lease_epoch', 1)
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. e)
return e
