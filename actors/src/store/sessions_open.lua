-- Opens a session in the current epoch (set to ARGV[2] if there is none yet). An epoch is
-- random: should the key be lost (evicted, or in a failover), no session ended before matches
-- the next one, and every session fails closed until signing in again.
--
-- KEYS: 1 the session, 2 the epoch.
-- ARGV: 1 the session's lifetime in seconds, 2 a new epoch.
-- Returns 1.
local e = redis.call('GET', KEYS[2])
if not e then e = ARGV[2] redis.call('SET', KEYS[2], e) end
redis.call('SET', KEYS[1], e, 'EX', ARGV[1]) return 1
