-- Changes one admin-created key and bumps the version every replica polls, atomically.
-- KEYS[1]: the hash of keys (name -> JSON), KEYS[2]: its version counter.
-- ARGV[1]: create | update | delete, ARGV[2]: the name, ARGV[3]: the JSON (not for delete).
-- Returns the new version, or 0 when the key exists (create) or does not (update, delete).
local exists = redis.call('HEXISTS', KEYS[1], ARGV[2]) == 1
if (ARGV[1] == 'create') == exists then return 0 end
if ARGV[1] == 'delete' then
  redis.call('HDEL', KEYS[1], ARGV[2])
else
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
end
return redis.call('INCR', KEYS[2])
