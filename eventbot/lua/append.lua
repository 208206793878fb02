-- Idempotent append of a batch of events to one stream.
-- KEYS[1]     the stream
-- KEYS[2..]   one dedupe marker per event (same hash slot as the stream)
-- ARGV[1]     dedupe window, ms
-- ARGV[2]     approximate MAXLEN for the stream, 0 for none
-- ARGV[3..]   per event: type, version, msgpack payload
-- Returns one entry id per event; a duplicate returns "=" .. the id it was first stored under.
local window = ARGV[1]
local maxlen = tonumber(ARGV[2])
local out = {}
for i = 2, #KEYS do
  local first = redis.call('GET', KEYS[i])
  if first then
    out[#out + 1] = '=' .. first
  else
    local a = 3 + (i - 2) * 3
    local id
    if maxlen > 0 then
      id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', 't', ARGV[a], 'v', ARGV[a + 1], 'd', ARGV[a + 2])
    else
      id = redis.call('XADD', KEYS[1], '*', 't', ARGV[a], 'v', ARGV[a + 1], 'd', ARGV[a + 2])
    end
    redis.call('SET', KEYS[i], id, 'PX', window)
    out[#out + 1] = id
  end
end
return out
