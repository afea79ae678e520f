"""The Lua scripts of the Redis storage: each operation of a budget, run atomically by Redis.

The rules are those of :mod:`deepseek_pool.budget.rules`, written again in Lua; their
constants travel with every call (:func:`script_constants`), so there is one source of
truth. Plain text, no redis-py: :mod:`deepseek_pool.budget.redis_storage` registers them.
"""

from __future__ import annotations

from typing import List, Optional

from . import rules as budget
from . import shares as share_rules

__all__ = ["KEY_TTL", "PRELUDE", "SCRIPTS", "config_args", "script_constants"]

#: Seconds a budget's keys live after their last write (a budget unused that long starts afresh).
KEY_TTL = 7 * 24 * 3600

#
# KEYS[1] state hash, KEYS[2] lease set.
# ARGV[1] now ('' = Redis's TIME), ARGV[2..5] max_in_flight, rpm, tpm, retry_budget ('' = none),
# ARGV[6..7] the shares (shares.shares_spec, '' = none) and their key (shares.shares_key),
# ARGV[8..12] DECREASE_FACTOR, NAMED_CAP_HOLD, INCREASE_PATIENCE, SPORADIC_COOL_DOWN, token epsilon,
# ARGV[13] KEY_TTL, ARGV[14] shares._ROUNDING; the operation's own arguments follow from ARGV[15].
# Numbers leave as strings: Redis would truncate a Lua number to an integer.
#
# Calls in flight per share are fields 'in:<share>' of the state hash, kept by every
# operation that adds or removes a lease (a lease's share is the end of its id, after
# shares.SHARE_MARK), so that the shares' rule needs no scan of the lease set.

PRELUDE = """
-- Redis 4: replicate the writes, not the script (it reads TIME); a no-op from Redis 5 on.
if redis.replicate_commands then redis.replicate_commands() end
local state_key, leases_key = KEYS[1], KEYS[2]
local inf = math.huge
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[1])
end
local function opt(v) if v == nil or v == '' then return nil end return tonumber(v) end
local max_in_flight, rpm, tpm, retry_budget = opt(ARGV[2]), opt(ARGV[3]), opt(ARGV[4]), opt(ARGV[5])
local ceiling = max_in_flight or inf
local SHARES, shares_key = {}, tonumber(ARGV[7]) or 0
for name, fraction in string.gmatch(ARGV[6], '([^;]+):([^:;]+)') do
  SHARES[#SHARES + 1] = {name, tonumber(fraction)}
end
local DECREASE, HOLD, PATIENCE = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local SPORADIC, EPSILON, TTL = tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13])
local ROUNDING = tonumber(ARGV[14])
local A = 15

-- the state; an infinite value is an absent field, and so is an unfilled tpm bucket
local s = {max_in_flight = -1, shares_key = 0, cap = inf, cap_hold_until = -inf, successes = 0, next_start = -inf,
           tpm_level = nil, tpm_last = -inf, cool_until = -inf, retry_hold_until = -inf, budget_left = -1,
           started = 0, finished = 0, cool_downs = 0, rate_limited = 0, retries = 0, retries_refused = 0,
           tokens_used = 0}
local FIELDS = {'max_in_flight', 'shares_key', 'cap', 'cap_hold_until', 'successes', 'next_start', 'tpm_level',
                'tpm_last', 'cool_until', 'retry_hold_until', 'budget_left', 'started', 'finished', 'cool_downs',
                'rate_limited', 'retries', 'retries_refused', 'tokens_used'}
local raw = redis.call('HGETALL', state_key)
for i = 1, #raw, 2 do s[raw[i]] = tonumber(raw[i + 1]) end

local function num(x) return string.format('%.17g', x) end

local function save()
  local set, gone = {}, {}
  for _, f in ipairs(FIELDS) do
    local v = s[f]
    if v == nil or v == inf or v == -inf then
      gone[#gone + 1] = f
    else
      set[#set + 1] = f
      set[#set + 1] = num(v)
    end
  end
  if #set > 0 then redis.call('HSET', state_key, unpack(set)) end
  if #gone > 0 then redis.call('HDEL', state_key, unpack(gone)) end
  redis.call('EXPIRE', state_key, TTL)
end

-- shares.lease_share: the share of a lease id, nil for none
local function share_of(id)
  return string.match(id, '/([^/]*)$')
end

-- one more (1) or one fewer (-1) lease of a share in flight
local function tally(share, by)
  local field = 'in:' .. share
  s[field] = (s[field] or 0) + by
  redis.call('HINCRBY', state_key, field, by)
end

local function alive()
  local gone = redis.call('ZRANGEBYSCORE', leases_key, '-inf', now)
  if #gone > 0 then
    for _, id in ipairs(gone) do
      local share = share_of(id)
      if share then tally(share, -1) end
    end
    redis.call('ZREMRANGEBYSCORE', leases_key, '-inf', now)
  end
  local count = redis.call('ZCARD', leases_key)
  if count == 0 then  -- nothing in flight: no share has anything either (whatever a lost key left)
    for field, value in pairs(s) do
      if value ~= 0 and string.sub(field, 1, 3) == 'in:' then
        s[field] = 0
        redis.call('HDEL', state_key, field)
      end
    end
  end
  return count
end

-- shares.admits: whether a call of share (nil: none) may start, in_flight < cap
local function admits(cap, in_flight, share)
  local occupied = in_flight
  for _, known in ipairs(SHARES) do
    local name, slots = known[1], 0
    if known[2] > 0 then slots = math.max(1, math.floor(known[2] * cap + ROUNDING)) end  -- shares.guaranteed
    local used = s['in:' .. name] or 0
    if used < slots then
      if name == share then return true end
      occupied = occupied + slots - used
    end
  end
  return occupied < cap
end

-- budget.fill
local function fill()
  if s.budget_left < 0 then s.budget_left = retry_budget or 0 end
  if tpm ~= nil then
    if s.tpm_level == nil then
      s.tpm_level = tpm
      s.tpm_last = now
    elseif now > s.tpm_last then
      s.tpm_level = math.min(tpm, s.tpm_level + (now - s.tpm_last) * (tpm / 60.0))
      s.tpm_last = now
    end
  end
  if s.cap > ceiling then s.cap = ceiling end
end

-- budget.cap_of
local function cap_of()
  if s.cap == inf then return inf end
  return math.max(1, math.floor(s.cap))
end
"""

