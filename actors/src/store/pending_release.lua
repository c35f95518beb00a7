-- Gives back a decision claimed under a token; another caller's claim is left alone.
--
-- KEYS: 1 the pending activation's decision key.
-- ARGV: 1 the token the decision was claimed under.
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
