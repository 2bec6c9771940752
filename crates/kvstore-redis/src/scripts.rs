//! The Lua scripts: one per mutating call, so each is one atomic server-side step and one round
//! trip (EVALSHA; the redis crate falls back to EVAL once after a server restart).
//!
//! Layout (see the crate docs): a pair is a hash `{v: value, i: last_index}` at
//! `<prefix><key>`; `<prefix>\x01kvstore/rev` is the revision counter; `<prefix>\x01kvstore/index`
//! is a sorted set of every key (score 0, so members sort bytewise) used by `list` and
//! `delete_tree`; `<prefix>\x01kvstore/lock/<key>` holds `<owner>:<token>` while a lock is held.
//! The change log of `watch_events` sits beside the counter (see [`LOG`]): `\x01kvstore/log`
//! (a stream), `\x01kvstore/logmeta` (its floor, size and epoch) and `\x01kvstore/ttl` (a
//! sorted set of TTL deadlines, so expiries are logged).
//! Keys a script derives from the index (list, delete_tree) are not declared in KEYS, so Redis
//! Cluster is not supported (see docs/compatibility.md).
//!
//! Plain strings written by other clients (`redis-cli SET`, valkeyrie, Traefik) at a key's name
//! are read too: their value is the string, their `last_index` a fingerprint of it (see
//! [`CURRENT`]). A kvstore write converts such a key to kvstore's layout.
//!
//! Status codes returned by scripts.

use std::sync::LazyLock;

use redis::Script;
use redis::aio::ConnectionLike;

/// Lua shared by the scripts that read a pair's current state.
///
/// `fingerprint(v)`: the `last_index` of a plain string written by another client — 1 plus the
/// first 52 bits of the SHA-1 of its value (exact in a Lua number), so it is non-zero and
/// changes whenever the value does. `current(k)`: `(index as text or false, type)` of the pair
/// at `k`; a type kvstore cannot read is an error reply naming it.
/// Source: Redis docs, "Scripting with Lua" — `redis.sha1hex`, `redis.error_reply`; "TYPE".
const CURRENT: &str = r"
local function fingerprint(v)
  return tonumber(string.sub(redis.sha1hex(v), 1, 13), 16) + 1
end
local function current(k)
  local t = redis.call('TYPE', k).ok
  if t == 'hash' then return redis.call('HGET', k, 'i'), t end
  if t == 'string' then return string.format('%.0f', fingerprint(redis.call('GET', k))), t end
  if t == 'none' then return false, t end
  error('WRONGTYPE the key holds a Redis ' .. t .. ', which kvstore cannot read as a value')
end
";

/// Lua helpers of [`LOG`] and [`TRIM`]: the server's time in ms, a revision as text, and a
/// key beside the revision counter.
const LOG_HEAD: &str = r"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function rid(n) return string.format('%.0f', n) end
local function sibling(revk, name) return string.sub(revk, 1, -4) .. name end
";

/// Lua shared by the scripts that change pairs: the change log of `watch_events`.
///
/// Every change a script makes to a pair is appended, in the same script (one atomic step),
/// to a stream beside the revision counter: entry `<revision>-<n>` for the n-th change of a
/// revision, with fields `p <key> v <value>` for a put (its `last_index` is the revision) or
/// `d <key>` for a delete. The stream keeps the last [`LOG_ENTRIES`] entries and at most
/// [`LOG_BYTES`] of keys and values (see [`TRIM`]); `logmeta` holds `floor` (every change
/// after it is in the stream), `bytes`, and `epoch` (set when the log starts: a log that starts
/// again after the server lost its data has another one).
///
/// Redis drops an expired pair by itself, without a script; so every TTL write also records
/// its deadline (server time, ms) in the `ttl` sorted set, and `reap` — run by the scripts
/// that read the log — logs a delete for each pair whose deadline passed and that is gone.
/// Source: Redis docs, "Streams" — XADD with an explicit ID (`<ms>-<seq>`, strictly
/// increasing), XRANGE, XLEN; "TIME"; "PTTL" (-2: no key, -1: no expiry); "Scripting
/// with Lua" (scripts are replicated by their effects since Redis 5, so TIME may precede a
/// write).
const LOG: &str = r"
local function log_append(revk, rev, seq, member, value)
  local id = rid(rev) .. '-' .. seq
  if value then
    redis.call('XADD', sibling(revk, 'log'), id, 'p', member, 'v', value)
    return #member + #value
  end
  redis.call('XADD', sibling(revk, 'log'), id, 'd', member)
  return #member
