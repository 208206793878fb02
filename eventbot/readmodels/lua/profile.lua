-- Last-writer-wins writes of user profile field groups (names, model, prompt).
-- A profile changes from any chat, so from any partition: instead of a position,
-- each group carries a version (time, event id) and only a newer one overwrites.
-- That makes these writes idempotent and order-free.
-- KEYS[i]  profile hashes (one hash slot)
-- ARGV     per key: n, then n triples (group, version, msgpack value)
local a = 1
for i = 1, #KEYS do
  local n = tonumber(ARGV[a])
  a = a + 1
  for _ = 1, n do
    local group, version, value = ARGV[a], ARGV[a + 1], ARGV[a + 2]
    a = a + 3
    local current = redis.call('HGET', KEYS[i], group .. '@')
    if (not current) or current <= version then
      redis.call('HSET', KEYS[i], group, value, group .. '@', version)
    end
  end
end
return 1
