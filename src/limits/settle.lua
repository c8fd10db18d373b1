-- Settles a request's holds with what it used, and books its usage on its accounts.
-- ARGV[1]: the request's id, ARGV[2]: tokens used, ARGV[3]: cost in nano-USD, ARGV[4]: the
-- number of holds n, ARGV[5]: the key that marks the request settled. Settling twice does
-- nothing (so a settlement whose answer was lost can be sent again), and a reservation that
-- Redis runs after this (one whose answer never came) takes nothing.
-- KEYS[1..n]: the state of each hold, with 3 values each in ARGV: kind, limit, amount
-- reserved. KEYS[n+1..]: the tallies to book on, with 1 value each: ttl in ms (0: none).
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local id, used, cost, holds = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
-- Kept a minute: longer than settlements are retried, and than any stall a reservation
-- could be stuck behind (one stuck longer leaks its holds only until they expire).
if not redis.call('SET', ARGV[5], 1, 'NX', 'PX', 60000) then return 0 end

for i = 1, holds do
  local key, base = KEYS[i], 6 + (i - 1) * 3
  local kind, limit, reserved = ARGV[base], tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2])
  if kind == 't' then
    local state = redis.call('HMGET', key, 'tokens', 'ts')
    if state[1] then
      local tokens = tonumber(state[1]) + (now - tonumber(state[2])) * limit / 60000
      tokens = math.min(limit, tokens + reserved - used)
      redis.call('HSET', key, 'tokens', tokens, 'ts', now)
    end
  elseif kind == 'c' then
    redis.call('ZREM', key, id)
  elseif kind == 'b' then
    redis.call('HDEL', key, 'r:' .. id)
  end
end

local base = 6 + holds * 3
for i = holds + 1, #KEYS do
  local key, ttl = KEYS[i], tonumber(ARGV[base + i - holds - 1])
  local requests = redis.call('HINCRBY', key, 'requests', 1)
  redis.call('HINCRBY', key, 'tokens', used)
  redis.call('HINCRBY', key, 'cost', cost)
  -- A period's tally is new once: its expiry is set then (a budget hold may have created
  -- the hash a moment before).
  if ttl > 0 and requests == 1 then redis.call('PEXPIRE', key, ttl) end
end
return 1
