-- Claims a jti for an attempt, unless Redis runs it past its write deadline. Loaded after
-- NOW_MS_LUA (store/mod.rs), which sets `now`.
--
-- KEYS: 1 the jti.
-- ARGV: 1 token digest, 2 attempt nonce, 3 hold ms, 4 deadline ms, 5 retention s.
-- Answers what it found and, for `held`, the ms left; for `late`, Redis's time.
if now > tonumber(ARGV[4]) then return {'late', now} end
local claim = 'claim:' .. ARGV[1] .. ':' .. ARGV[2] .. ':' .. (now + tonumber(ARGV[3]))
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], claim, 'EX', ARGV[5])
  return {'claimed', 0}
end
local d, held = string.match(v, '^claim:(%x+):%x+:(%d+)$')
if d ~= ARGV[1] then return {'replay', 0} end
if tonumber(held) > now then return {'held', tonumber(held) - now} end
redis.call('SET', KEYS[1], claim, 'KEEPTTL')
return {'resumed', 0}
