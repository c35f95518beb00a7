-- Give a record up (only if still ours). Returns 1 when deleted, 0 otherwise.
--
-- KEYS: 1 record.
-- ARGV: 1 `<replica>|<epoch>`.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
