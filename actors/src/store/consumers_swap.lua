-- Replaces a consumer record only if it is still the one the caller read (or wrote): a grant
-- undoing itself must not delete a newer grant of the same name, nor the sync overwrite one.
--
-- KEYS: 1 the records hash (<p>:consumers).
-- ARGV: 1 the ACL user (the field), 2 the record expected, 3 the new record ("" = delete).
-- Returns 1 when replaced (or deleted), 0 when the field held something else.
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
if ARGV[3] == '' then redis.call('HDEL', KEYS[1], ARGV[1]) else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) end
return 1
