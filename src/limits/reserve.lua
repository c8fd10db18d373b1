-- Reserves every check of a request, or nothing (one atomic step for all replicas).
-- KEYS[i]: the state of check i.
-- ARGV[1]: a unique id for this request; ARGV[2]: how long a hold may last, in ms;
-- ARGV[3]: the key that marks this request as settled (see settle.lua): if it is set, this
-- reservation is running after the request was settled or given up, and takes nothing.
-- Then 3 values per check: kind, limit, amount.
--   r  requests per minute (GCRA): the key holds the theoretical arrival time (ms)
--   t  tokens per minute: a hash {tokens, ts, x = when its expiry was last pushed back},
--      refilled continuously
--   c  requests in flight: a sorted set of request ids scored by when their hold expires
--   b  a budget: the period's tally, a hash {requests, tokens, cost (nano-USD, integers are
--      cheaper than HINCRBYFLOAT), r:<id> = "<amount>:<expiry ms>"}; its expiry is set
--      when settle.lua creates it
-- Returns {1, kind, limit, remaining, reset_ms, ...} for r and t checks, or {0, i, retry_ms}
-- (retry_ms -1: a budget is spent).
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local id, hold = ARGV[1], tonumber(ARGV[2])
-- (Nobody reads that answer any more.)
if redis.call('EXISTS', ARGV[3]) == 1 then return {0, 0, 0} end
local pending, touched, status = {}, {}, {1}

for i, key in ipairs(KEYS) do
  local base = 4 + (i - 1) * 3
  local kind, limit, amount = ARGV[base], tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2])
  if kind == 'r' then
    local emission = 60000 / limit
    local tat = math.max(tonumber(redis.call('GET', key) or 0), now)
    local next_tat = tat + emission
    local allow_at = next_tat - 60000
    if now < allow_at then return {0, i, math.ceil(allow_at - now)} end
    pending[i] = next_tat
    local remaining = math.floor((60000 - (next_tat - now)) / emission)
    table.insert(status, 'r'); table.insert(status, limit)
    table.insert(status, remaining); table.insert(status, math.ceil(next_tat - now))
  elseif kind == 't' then
    local state = redis.call('HMGET', key, 'tokens', 'ts', 'x')
    local tokens = tonumber(state[1] or limit)
    local since = now - tonumber(state[2] or now)
    tokens = math.min(limit, tokens + since * limit / 60000)
    if amount > limit then return {0, i, 60000} end
    if tokens < amount then return {0, i, math.ceil((amount - tokens) * 60000 / limit)} end
    pending[i], touched[i] = tokens - amount, state[3]
    table.insert(status, 't'); table.insert(status, limit)
    table.insert(status, math.floor(tokens - amount))
    table.insert(status, math.ceil((limit - tokens + amount) * 60000 / limit))
  elseif kind == 'c' then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    if redis.call('ZCARD', key) >= limit then return {0, i, 1000} end
  elseif kind == 'b' then
    local fields = redis.call('HGETALL', key)
    local spent, held = 0, 0
    for j = 1, #fields, 2 do
      local field, value = fields[j], fields[j + 1]
      if field == 'cost' then
        spent = tonumber(value)
      elseif string.sub(field, 1, 2) == 'r:' then
        local reserved, expiry = string.match(value, '([^:]+):([^:]+)')
        if tonumber(expiry) < now then redis.call('HDEL', key, field) else held = held + tonumber(reserved) end
      end
    end
    if spent + held + amount > limit then return {0, i, -1} end
  end
end

for i, key in ipairs(KEYS) do
  local base = 4 + (i - 1) * 3
  local kind, amount = ARGV[base], ARGV[base + 2]
  if kind == 'r' then
    redis.call('SET', key, pending[i], 'PX', 61000)
  elseif kind == 't' then
    -- The bucket is forgotten one to two minutes after its last use (a full bucket is no
    -- bucket): its expiry is pushed back once a minute, not on every write (writes are
    -- what a script spends its time on).
    if not touched[i] or now - tonumber(touched[i]) > 60000 then
      redis.call('HSET', key, 'tokens', pending[i], 'ts', now, 'x', now)
      redis.call('PEXPIRE', key, 120000)
    else
      redis.call('HSET', key, 'tokens', pending[i], 'ts', now)
    end
  elseif kind == 'c' then
    redis.call('ZADD', key, now + hold, id)
    redis.call('PEXPIRE', key, hold)
  elseif kind == 'b' then
    redis.call('HSET', key, 'r:' .. id, amount .. ':' .. (now + hold))
  end
end
return status
