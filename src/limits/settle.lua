-- Settles a request's holds with what it used.
-- KEYS[i]: the state of hold i. ARGV[1]: the request's id, ARGV[2]: tokens used,
-- ARGV[3]: cost in USD; then 3 values per hold: kind, limit, amount reserved.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local id, used, cost = ARGV[1], tonumber(ARGV[2]), ARGV[3]

for i, key in ipairs(KEYS) do
  local base = 4 + (i - 1) * 3
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
    redis.call('HINCRBYFLOAT', key, 'spent', cost)
  end
end
return 1
