"""The Lua scripts behind the task mirror, one atomic decision each.

Every script touches the keys of ONE task or ONE worker, except ``WRITE_TASKS``
and ``INTERRUPT_TASKS``, which take a batch of task keys: the mirror sends them
one key per call on Redis Cluster (so each call stays in one slot) and
hundreds per call on a single server, where one call costs what one command
costs. Lease decisions read the server's clock (``TIME``), never a host's.
"""

from __future__ import annotations

import hashlib

__all__ = [
    "CLAIM_REAP",
    "COUNT_TASKS",
    "DELETE_FINISHED",
    "FINISH_REAP",
    "HEARTBEAT",
    "INDEX_CREATED",
    "INDEX_FINISHED",
    "INTERRUPT_TASKS",
    "PUBLISH_CHANGES",
    "READ_CHANGES",
    "REQUEST_CANCEL",
    "SCAN_INDEX",
    "SET_COUNTS",
    "WRITE_TASKS",
    "Script",
]


class Script:
    """A Lua script and its SHA1, so EVALSHA needs no round trip to learn it."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


_STATES = """
local TERMINAL = {succeeded=true, failed=true, cancelled=true, interrupted=true}
local ACTIVE = {pending=true, running=true}
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# KEYS: none on a single server (each key is head .. id .. "}"), or one per
# task on a cluster. ARGV: wid, finished_ttl_ms, safety_ms, head, then a JSON
# array with one [id, gen, create (0/1), state ("" = unchanged), field, value,
# ...] per task: one argument, as coredis spends more per argument than Redis
# spends decoding JSON. Returns {index, code, ...} for each task not written:
#   2 = this exact final write is there already (a retry): counts as written;
#   0 = fenced: the record is final already (a reaper declared it interrupted);
#  -1 = another submission with this id is active (a reused id);
#  -2 = the record is gone (expired or trimmed) and this is no creating write.
WRITE_TASKS = Script(
    _STATES
    + """
local wid, ttl, safety, head = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local out = {}
for k, t in ipairs(cjson.decode(ARGV[5])) do
  local key = KEYS[k] or (head .. t[1] .. '}')
  local gen, create, state = t[2], t[3] == 1, t[4]
  local cur = redis.call('HMGET', key, 'gen', 'state')
  local code = 1
  if cur[1] == gen then
    if TERMINAL[cur[2]] then
      if cur[2] == state then code = 2 else code = 0 end
    end
  elseif create then
    if cur[1] and ACTIVE[cur[2]] then
      code = -1
    elseif cur[1] or cur[2] then
      redis.call('DEL', key)
    end
  else
    code = -2
  end
  if code == 1 then
    local args, n = {'worker', wid}, 2
    if create then
      args[3] = 'gen'; args[4] = gen; args[5] = 'id'; args[6] = t[1]; n = 6
    end
    if state ~= '' then args[n + 1] = 'state'; args[n + 2] = state; n = n + 2 end
    for j = 5, #t do args[n + j - 4] = t[j] end
    redis.call('HSET', key, unpack(args))
    if TERMINAL[state] then
      redis.call('PEXPIRE', key, ttl)
    elseif create then
      redis.call('PEXPIRE', key, safety)
    end
  else
    out[#out + 1] = k
    out[#out + 1] = code
  end
end
return out
"""
)

# KEYS: worker hash, fenced, tasks set, cancels set.
# ARGV: lease_ms, safety_ms, host, pid, started, then field, value pairs (the
# worker's active tasks per state). Returns {0} once fenced, else {lease
# deadline ms, server now ms, fresh, cancel ids...}: fresh is 1 when the worker
# hash was missing (a first beat, or a Redis that restarted empty).
HEARTBEAT = Script(
    _STATES
    + """
if redis.call('EXISTS', KEYS[2]) == 1 then return {0} end
local fresh = 1 - redis.call('EXISTS', KEYS[1])
local now = now_ms()
local deadline = now + tonumber(ARGV[1])
redis.call('HSET', KEYS[1], 'host', ARGV[3], 'pid', ARGV[4], 'started', ARGV[5],
  'lease_until', deadline, unpack(ARGV, 6))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
local out = {deadline, now, fresh}
local cancels = redis.call('SMEMBERS', KEYS[4])
if #cancels > 0 then
  redis.call('DEL', KEYS[4])
  for _, id in ipairs(cancels) do out[#out + 1] = id end
end
return out
"""
)

