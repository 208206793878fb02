-- Append a user's ledger events with optimistic concurrency, all or nothing.
-- KEYS[1]     the ledger stream of the user's partition
-- KEYS[2]     the user's ledger head (hash: seq, hash, balance, held, entry)
-- KEYS[3..]   one dedupe marker per event
-- ARGV[1]     dedupe window, ms
-- ARGV[2]     the seq the caller expects the head to be at
-- ARGV[3..]   per event: type, version, payload, seq, hash, balance_after, held_after
-- Returns {"ok", id...}, {"dup", first id...} or {"conflict", seq, hash, balance, held}.
local seen = {}
local any_seen = false
for i = 3, #KEYS do
  local first = redis.call('GET', KEYS[i])
  if first then any_seen = true end
  seen[#seen + 1] = first or ''
end
if any_seen then
  -- Events of one call are stored together, so one seen means all were.
  local out = {'dup'}
  for _, id in ipairs(seen) do out[#out + 1] = id end
  return out
end
local head = redis.call('HMGET', KEYS[2], 'seq', 'hash', 'balance', 'held')
if tonumber(head[1] or '0') ~= tonumber(ARGV[2]) then
  return {'conflict', head[1] or '0', head[2] or '', head[3] or '0', head[4] or '0'}
end
local out = {'ok'}
local id
for i = 3, #KEYS do
  local a = 3 + (i - 3) * 7
  id = redis.call('XADD', KEYS[1], '*', 't', ARGV[a], 'v', ARGV[a + 1], 'd', ARGV[a + 2])
  redis.call('SET', KEYS[i], id, 'PX', ARGV[1])
  out[#out + 1] = id
end
local last = 3 + (#KEYS - 3) * 7
redis.call('HSET', KEYS[2], 'seq', ARGV[last + 3], 'hash', ARGV[last + 4],
  'balance', ARGV[last + 5], 'held', ARGV[last + 6], 'entry', id)
return out
