-- Marks an invitation used unless it is already: {0} unknown, {1} used before, {2, record}
-- used now. The mark expires with the invitation's record (never before it: a used code must
-- not work again while its record lives).
--
-- KEYS: 1 the invitation, 2 its `:used` mark.
-- ARGV: 1 the mark's value (the use).
local v = redis.call('GET', KEYS[1])
if not v then return {0} end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 1000 then ttl = 1000 end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ttl) then return {2, v} end
return {1}