# KEYS: worker hash. ARGV: field, value pairs (active tasks per state). Only
# updates a registered worker: the heartbeat alone (re)creates the hash, so a
# missing one tells the heartbeat that Redis lost its data.
SET_COUNTS = Script(
    """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], unpack(ARGV)) end
return 1
"""
)

# KEYS: worker hash, fenced, tasks set, reaping lock.
# ARGV: reaper wid, reap lock ms, safety_ms.
# Returns {'alive'}, {'done'} (reaped before), {'busy'} (another reaper holds
# the lock) or {'reap', task ids...}: exactly one caller fences a lapsed
# worker; a reaper that stalled loses its lock and the next one finishes.
CLAIM_REAP = Script(
    _STATES
    + """
local lease_until = tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '0')
if lease_until > now_ms() then return {'alive'} end
if redis.call('EXISTS', KEYS[2]) == 1 then
  if redis.call('HGET', KEYS[1], 'reaped') == '1' then return {'done'} end
  if not redis.call('SET', KEYS[4], ARGV[1], 'NX', 'PX', ARGV[2]) then
    return {'busy'}
  end
else
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
  redis.call('SET', KEYS[4], ARGV[1], 'PX', ARGV[2])
end
local out = {'reap'}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[3])) do out[#out + 1] = id end
return out
"""
)

# Both index scripts take the same KEYS, all in the prefix's slot: the created
# index, the finished index, the durations of the finished tasks that ran
# (score: seconds), then one finished set per final state, named in ARGV[1].
_INDEXES = """
local by_state = {}
for k, name in ipairs(cjson.decode(ARGV[1])) do by_state[name] = KEYS[k + 3] end
local function forget(ids, from)
  for i = 1, #ids, 1000 do
    local j = math.min(i + 999, #ids)
    for k = from, #KEYS do redis.call('ZREM', KEYS[k], unpack(ids, i, j)) end
  end
end
"""

# ARGV: final state names, a JSON array [id, created ms, ...] of new
# submissions. Indexes them (after their records were written, so a reader
# never drops a new entry as stale) and forgets a reused id's old finished
# entries.
INDEX_CREATED = Script(
    _INDEXES
    + """
local items = cjson.decode(ARGV[2])
local ids = {}
for i = 1, #items, 1000 do
  local add = {}
  for j = i, math.min(i + 999, #items), 2 do
    add[#add + 1] = items[j + 1]
    add[#add + 1] = items[j]
    ids[#ids + 1] = items[j]
  end
  redis.call('ZADD', KEYS[1], unpack(add))
end
forget(ids, 2)
return 1
"""
)

# ARGV: final state names, max_finished, cutoff ms, a JSON array [id, finished
# ms, state, duration s (-1: it never ran), ...]. Indexes those finished tasks
# (once: a retried write changes nothing), drops the entries finished before
# the cutoff and the oldest past max_finished from every index, and returns
# the dropped ids (their hashes go next, by slot). So the counts per final
# state and the durations cover exactly the finished tasks Redis keeps.
INDEX_FINISHED = Script(
    _INDEXES
    + """
local items = cjson.decode(ARGV[4])
for i = 1, #items, 4 do
  local id, ms, took = items[i], items[i + 1], items[i + 3]
  if redis.call('ZADD', KEYS[2], 'NX', ms, id) == 1 then
    local key = by_state[items[i + 2]]
    if key then redis.call('ZADD', key, ms, id) end
    if took >= 0 then redis.call('ZADD', KEYS[3], took, id) end
  end
end
local old = #redis.call('ZRANGE', KEYS[2], '-inf', '(' .. ARGV[3], 'BYSCORE',
  'LIMIT', 0, 1000)
local drop = math.max(old, redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[2]))
if drop == 0 then return {} end
local popped = redis.call('ZRANGE', KEYS[2], 0, drop - 1)
forget(popped, 1)
return popped
"""
)

# KEYS: the durations, then one finished set per final state. Returns the size
# of each finished set, the number of durations, then (if any) the p50 and p95
# durations by nearest rank: O(log n) whatever the history's size.
COUNT_TASKS = Script(
    """
local out = {}
for k = 2, #KEYS do out[#out + 1] = redis.call('ZCARD', KEYS[k]) end
local n = redis.call('ZCARD', KEYS[1])
out[#out + 1] = n
if n > 0 then
  for _, fraction in ipairs({0.5, 0.95}) do
    local rank = math.max(1, math.ceil(fraction * n)) - 1
    out[#out + 1] = redis.call('ZRANGE', KEYS[1], rank, rank, 'WITHSCORES')[2]
  end
end
return out
"""
)

