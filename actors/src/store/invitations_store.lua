-- Stores an invitation unless Redis runs it past its write deadline (then the caller was
-- answered 503: a code nobody saw must not be usable). Loaded after NOW_MS_LUA
-- (store/mod.rs), which sets `now`.
--
-- KEYS: 1 the invitation, 2 the index.
-- ARGV: 1 JSON, 2 seconds kept, 3 creation ms, 4 digest, 5 oldest score kept, 6 deadline ms.
-- Returns 1 when stored, or Redis's time (negated) when late.
if now > tonumber(ARGV[6]) then return -now end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[5])
return 1
