-- Extend a lease only if this consumer still holds it. KEYS[1] lease; ARGV consumer, ttl ms.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
