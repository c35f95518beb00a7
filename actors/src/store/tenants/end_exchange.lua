-- Removes the exchange intent ARGV[1] if it is still the one recorded (the exchange ended
-- with an answer that rotated nothing).
--
-- KEYS: 1 the tenant hash.
-- ARGV: 1 the encoded intent.
-- Returns 1 when removed, 0 otherwise.
if redis.call('HGET', KEYS[1], 'exchange_intent') == ARGV[1] then
  return redis.call('HDEL', KEYS[1], 'exchange_intent')
end
return 0
