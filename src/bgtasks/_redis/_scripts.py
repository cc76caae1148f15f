"""The Lua scripts of the idempotency store: each call is one atomic script.

Every script touches the two keys of one idempotency key, which share a hash
tag, so all of them run on one slot of a Redis Cluster. The state hash holds
``s`` (``run`` or ``done``), ``o`` the owner, ``f`` the fence, ``p`` the
fingerprint (``"="``-prefixed, absent for none) and, once done, ``v`` (a value)
or ``e`` (an error). The counter key holds the last fence handed out.

Claim and complete are idempotent for their caller: a claim by the owner that
already holds the key returns that claim, and completing a claim that this
very fence already completed succeeds again. So a call retried after a lost
reply (the client retries once on a dropped connection) cannot find its own
claim "in progress", nor report its own completion as refused.

Fences only grow: a fence is the greater of the last one plus one and the
server's clock in microseconds, so even after the counter has expired (it
lives as long as the longest claim or record that used it) a new fence is
above every fence handed out before it, and a paused former owner can never
hold a fence a later owner's could be mistaken for.
"""

from __future__ import annotations

from coredis.commands import Script

__all__ = ["CLAIM", "COMPLETE", "FORGET", "RELEASE"]

# KEYS: state, counter. ARGV: owner, lease_ms, fingerprint.
# Returns {1, fence} | {2, fingerprint, value, error} | {3, fingerprint, ms_left}.
# The owner that holds the key gets its own claim back.
CLAIM: Script[bytes] = Script(
    script="""
local s = redis.call('HMGET', KEYS[1], 's', 'p', 'v', 'e', 'o', 'f')
if s[1] == 'done' then return {2, s[2], s[3], s[4]} end
if s[1] == 'run' then
  if s[5] == ARGV[1] then return {1, tonumber(s[6])} end
  local left = redis.call('PTTL', KEYS[1])
  if left > 0 then return {3, s[2], left} end
end
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local fence = math.max(tonumber(redis.call('GET', KEYS[2]) or '0') + 1, now_us)
fence = string.format('%.0f', fence)
local lease = tonumber(ARGV[2])
local kept = redis.call('PTTL', KEYS[2])
if kept == -1 then
  redis.call('SET', KEYS[2], fence, 'KEEPTTL')
else
  redis.call('SET', KEYS[2], fence, 'PX', math.max(kept, lease))
end
if s[1] then redis.call('DEL', KEYS[1]) end
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[1], 's', 'run', 'o', ARGV[1], 'f', fence, 'p', ARGV[3])
else
  redis.call('HSET', KEYS[1], 's', 'run', 'o', ARGV[1], 'f', fence)
end
redis.call('PEXPIRE', KEYS[1], lease)
return {1, fence}
"""
)

# KEYS: state, counter. ARGV: owner, fence, ttl_ms (0: never expires),
# fingerprint, field ('v' or 'e'), payload, channel, message. Returns 1 or 0.
COMPLETE: Script[bytes] = Script(
    script="""
local s = redis.call('HMGET', KEYS[1], 's', 'o', 'f')
if s[1] == 'done' and s[3] == ARGV[2] then return 1 end
if s[1] ~= 'run' or s[2] ~= ARGV[1] or s[3] ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[1], 's', 'done', 'f', ARGV[2], ARGV[5], ARGV[6], 'p', ARGV[4])
else
  redis.call('HSET', KEYS[1], 's', 'done', 'f', ARGV[2], ARGV[5], ARGV[6])
end
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
  local kept = redis.call('PTTL', KEYS[2])
  if kept >= 0 and kept < ttl then redis.call('PEXPIRE', KEYS[2], ttl) end
else
  redis.call('PERSIST', KEYS[2])
end
redis.call('PUBLISH', ARGV[7], ARGV[8])
return 1
"""
)

# KEYS: state. ARGV: owner, fence, channel, message. Returns 1 or 0.
RELEASE: Script[bytes] = Script(
    script="""
local s = redis.call('HMGET', KEYS[1], 's', 'o', 'f')
if s[1] ~= 'run' or s[2] ~= ARGV[1] or s[3] ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""
)

# KEYS: state. ARGV: channel, message. The counter stays: fences keep growing.
FORGET: Script[bytes] = Script(
    script="""
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
"""
)
