-- A chat's read model as one snapshot: the partition's applied position, the chat's
-- state at exactly that position, and the stream's entries after it up to a bound.
-- Read in one script because the builder writes state and position in one script:
-- read apart, a batch applied in between would pair a state with the wrong position.
-- KEYS[1]  the generation's position hash of the partition
-- KEYS[2]  the chat's read-model key
-- KEYS[3]  the partition's conv stream
-- ARGV[1]  the last entry id wanted; ARGV[2] at most this many entries after the position
-- Returns {applied position or false, chat state or false, entries in (applied, ARGV[1]]}.
local applied = redis.call('HGET', KEYS[1], KEYS[3])
local chat = redis.call('GET', KEYS[2])
if not applied then
  return {false, chat, {}}
end
return {applied, chat, redis.call('XRANGE', KEYS[3], '(' .. applied, ARGV[1], 'COUNT', ARGV[2])}
