//! The Lua scripts: one per mutating call, so each is one atomic server-side step and one round
//! trip (EVALSHA; the redis crate falls back to EVAL once after a server restart).
//!
//! Layout (see the crate docs): a pair is a hash `{v: value, i: last_index}` at
//! `<prefix><key>`; `<prefix>\x01kvstore/rev` is the revision counter; `<prefix>\x01kvstore/index`
//! is a sorted set of every key (score 0, so members sort bytewise) used by `list` and
//! `delete_tree`; `<prefix>\x01kvstore/lock/<key>` holds `<owner>:<token>` while a lock is held.
//! Keys a script derives from the index (list, delete_tree) are not declared in KEYS, so Redis
//! Cluster is not supported (see docs/compatibility.md).
//!
//! Status codes returned by scripts.

use std::sync::LazyLock;

use redis::Script;

pub(crate) const OK: i64 = 0;
pub(crate) const EXISTS: i64 = 1;
pub(crate) const NOT_FOUND: i64 = 2;
pub(crate) const MODIFIED: i64 = 3;

/// KEYS: data, rev, index. ARGV: value, ttl_ms (0 = none), mode (any|absent|index),
/// expected index, member. Returns {status, new index}.
pub(crate) static PUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = redis.call('HGET', KEYS[1], 'i')
if ARGV[3] == 'absent' and cur then return {1, 0} end
if ARGV[3] == 'index' then
  if not cur then return {2, 0} end
  if cur ~= ARGV[4] then return {3, 0} end
end
local idx = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'i', idx)
if tonumber(ARGV[2]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
else
  redis.call('PERSIST', KEYS[1])
end
-- An existing key is already in the index: only a new one needs ZADD.
if not cur then redis.call('ZADD', KEYS[3], 0, ARGV[5]) end
return {0, idx}
",
    )
});

/// KEYS: data, index. ARGV: mode (any|index), expected index, member. Returns a status.
pub(crate) static DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = redis.call('HGET', KEYS[1], 'i')
if not cur then
  redis.call('ZREM', KEYS[2], ARGV[3])
  return 2
end
if ARGV[1] == 'index' and cur ~= ARGV[2] then return 3 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[3])
return 0
",
    )
});

/// KEYS: index. ARGV: key prefix, dir ('' = all). Returns {dir exists (0/1), key, value, index,
/// key, value, index, …}, sorted; index entries whose pair expired are dropped on the way.
pub(crate) static LIST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local members
if ARGV[2] == '' then
  members = redis.call('ZRANGE', KEYS[1], 0, -1)
else
  members = redis.call('ZRANGEBYLEX', KEYS[1], '[' .. ARGV[2] .. '/', '(' .. ARGV[2] .. '0')
end
local out = {0}
for _, m in ipairs(members) do
  local r = redis.call('HMGET', ARGV[1] .. m, 'v', 'i')
  if r[2] then
    out[#out + 1] = m
    out[#out + 1] = r[1]
    out[#out + 1] = tonumber(r[2])
  else
    redis.call('ZREM', KEYS[1], m)
  end
end
if ARGV[2] == '' or #out > 1 or redis.call('EXISTS', ARGV[1] .. ARGV[2]) == 1 then out[1] = 1 end
return out
",
    )
});

/// KEYS: index. ARGV: key prefix, dir. Deletes dir and every descendant. Returns a status.
pub(crate) static DELETE_TREE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local members
if ARGV[2] == '' then
  members = redis.call('ZRANGE', KEYS[1], 0, -1)
else
  members = redis.call('ZRANGEBYLEX', KEYS[1], '[' .. ARGV[2] .. '/', '(' .. ARGV[2] .. '0')
  members[#members + 1] = ARGV[2]
end
local deleted = 0
for _, m in ipairs(members) do
  deleted = deleted + redis.call('DEL', ARGV[1] .. m)
  redis.call('ZREM', KEYS[1], m)
end
if deleted == 0 then return 2 end
return 0
",
    )
});

/// KEYS: data. ARGV: expected index, ttl_ms. Extends a kept-alive key if it is still the write
/// we made. Returns 1 when renewed, 0 when the key changed or vanished.
pub(crate) static RENEW_KEY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HGET', KEYS[1], 'i') == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
",
    )
});

/// KEYS: lock, rev, data, index. ARGV: owner, ttl_ms, has value (0/1), value, member.
/// Returns {1, token} when taken, {0, remaining ms} when held by someone else.
pub(crate) static LOCK_ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0, redis.call('PTTL', KEYS[1])}
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. token, 'PX', ARGV[2])
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[3], 'v', ARGV[4], 'i', token)
  redis.call('PERSIST', KEYS[3])
  redis.call('ZADD', KEYS[4], 0, ARGV[5])
end
return {1, token}
",
    )
});

/// KEYS: lock. ARGV: holder (`owner:token`), ttl_ms. Returns 1 when renewed, 0 when lost.
pub(crate) static LOCK_RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
",
    )
});

/// KEYS: lock, data, index. ARGV: holder (`owner:token`, or `owner:` to match any token of
/// this owner), delete value (0/1), member. Returns 1 when released.
pub(crate) static LOCK_RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local holder = redis.call('GET', KEYS[1])
if not holder then return 0 end
local ours
if string.sub(ARGV[1], -1) == ':' then
  ours = string.sub(holder, 1, #ARGV[1]) == ARGV[1]
else
  ours = holder == ARGV[1]
end
if not ours then return 0 end
redis.call('DEL', KEYS[1])
if ARGV[2] == '1' then
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[3], ARGV[3])
end
return 1
",
    )
});