end
local function log_close(revk, rev, last_seq, size)
  local lk, mk = sibling(revk, 'log'), sibling(revk, 'logmeta')
  local bytes = redis.call('HINCRBY', mk, 'bytes', size)
  if bytes == size then
    redis.call('HSETNX', mk, 'floor', rid(rev - 1))
    redis.call('HSETNX', mk, 'epoch', rid(now_ms()))
  end
  if bytes > LOG_BYTES or redis.call('XLEN', lk) > LOG_ENTRIES then
    trim(lk, mk, rid(rev) .. '-' .. last_seq, bytes)
  end
end
local function log_event(revk, rev, seq, member, value)
  log_close(revk, rev, seq, log_append(revk, rev, seq, member, value))
end
";

/// Lua of [`LOG`]'s trimming, run only once the log is past a bound: it drops the oldest
/// entries (never `keep`, the one just written) until the log is [`TRIM_ENTRIES`] entries and
/// [`TRIM_BYTES`] below its bounds, then records the new size and floor in one `HSET`. The
/// entries to drop are read (their sizes) in runs of at most 1,000 and dropped with one exact
/// `XTRIM MAXLEN`, which frees whole nodes of the stream (an `XDEL` only marks an entry
/// deleted). Trimming below the bounds makes this a step every few hundred writes instead of
/// five commands in every write.
/// Source: Redis docs, "XTRIM" (MAXLEN, exact without `~`), "XDEL" (marks entries deleted,
/// frees a node only once all of its entries are), "XRANGE" (`COUNT`).
const TRIM: &str = r"
local function trim(lk, mk, keep, bytes)
  local len = redis.call('XLEN', lk)
  local left, floor, from = len, nil, '-'
  local function over()
    return bytes > LOG_BYTES - TRIM_BYTES or left > LOG_ENTRIES - TRIM_ENTRIES
  end
  while over() do
    local want = math.min(1000, math.max(64, left - (LOG_ENTRIES - TRIM_ENTRIES)))
    local run = redis.call('XRANGE', lk, from, '+', 'COUNT', want)
    local seen = 0
    for _, e in ipairs(run) do
      if e[1] == keep or not over() then break end
      local f = e[2]
      bytes = bytes - #f[2]
      if f[4] then bytes = bytes - #f[4] end
      left = left - 1
      seen = seen + 1
      floor = string.match(e[1], '^(%d+)')
    end
    if seen < #run or #run < want then break end
    local last = run[#run][1]
    local ms, seq = string.match(last, '^(%d+)-(%d+)$')
    from = ms .. '-' .. string.format('%.0f', tonumber(seq) + 1)
  end
  if floor then
    redis.call('XTRIM', lk, 'MAXLEN', left)
    redis.call('HSET', mk, 'bytes', rid(bytes), 'floor', floor)
  end
end
";

/// The rest of [`LOG`], after [`TRIM`].
const LOG_REST: &str = r"
local function expires(revk, member, ttl_ms)
  redis.call('ZADD', sibling(revk, 'ttl'), now_ms() + tonumber(ttl_ms), member)
end
local function forget_expiry(revk, member)
  redis.call('ZREM', sibling(revk, 'ttl'), member)
end
local function reap(revk, idxk, prefix)
  local tk = sibling(revk, 'ttl')
  local gone = {}
  repeat
    local now = now_ms()
    local due = redis.call('ZRANGEBYSCORE', tk, '-inf', now, 'LIMIT', 0, 1000)
    for _, m in ipairs(due) do
      local left = redis.call('PTTL', prefix .. m)
      if left == -2 then
        gone[#gone + 1] = m
        redis.call('ZREM', tk, m)
        redis.call('ZREM', idxk, m)
      elseif left == -1 then
        redis.call('ZREM', tk, m)
      else
        redis.call('ZADD', tk, now + left, m)
      end
    end
  until #due < 1000
  if #gone > 0 then
    local rev = redis.call('INCR', revk)
    local size = 0
    for i, m in ipairs(gone) do size = size + log_append(revk, rev, i - 1, m, nil) end
    log_close(revk, rev, #gone - 1, size)
  end
end
local function log_state(revk)
  local mk = sibling(revk, 'logmeta')
  local rev = tonumber(redis.call('GET', revk) or '0')
  if redis.call('HSETNX', mk, 'epoch', rid(now_ms())) == 1 then
    redis.call('HSET', mk, 'floor', rid(rev))
  end
  local m = redis.call('HMGET', mk, 'floor', 'epoch')
  return rev, tonumber(m[1]), m[2]
end
";

/// Entries the change log keeps, at most.
pub(crate) const LOG_ENTRIES: u64 = 100_000;
/// Bytes of keys and values the change log keeps, at most.
pub(crate) const LOG_BYTES: u64 = 32 * 1024 * 1024;
/// Entries below [`LOG_ENTRIES`] a trim leaves the log at.
const TRIM_ENTRIES: u64 = 200;
/// Bytes below [`LOG_BYTES`] a trim leaves the log at.
const TRIM_BYTES: u64 = 512 * 1024;

fn with_current(body: &str) -> Script {
    Script::new(&format!("{CURRENT}{}{body}", log_lua()))
}

fn with_log(body: &str) -> Script {
    Script::new(&format!("{}{body}", log_lua()))
}

/// [`LOG`] with its bounds filled in.
fn log_lua() -> String {
    [LOG_HEAD, TRIM, LOG, LOG_REST]
        .concat()
        .replace("LOG_BYTES", &LOG_BYTES.to_string())
        .replace("LOG_ENTRIES", &LOG_ENTRIES.to_string())
        .replace("TRIM_BYTES", &TRIM_BYTES.to_string())
        .replace("TRIM_ENTRIES", &TRIM_ENTRIES.to_string())
}

pub(crate) const OK: i64 = 0;
pub(crate) const EXISTS: i64 = 1;
pub(crate) const NOT_FOUND: i64 = 2;
pub(crate) const MODIFIED: i64 = 3;

/// KEYS: data, rev, index. ARGV: value, ttl_ms (0 = none), mode (any|absent|index|same),
/// expected index, member. Returns {status, new index}. The write is logged (see [`LOG`]).
/// Mode `same` writes only when the key is absent or holds this value (a registration written
/// again), else MODIFIED.
///
/// Mode `any` (a plain `put`, the hot path) reads nothing first: `INCR`, then `HSET`, whose
/// answer says whether the hash is new (2 fields added: `ZADD` it to the index; an existing
/// pair needs `PERSIST` instead, unless a TTL is set). Three commands for an overwrite instead
/// of five; `HSET` on a plain string another client wrote fails with `WRONGTYPE`, and only then
/// is the type read and the string converted.
/// Source: Redis docs, "HSET" (returns the number of fields that were added).
pub(crate) static PUT: LazyLock<Script> = LazyLock::new(|| {
    with_current(
        r"
if ARGV[3] == 'any' then
  local idx = redis.call('INCR', KEYS[2])
  log_event(KEYS[2], idx, 0, ARGV[5], ARGV[1])
  local added = redis.pcall('HSET', KEYS[1], 'v', ARGV[1], 'i', idx)
  if type(added) == 'table' and added.err then
    local t = redis.call('TYPE', KEYS[1]).ok
    if t ~= 'string' then
      error('WRONGTYPE the key holds a Redis ' .. t .. ', which kvstore cannot read as a value')
    end
    redis.call('DEL', KEYS[1])
    added = redis.call('HSET', KEYS[1], 'v', ARGV[1], 'i', idx)
  end
  if tonumber(ARGV[2]) > 0 then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    expires(KEYS[2], ARGV[5], ARGV[2])
  elseif added ~= 2 then
    redis.call('PERSIST', KEYS[1])
  end
  if added ~= 0 then redis.call('ZADD', KEYS[3], 0, ARGV[5]) end
  return {0, idx}
end
local cur, t = current(KEYS[1])
if ARGV[3] == 'absent' and cur then return {1, 0} end
if ARGV[3] == 'index' then
  if not cur then return {2, 0} end
  if cur ~= ARGV[4] then return {3, 0} end
end
if ARGV[3] == 'same' and cur then
  local v
  if t == 'hash' then v = redis.call('HGET', KEYS[1], 'v') else v = redis.call('GET', KEYS[1]) end
  if v ~= ARGV[1] then return {3, 0} end
end
local idx = redis.call('INCR', KEYS[2])
log_event(KEYS[2], idx, 0, ARGV[5], ARGV[1])
-- A plain string written by another client becomes a kvstore pair.
if t == 'string' then redis.call('DEL', KEYS[1]) end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'i', idx)
if tonumber(ARGV[2]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  expires(KEYS[2], ARGV[5], ARGV[2])
else
  redis.call('PERSIST', KEYS[1])
end
-- An existing pair is already in the index: only a new one needs ZADD.
if t ~= 'hash' then redis.call('ZADD', KEYS[3], 0, ARGV[5]) end
return {0, idx}
",
    )
});

/// KEYS: data, index, rev. ARGV: mode (any|index), expected index, member. Returns a status.
/// A delete takes a revision and is logged; a pair that expired unseen is left to `reap`,
/// which logs its expiry.
pub(crate) static DELETE: LazyLock<Script> = LazyLock::new(|| {
    with_current(
        r"
local cur = current(KEYS[1])
if not cur then
  redis.call('ZREM', KEYS[2], ARGV[3])
  return 2
end
if ARGV[1] == 'index' and cur ~= ARGV[2] then return 3 end
local rev = redis.call('INCR', KEYS[3])
log_event(KEYS[3], rev, 0, ARGV[3], nil)
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[3])
forget_expiry(KEYS[3], ARGV[3])
return 0
",
    )
});

/// KEYS: index, and for a read at a revision (`list_at`, and every page of a paged `list`)
/// the revision counter. ARGV: key prefix, dir ('' = all), the index member after which to
/// start ('' = from the first), the most index members to read (0 = all of them), then names
/// of plain strings found by SCAN (only with `foreign_strings`). Returns {dir exists (0/1),
/// revision, log epoch, the last member read when the index may hold more after it else '',
/// key, value, index, key, value, index, …}: the index's members sorted, then the extra names
/// that are plain strings; index entries whose pair expired are dropped on the way. With the
/// counter, expiries are logged first (`reap`), so the listing is the state at the revision it
/// returns; without it, the revision is 0 and the epoch empty. Each member costs one command
/// (`HMGET`), not a `TYPE` before it: the type is read only from the `WRONGTYPE` error of a
/// key another client overwrote. Source: Redis docs, "Scripting with Lua" — `redis.pcall`
/// returns an error reply as a table with an `err` field instead of raising it.
pub(crate) static LIST: LazyLock<Script> = LazyLock::new(|| {
    with_current(
        r"
local out = {0, '0', '', ''}
if KEYS[2] then
  reap(KEYS[2], KEYS[1], ARGV[1])
  local rev, _, epoch = log_state(KEYS[2])
  out[2], out[3] = rid(rev), epoch
end
local lo, hi = '-', '+'
if ARGV[2] ~= '' then lo, hi = '[' .. ARGV[2] .. '/', '(' .. ARGV[2] .. '0' end
if ARGV[3] ~= '' then lo = '(' .. ARGV[3] end
local limit = tonumber(ARGV[4])
local members
if limit > 0 then
  members = redis.call('ZRANGEBYLEX', KEYS[1], lo, hi, 'LIMIT', 0, limit)
  if #members == limit then out[4] = members[limit] end
else
  members = redis.call('ZRANGEBYLEX', KEYS[1], lo, hi)
end
local seen = {}
local function push(m, v, i)
  out[#out + 1] = m
  out[#out + 1] = v
  out[#out + 1] = i
  seen[m] = true
  return true
end
-- The plain string another client SET at m, if that is what the key holds.
local function emit_string(m)
  local v = redis.pcall('GET', ARGV[1] .. m)
  return type(v) == 'string' and push(m, v, fingerprint(v))
end
-- One call per key: HMGET answers a hash (or a missing key, as two nils) and fails with
-- WRONGTYPE on anything else, which only then is read as a plain string.
local function emit(m)
  local r = redis.pcall('HMGET', ARGV[1] .. m, 'v', 'i')
  if r.err then return emit_string(m) end
  return r[2] and push(m, r[1], tonumber(r[2]))
end
for _, m in ipairs(members) do
  if not emit(m) then redis.call('ZREM', KEYS[1], m) end
end
for i = 5, #ARGV do
  if not seen[ARGV[i]] then emit_string(ARGV[i]) end
end
if ARGV[2] == '' or #out > 4 or redis.call('EXISTS', ARGV[1] .. ARGV[2]) == 1 then out[1] = 1 end
return out
",
    )
});

/// Index members one `DELETE_TREE` run removes at most, so no run blocks the server for a
/// whole large directory (100,000 keys in one run held it for 2.5 s; 1,000 take about 25 ms).
pub(crate) const TREE_CHUNK: usize = 1_000;

/// KEYS: index, rev. ARGV: key prefix, dir, the most index members to take ([`TREE_CHUNK`]),
/// then names of plain strings found by SCAN (only with `foreign_strings`). Deletes `dir`, the
/// names given and up to that many of its descendants, under one revision, each a logged
/// delete. Returns {pairs deleted, 1 when the directory may hold more descendants else 0}.
pub(crate) static DELETE_TREE: LazyLock<Script> = LazyLock::new(|| {
    with_log(
        r"
local members
local limit = tonumber(ARGV[3])
if ARGV[2] == '' then
  members = redis.call('ZRANGE', KEYS[1], 0, limit - 1)
else
  members = redis.call('ZRANGEBYLEX', KEYS[1], '[' .. ARGV[2] .. '/', '(' .. ARGV[2] .. '0',
    'LIMIT', 0, limit)
end
local more = 0
if #members == limit then more = 1 end
if ARGV[2] ~= '' then members[#members + 1] = ARGV[2] end
for i = 4, #ARGV do members[#members + 1] = ARGV[i] end
local deleted = {}
for _, m in ipairs(members) do
  if redis.call('DEL', ARGV[1] .. m) == 1 then
    deleted[#deleted + 1] = m
    forget_expiry(KEYS[2], m)
  end
  redis.call('ZREM', KEYS[1], m)
end
if #deleted > 0 then
  local rev = redis.call('INCR', KEYS[2])
  local size = 0
  for i, m in ipairs(deleted) do size = size + log_append(KEYS[2], rev, i - 1, m, nil) end
  log_close(KEYS[2], rev, #deleted - 1, size)
end
return {#deleted, more}
",
    )
});

/// KEYS: data, rev. ARGV: expected index, ttl_ms, member. Extends a kept-alive key if it is
/// still the write we made (and its deadline in the log's `ttl` set). Returns 1 when renewed,
/// 0 when the key changed or vanished.
pub(crate) static RENEW_KEY: LazyLock<Script> = LazyLock::new(|| {
    with_log(
        r"
if redis.call('TYPE', KEYS[1]).ok == 'hash' and redis.call('HGET', KEYS[1], 'i') == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  expires(KEYS[2], ARGV[3], ARGV[2])
  return 1
end
return 0
",
    )
});

/// KEYS: lock, rev, data, index. ARGV: owner, ttl_ms, value mode (0: none, 1: a value that
/// stays, 2: a value that lives as long as the hold, with the lock's PX), value, member.
/// Returns {1, token} when taken, {0, remaining ms} when held by someone else. A value written
/// is logged.
pub(crate) static LOCK_ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    with_log(
        r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0, redis.call('PTTL', KEYS[1])}
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. token, 'PX', ARGV[2])
if ARGV[3] ~= '0' then
  log_event(KEYS[2], token, 0, ARGV[5], ARGV[4])
  if redis.call('TYPE', KEYS[3]).ok ~= 'hash' then redis.call('DEL', KEYS[3]) end
  redis.call('HSET', KEYS[3], 'v', ARGV[4], 'i', token)
  if ARGV[3] == '2' then
    redis.call('PEXPIRE', KEYS[3], ARGV[2])
    expires(KEYS[2], ARGV[5], ARGV[2])
  else
    redis.call('PERSIST', KEYS[3])
  end
  redis.call('ZADD', KEYS[4], 0, ARGV[5])
end
return {1, token}
",
    )
});

/// KEYS: lock, data, rev. ARGV: holder (`owner:token`), ttl_ms, token of a value that lives
/// as long as the hold (or ''), member: that value is extended with the lock while it is
/// still the one the lock wrote. Returns 1 when renewed, 0 when lost.
pub(crate) static LOCK_RENEW: LazyLock<Script> = LazyLock::new(|| {
    with_log(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  if ARGV[3] ~= '' and redis.call('TYPE', KEYS[2]).ok == 'hash' and redis.call('HGET', KEYS[2], 'i') == ARGV[3] then
    redis.call('PEXPIRE', KEYS[2], ARGV[2])
    expires(KEYS[3], ARGV[4], ARGV[2])
  end
  return 1
end
return 0
",
    )
});

/// KEYS: lock, data, index, rev. ARGV: holder (`owner:token`, or `owner:` to match any token
/// of this owner), delete value (0/1), member. Returns 1 when released. A value deleted takes
/// a revision and is logged.
pub(crate) static LOCK_RELEASE: LazyLock<Script> = LazyLock::new(|| {
    with_log(
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
  if redis.call('DEL', KEYS[2]) == 1 then
    local rev = redis.call('INCR', KEYS[4])
    log_event(KEYS[4], rev, 0, ARGV[3], nil)
    forget_expiry(KEYS[4], ARGV[3])
  end
  redis.call('ZREM', KEYS[3], ARGV[3])
end
return 1
",
    )
});

/// KEYS: data. Reads a pair of any type kvstore can read (a plain string written by another
/// client, too). Returns {value, index}, or nil when absent.
pub(crate) static READ: LazyLock<Script> = LazyLock::new(|| {
    with_current(
        r"
local cur, t = current(KEYS[1])
if not cur then return nil end
if t == 'hash' then return {redis.call('HGET', KEYS[1], 'v'), tonumber(cur)} end
return {redis.call('GET', KEYS[1]), tonumber(cur)}
",
    )
});

/// `Store::txn` in one script. KEYS: rev, index, one key per check (the data key, or the lock
/// key for `held`), one data key per write. ARGV: number of checks, number of writes, then per
/// check its kind (`index`, `exists`, `missing`, `held`) and argument (expected index, or the
/// fencing token), then per write its kind (`put`, `delete`), value and member. Every check
/// runs, and every written key's type is checked, before the first write (Redis does not roll
/// back a script). Returns {0, new index} when applied, else {failing check (1-based), status}
/// with EXISTS, NOT_FOUND, MODIFIED or NOT_HELD.
pub(crate) static TXN: LazyLock<Script> = LazyLock::new(|| {
    with_current(
        r"
local nc, nw = tonumber(ARGV[1]), tonumber(ARGV[2])
local a = 3
for i = 1, nc do
  local kind, arg, k = ARGV[a], ARGV[a + 1], KEYS[2 + i]
  a = a + 2
  if kind == 'held' then
    -- The lock key holds '<owner>:<token>' while held (and expires with its PX).
    local holder = redis.call('GET', k)
    local suffix = ':' .. arg
    if not holder or string.sub(holder, -#suffix) ~= suffix then return {i, 4} end
  else
    local cur = current(k)
    if kind == 'missing' then
      if cur then return {i, 1} end
    else
      if not cur then return {i, 2} end
      if kind == 'index' and cur ~= arg then return {i, 3} end
    end
  end
end
-- Each put's key type, read before anything is written: a type kvstore cannot read fails
-- the whole transaction here, with nothing changed.
local types, w = {}, a
for j = 1, nw do
  if ARGV[w] == 'put' then
    local k = KEYS[2 + nc + j]
    local t = redis.call('TYPE', k).ok
    if t ~= 'hash' and t ~= 'string' and t ~= 'none' then
      error('WRONGTYPE the key holds a Redis ' .. t .. ', which kvstore cannot read as a value')
    end
    types[j] = t
  end
  w = w + 3
end
local idx = redis.call('INCR', KEYS[1])
local seq, size = 0, 0
for j = 1, nw do
  local kind, value, member, k = ARGV[a], ARGV[a + 1], ARGV[a + 2], KEYS[2 + nc + j]
  a = a + 3
  if kind == 'put' then
    size = size + log_append(KEYS[1], idx, seq, member, value)
    seq = seq + 1
    -- Another client's string becomes a hash. (A key is in at most one operation.)
    if types[j] == 'string' then redis.call('DEL', k) end
    if redis.call('HSET', k, 'v', value, 'i', idx) == 2 then
      redis.call('ZADD', KEYS[2], 0, member)
    else
      redis.call('PERSIST', k)
    end
  elseif redis.call('DEL', k) == 1 then
    size = size + log_append(KEYS[1], idx, seq, member, nil)
    seq = seq + 1
    redis.call('ZREM', KEYS[2], member)
    forget_expiry(KEYS[1], member)
  else
    redis.call('ZREM', KEYS[2], member)
  end
end
if seq > 0 then log_close(KEYS[1], idx, seq - 1, size) end
return {0, idx}
",
    )
});

/// `watch_events`' read of the log. KEYS: rev, index. ARGV: key prefix, dir ('' = all),
/// revision after which to read. Logs expiries first (`reap`), then returns {status,
/// revision, epoch, then per event under dir: its revision, `p` or `d`, key, value}: status
/// [`OK`] with every change after the revision; [`LOG_MOVED_ON`] when the log no longer holds
/// them all (the revision is below its floor); [`LOG_BEHIND`] when the store has not reached
/// the revision (it lost its data).
pub(crate) static EVENTS: LazyLock<Script> = LazyLock::new(|| {
    with_log(
        r"
reap(KEYS[1], KEYS[2], ARGV[1])
local rev, floor, epoch = log_state(KEYS[1])
local after = tonumber(ARGV[3])
local out = {0, rid(rev), epoch}
if after > rev then out[1] = 2 return out end
if after < floor then out[1] = 1 return out end
local want = ''
if ARGV[2] ~= '' then want = ARGV[2] .. '/' end
for _, e in ipairs(redis.call('XRANGE', sibling(KEYS[1], 'log'), rid(after + 1) .. '-0', '+')) do
  local f = e[2]
  if string.sub(f[2], 1, #want) == want then
    out[#out + 1] = string.match(e[1], '^(%d+)')
    out[#out + 1] = f[1]
    out[#out + 1] = f[2]
    out[#out + 1] = f[4] or ''
  end
end
return out
",
    )
});

/// [`EVENTS`]: the log no longer holds every change after the revision asked for.
pub(crate) const LOG_MOVED_ON: i64 = 1;
/// [`EVENTS`]: the store has not reached the revision asked for.
pub(crate) const LOG_BEHIND: i64 = 2;

/// `Store::increment`. KEYS: data, rev, index. ARGV: delta, member. Adds delta to the decimal
/// value with `HINCRBY` (exact 64-bit arithmetic; Lua's numbers are doubles, so the sum never
/// passes through them), gives the pair a new revision and logs it. Returns {0, new value as
/// text, index}, or {NOT_NATIVE} — nothing written — for a plain string another client wrote,
/// a value not in canonical decimal form, or an overflow: the caller then uses
/// compare-and-swap. Source: Redis docs, "HINCRBY" (64-bit signed integers; an error on a
/// value that is not an integer or on overflow).
pub(crate) static INCREMENT: LazyLock<Script> = LazyLock::new(|| {
    with_current(
        r"
local cur, t = current(KEYS[1])
if t == 'string' then return {5} end
if cur then
  local v = redis.call('HGET', KEYS[1], 'v')
  if not string.match(v, '^%-?[1-9]%d*$') and v ~= '0' then return {5} end
end
local sum = redis.pcall('HINCRBY', KEYS[1], 'v', ARGV[1])
if type(sum) == 'table' and sum.err then return {5} end
local idx = redis.call('INCR', KEYS[2])
local text = redis.call('HGET', KEYS[1], 'v')
log_event(KEYS[2], idx, 0, ARGV[2], text)
redis.call('HSET', KEYS[1], 'i', idx)
if cur then
  redis.call('PERSIST', KEYS[1])
else
  redis.call('ZADD', KEYS[3], 0, ARGV[2])
end
return {0, text, idx}
",
    )
});

/// [`INCREMENT`]: not done here; nothing was written.
pub(crate) const NOT_NATIVE: i64 = 5;

/// A `held` check that failed in [`TXN`].
pub(crate) const NOT_HELD: i64 = 4;

/// Loads every script into the server's script cache (`SCRIPT LOAD`, all at once on the
/// multiplexed connection: one round trip), so that no later call pays the two extra round
/// trips of the redis crate's `NOSCRIPT` fallback (EVALSHA refused, `SCRIPT LOAD`, EVALSHA
/// again). A lease renewal must not: behind 200 ms of latency each way, a first renewal that
/// fell back took 1.2 s and ran past a 2 s lock's loss deadline. A server that restarts or a
/// new primary after a failover starts with an empty cache, where the fallback still works.
/// Source: Redis docs, "Scripting with Lua" — "Script cache" (the cache is not persisted or
/// replicated).
pub(crate) async fn load_all<C: ConnectionLike + Clone + Send>(conn: &C) -> redis::RedisResult<()> {
    let scripts: [&Script; 12] = [
        &EVENTS,
        &INCREMENT,
        &PUT,
        &DELETE,
        &LIST,
        &DELETE_TREE,
        &RENEW_KEY,
        &LOCK_ACQUIRE,
        &LOCK_RENEW,
        &LOCK_RELEASE,
        &READ,
        &TXN,
    ];
    futures::future::try_join_all(scripts.into_iter().map(|script| {
        let mut conn = conn.clone();
        async move { script.load_async(&mut conn).await }
    }))
    .await
    .map(drop)
}