# budget.try_start; ARGV: tokens, lease id, lease seconds -> delay ('inf': until a release;
# 'cooling <delay>': budget.CoolingDelay), or 'ceiling <stored>' when the budget runs under
# another max_in_flight (budget.ceiling_conflict)
_START = """
local tokens, lease, lease_seconds = tonumber(ARGV[A]), ARGV[A + 1], tonumber(ARGV[A + 2])
fill()
local mine = max_in_flight or 0
if s.max_in_flight ~= mine or s.shares_key ~= shares_key then
  if s.max_in_flight >= 0 and alive() > 0 then
    save()
    return 'ceiling ' .. num(s.max_in_flight)
  end
  s.max_in_flight = mine
  s.shares_key = shares_key
end
local cap = cap_of()
if cap ~= inf then
  local in_flight = alive()
  if in_flight >= cap or (#SHARES > 0 and not admits(cap, in_flight, share_of(lease))) then
    save()
    return 'inf'
  end
end
local delay, cooling = s.cool_until - now, true
if rpm ~= nil then
  local gap = s.next_start - now
  if gap > delay then delay, cooling = gap, false end
end
if tpm ~= nil then
  local short = math.min(tokens, tpm) - s.tpm_level
  if short > EPSILON then
    local gap = short / (tpm / 60.0)
    if gap > delay then delay, cooling = gap, false end
  end
end
if delay > 0 then
  save()
  if cooling then return 'cooling ' .. num(delay) end
  return num(delay)
end
redis.call('ZADD', leases_key, now + lease_seconds, lease)
redis.call('EXPIRE', leases_key, TTL)
local share = share_of(lease)
if share then tally(share, 1) end
s.started = s.started + 1
if rpm ~= nil then s.next_start = now + 60.0 / rpm end
if tpm ~= nil then s.tpm_level = s.tpm_level - tokens end
save()
return '0'
"""

# budget.finish; ARGV: lease id, reserved, tokens used ('' none), earned, ok (1/0)
_FINISH = """
local lease, reserved, used = ARGV[A], tonumber(ARGV[A + 1]), opt(ARGV[A + 2])
local earned, ok = tonumber(ARGV[A + 3]), ARGV[A + 4] == '1'
fill()
local grow = ok and s.cap < ceiling and now >= s.cap_hold_until
local in_use = 0
if grow then in_use = alive() end
if redis.call('ZREM', leases_key, lease) == 1 then
  local share = share_of(lease)
  if share then tally(share, -1) end
end
s.finished = s.finished + 1
if used ~= nil then
  s.tokens_used = s.tokens_used + used
  if tpm ~= nil then s.tpm_level = math.min(tpm, s.tpm_level + (reserved - used)) end
end
if ok then
  if retry_budget ~= nil then s.budget_left = math.min(retry_budget, s.budget_left + earned) end
  if grow and 2 * in_use >= cap_of() then
    s.successes = s.successes + 1
    if s.successes >= PATIENCE * s.cap then
      s.successes = 0
      s.cap = math.min(ceiling, math.floor(s.cap) + 1)
      if s.cap >= ceiling and ceiling ~= inf then s.cap = ceiling end
    end
  end
end
save()
return 'ok'
"""