# The change feed: a stream of which tasks each worker wrote, kept only while
# some dashboard watches (the watched flag, refreshed by every reader).
# KEYS: the stream, the watched flag. ARGV: max entries, stream ttl ms, wid,
# JSON ids ("*": too many, readers reload). Adds the entry only if watched;
# returns 1 if watched, else 0, so an unwatched worker stops publishing.
PUBLISH_CHANGES = Script(
    """
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'w', ARGV[3], 'ids', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
)

# KEYS: the stream, the watched flag. ARGV: watch ms, max entries, the last
# entry read ('' = start from now), count. Marks the feed watched and returns
# {last entry id, gap (0/1), wid, ids, ...} for the entries after the last one
# read. A gap means entries were trimmed unread: the reader's pages reload.
READ_CHANGES = Script(
    """
local function before(a, b)
  local am, as = string.match(a, '(%d+)-(%d+)')
  local bm, bs = string.match(b, '(%d+)-(%d+)')
  am, bm = tonumber(am), tonumber(bm)
  return am < bm or (am == bm and tonumber(as) < tonumber(bs))
end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
if ARGV[3] == '' then
  local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
  return {newest and newest[1] or '0-0', 0}
end
local out = {ARGV[3], 0}
local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
if oldest and before(ARGV[3], oldest[1])
  and redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[2]) then
  out[2] = 1
end
for _, entry in ipairs(redis.call('XRANGE', KEYS[1], '(' .. ARGV[3], '+',
    'COUNT', ARGV[4])) do
  out[1] = entry[1]
  local fields = {}
  for i = 1, #entry[2], 2 do fields[entry[2][i]] = entry[2][i + 1] end
  out[#out + 1] = fields.w or ''
  out[#out + 1] = fields.ids or '*'
end
return out
"""
)

# KEYS: task hashes. Deletes those that are final: a trimmed id may already
# belong to a new submission that is still running.
DELETE_FINISHED = Script(
    _STATES
    + """
for k = 1, #KEYS do
  if TERMINAL[redis.call('HGET', KEYS[k], 'state')] then redis.call('DEL', KEYS[k]) end
end
return 1
"""
)

# KEYS: task hashes. ARGV: dead wid, finished_ttl_ms, finished (epoch s text).
# Marks each still-active task of that worker interrupted; returns their indexes.
INTERRUPT_TASKS = Script(
    _STATES
    + """
local out = {}
for k = 1, #KEYS do
  local cur = redis.call('HMGET', KEYS[k], 'state', 'worker')
  if ACTIVE[cur[1]] and cur[2] == ARGV[1] then
    redis.call('HSET', KEYS[k], 'state', 'interrupted', 'finished', ARGV[3],
      'reason', 'worker lost')
    redis.call('PEXPIRE', KEYS[k], ARGV[2])
    out[#out + 1] = k
  end
end
return out
"""
)

# KEYS: worker hash, tasks set, cancels set, reaping lock. ARGV: safety_ms.
# The fenced key stays (for safety_ms), so the worker learns it was declared dead.
FINISH_REAP = Script(
    """
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
redis.call('HSET', KEYS[1], 'reaped', '1')
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""
)

# KEYS: task hash. Returns {'requested', worker}, {'finished', state} or {'unknown'}.
REQUEST_CANCEL = Script(
    _STATES
    + """
local cur = redis.call('HMGET', KEYS[1], 'state', 'worker')
if ACTIVE[cur[1]] then
  redis.call('HSET', KEYS[1], 'cancel_requested', '1')
  return {'requested', cur[2]}
end
if cur[1] then return {'finished', cur[1]} end
return {'unknown'}
"""
)

# KEYS: the created index. ARGV: bound score ('' = from the newest), count.
# Returns {ties, older}: the {id, score, ...} entries whose score equals the
# bound (the caller keeps those whose id sorts below the bound's, in byte
# order, as ZREVRANGE orders ties: Lua would compare by the server's locale),
# then up to count entries with a lower score, newest first.
SCAN_INDEX = Script(
    """
if ARGV[1] == '' then
  return {{}, redis.call('ZRANGE', KEYS[1], '+inf', '-inf', 'BYSCORE', 'REV',
    'LIMIT', 0, ARGV[2], 'WITHSCORES')}
end
return {
  redis.call('ZRANGE', KEYS[1], ARGV[1], ARGV[1], 'BYSCORE', 'REV', 'WITHSCORES'),
  redis.call('ZRANGE', KEYS[1], '(' .. ARGV[1], '-inf', 'BYSCORE', 'REV',
    'LIMIT', 0, ARGV[2], 'WITHSCORES'),
}
"""
)
