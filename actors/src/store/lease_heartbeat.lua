-- Heartbeat: (re)announce this replica as ARGV[1] (removing its twin ARGV[3]: the draining
-- or the plain name), drop expired ones. Uses the server's clock.
--
-- KEYS: 1 replicas.
-- ARGV: 1 member, 2 ttl ms, 3 twin.
-- Returns {1 if this replica's previous heartbeat (under either name) had not expired yet, the
-- server's time in ms, {member, expiry, ...}}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function alive(m)
  local s = redis.call('ZSCORE', KEYS[1], m)
  return s and tonumber(s) > now
end
local continuous = 0
if alive(ARGV[1]) or alive(ARGV[3]) then continuous = 1 end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREM', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return {continuous, now, redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')}
