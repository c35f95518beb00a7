-- Commits a claimed jti, unless Redis runs it past its write deadline. Loaded after
-- NOW_MS_LUA (store/mod.rs), which sets `now`.
--
-- KEYS: 1 the jti.
-- ARGV: 1 token digest, 2 attempt nonce, 3 deadline ms.
-- Answers 1 when this attempt committed, 0 when its claim was taken over, or Redis's time
-- (negated) when late.
if now > tonumber(ARGV[3]) then return -now end
local mine = 'claim:' .. ARGV[1] .. ':' .. ARGV[2] .. ':'
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, #mine) == mine then
  redis.call('SET', KEYS[1], 'done', 'KEEPTTL')
  return 1
end
return 0
