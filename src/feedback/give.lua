-- Keeps a feedback on a remembered request, replacing an earlier one; it expires with the
-- request.
-- KEYS[1]: the request, KEYS[2]: its feedback. ARGV[1]: the feedback (JSON).
-- Returns -1 when the request is not remembered (unknown or expired), 1 when an earlier
-- feedback was replaced, 0 otherwise.
local ttl = redis.call('PTTL', KEYS[1])
if ttl == -2 then
  return -1
end
local replaced = redis.call('EXISTS', KEYS[2])
if ttl > 0 then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ttl)
else
  redis.call('SET', KEYS[2], ARGV[1])
end
return replaced
