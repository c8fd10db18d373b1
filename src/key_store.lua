-- Changes one admin-created key and bumps the version every replica polls, atomically.
-- KEYS[1]: the hash of keys (name -> JSON), KEYS[2]: its version counter.
-- ARGV[1]: create | update | delete, ARGV[2]: the name, ARGV[3]: the new JSON (create,
-- update), ARGV[4]: the JSON the update was computed from.
-- Returns the new version; 0 when the key exists (create) or does not (update, delete);
-- -1 when it is no longer the one the update was computed from.
local current = redis.call('HGET', KEYS[1], ARGV[2])
if (ARGV[1] == 'create') == (current ~= false) then return 0 end
if ARGV[1] == 'update' and current ~= ARGV[4] then return -1 end
if ARGV[1] == 'delete' then
  redis.call('HDEL', KEYS[1], ARGV[2])
else
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
end
return redis.call('INCR', KEYS[2])
