-- Apply one batch of a partition to a read-model generation, exactly once.
-- KEYS[1]   the generation's position hash of the partition (stream -> last applied entry id)
-- KEYS[2..] read-model keys of the same partition
-- ARGV[1]   the stream; ARGV[2] the position the builder read ('' for none); ARGV[3] the new position
-- ARGV[4..] one value per key (msgpack); '' deletes the key
-- Returns 'ok', or the position found when it is not the one the builder read (nothing is written).
local found = redis.call('HGET', KEYS[1], ARGV[1]) or ''
if found ~= ARGV[2] then
  return found == '' and 'none' or found
end
for i = 2, #KEYS do
  local value = ARGV[i + 2]
  if value == '' then
    redis.call('DEL', KEYS[i])
  else
    redis.call('SET', KEYS[i], value)
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 'ok'
