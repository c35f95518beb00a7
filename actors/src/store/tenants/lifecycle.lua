-- Appends a lifecycle entry to `<p>:tenants` unless Redis runs it past its write deadline.
-- Loaded after NOW_MS_LUA (store/mod.rs), which sets `now`.
--
-- KEYS: 1 the lifecycle stream.
-- ARGV: 1 the write deadline (Unix ms), then the entry's field and value strings.
-- Returns 1 when written, or Redis's time (negated) when late.
if now > tonumber(ARGV[1]) then return -now end
local fields = {}
for i = 2, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('XADD', KEYS[1], '*', unpack(fields))
return 1