# budget.rate_limited; ARGV: seconds, named cap ('' none), concurrency, sporadic, retry after (1/0) -> the cap
_RATE_LIMITED = """
local seconds, named = tonumber(ARGV[A]), opt(ARGV[A + 1])
local concurrency, sporadic, told = ARGV[A + 2] == '1', ARGV[A + 3] == '1', ARGV[A + 4] == '1'
fill()
s.rate_limited = s.rate_limited + 1
s.cool_downs = s.cool_downs + 1
if named ~= nil then
  s.cap = math.min(ceiling, named)
  s.cap_hold_until = now + HOLD
  s.successes = 0
elseif concurrency then
  local base = s.cap
  if base == inf then base = math.max(1, alive()) end
  s.cap = math.max(1, math.floor(base * DECREASE))
  s.successes = 0
end
if sporadic and not told then
  s.cool_until = math.max(s.cool_until, now + math.min(seconds, SPORADIC))
else
  s.cool_until = math.max(s.cool_until, now + seconds)
  s.retry_hold_until = math.max(s.retry_hold_until, now + seconds)
end
save()
return num(s.cap)
"""

# budget.spend_retry; ARGV: cost -> {paid ('' refused), budget left}
_SPEND_RETRY = """
local cost = tonumber(ARGV[A])
fill()
local paid
if retry_budget == nil then
  s.retries = s.retries + 1
  paid = '0'
elseif s.budget_left >= cost then
  s.budget_left = s.budget_left - cost
  s.retries = s.retries + 1
  paid = num(cost)
else
  s.retries_refused = s.retries_refused + 1
  paid = ''
end
save()
return {paid, num(s.budget_left)}
"""

# -> seconds retries must still wait (may be '-inf')
_RETRY_HOLD = """
return num(s.retry_hold_until - now)
"""

# budget.pace -> seconds to wait, '0' when the retry took its place in the rpm spacing
_PACE = """
if rpm == nil then return '0' end
local gap = s.next_start - now
if gap > 0 then return num(gap) end
s.next_start = now + 60.0 / rpm
save()
return '0'
"""

# ARGV: lease seconds, lease ids...; only leases still there are renewed (a stale renewal
# that arrives after its release must not bring the slot back)
_RENEW = """
local expires = now + tonumber(ARGV[A])
for i = A + 1, #ARGV do redis.call('ZADD', leases_key, 'XX', expires, ARGV[i]) end
return 'ok'
"""

# -> in flight, cap, cooling for, budget left, and the counters
_SNAPSHOT = """
fill()
local in_flight = alive()
save()
return {num(in_flight), num(s.cap), num(math.max(0, s.cool_until - now)), num(s.budget_left), num(s.started),
        num(s.finished), num(s.cool_downs), num(s.retries), num(s.retries_refused), num(s.tokens_used)}
"""

SCRIPTS = {
    "start": _START,
    "finish": _FINISH,
    "rate_limited": _RATE_LIMITED,
    "spend_retry": _SPEND_RETRY,
    "retry_hold": _RETRY_HOLD,
    "pace": _PACE,
    "renew": _RENEW,
    "snapshot": _SNAPSHOT,
}


def config_args(config: Optional[budget.BudgetConfig]) -> List[str]:
    """A limiter's configuration as the scripts' ARGV[2..7] (all '' for an operation that needs none)."""
    if config is None:
        return ["", "", "", "", "", "0"]
    return [
        _opt(config.max_in_flight),
        _opt(config.rpm),
        _opt(config.tpm),
        _opt(config.retry_budget),
        share_rules.shares_spec(config.shares),
        str(config.shares_key),
    ]


def _opt(value: Optional[float]) -> str:
    return "" if value is None else repr(value)


def script_constants() -> List[str]:
    return [
        repr(budget.DECREASE_FACTOR),
        repr(budget.NAMED_CAP_HOLD),
        repr(budget.INCREASE_PATIENCE),
        repr(budget.SPORADIC_COOL_DOWN),
        repr(budget._TOKEN_EPSILON),
        str(KEY_TTL),
        repr(share_rules._ROUNDING),
    ]
