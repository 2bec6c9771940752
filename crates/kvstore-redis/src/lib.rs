//! kvstore backend on [Redis](https://redis.io) (5 or later; tested against Redis 7).
//!
//! # Data layout
//!
//! Every key lives under an optional prefix directory (`prefix=app1` → `app1/<key>`):
//!
//! | Redis key | type | holds |
//! | --- | --- | --- |
//! | `<prefix><key>` | hash | `v`: the value, byte for byte (`redis-cli HGET <key> v`); `i`: `last_index` |
//! | `<prefix>\x01kvstore/rev` | string | the revision counter every write increments |
//! | `<prefix>\x01kvstore/index` | sorted set | every key (score 0, sorted bytewise), for `list`/`delete_tree` |
//! | `<prefix>\x01kvstore/lock/<key>` | string | `<owner>:<fencing token>` while a lock is held, with a PX TTL |
//! | `<prefix>\x01kvstore/log` | stream | the change log of `watch_events`: entry `<revision>-<n>`, fields `p <key> v <value>` (a put) or `d <key>` (a delete) |
//! | `<prefix>\x01kvstore/logmeta` | hash | the log's `floor` (every change after it is logged), `bytes` and `epoch` |
//! | `<prefix>\x01kvstore/ttl` | sorted set | every key written with a TTL, scored by its deadline (server time, ms), so its expiry is logged |
//!
//! `\x01` cannot occur in a valid key, so bookkeeping never collides with data and never shows
//! in `list` or `watch_tree`.
//!
//! # Large directories
//!
//! A Lua script runs alone on the server, so none reads or deletes a whole large directory:
//!
//! - `list` (and `watch_tree`'s and `list_at`'s reads) of more than 1,000 keys reads pages of
//!   1,000 index members, each at the revision its run saw, then the change log's events under
//!   the directory since the first page, and applies to each page the events after its
//!   revision. The log holds every change with its new value, so the result is exactly the
//!   directory at the revision of that last read: one state, as a single run would give. If
//!   the log no longer reaches back to the first page (more than 100,000 changes meanwhile),
//!   the read starts again; after three tries it is one run. A 100,000-key `list` took one
//!   0.62 s run before; its pages take at most about 6 ms each.
//! - `delete_tree` deletes at most 1,000 descendants per run, each run under its own revision,
//!   so a watcher may see a large directory emptied in steps (as on ZooKeeper).
//!
//! # Plain strings written by other clients
//!
//! valkeyrie, Traefik and `redis-cli SET` store a value as a plain string at the key's name.
//! kvstore reads those too: the value is the string, and `last_index` is a fingerprint of it
//! (1 + the first 52 bits of its SHA-1: non-zero, changes whenever the value changes, but not
//! ordered like kvstore's own indexes, and unchanged by a `SET` of the same value).
//!
//! - `get`, `exists`, `delete`, `watch`, `atomic_put` and `atomic_delete` handle them always
//!   (`get` costs one more round trip on such a key: `HMGET` answers `WRONGTYPE`, then a script
//!   reads the string).
//! - `list`, `watch_tree` and `delete_tree` find them only with
//!   [`RedisConfig::foreign_strings`] (`?foreign_strings=true`), which adds one `SCAN … TYPE
//!   string` pass over the database per call. A pair of kvstore's that another client
//!   overwrote with `SET` is listed either way.
//! - A kvstore write to such a key converts it to kvstore's layout (a hash), which clients that
//!   expect a plain string cannot read with `GET`.
//! - A key of another Redis type (list, set, …) fails with a `Backend` error naming the type.
//!
//! # Calls
//!
//! - Every mutating call is one Lua script (EVALSHA): one atomic server-side step, one round
//!   trip. `get` is one `HMGET` (two round trips on a plain string, see below), `exists` one
//!   `EXISTS`.
//! - `last_index` is the revision counter value of the write: non-zero, store-wide monotonic.
//! - TTLs are in milliseconds (`PEXPIRE`). Redis removes an expired key when it is next touched
//!   or by its active expiry cycle (10 times a second by default), so a watcher sees the expiry
//!   within about 100 ms of the deadline; reads never return an expired key.
//! - `watch`/`watch_tree` use keyspace notifications, which must be enabled on the server
//!   (`notify-keyspace-events KA`, or at least `Kghx$`); otherwise they fail with
//!   `InvalidConfig` saying how to enable them. See [`watch`](crate#behavior-on-reconnects).
//! - `watch_events` and `list_at` read a change log that every mutating script appends to in
//!   the same atomic step as the data (a stream, see the layout above), so a resume with
//!   `since` gives exactly the missed changes while the log holds them: the last 100,000
//!   events and at most 32 MiB of keys and values (a value is then held twice: in its pair and
//!   in the log). A resume from before that — or from a revision of a log that started again
//!   after the server lost its data — starts with a `Snapshot`; a stream whose server lost its
//!   data (restarted without persistence, flushed) ends with a `Backend` error. Redis drops an
//!   expired pair by itself, without a script: the reads of the log (`watch_events`' and
//!   `list_at`'s) first log a delete, under a new revision, for every key whose TTL deadline
//!   passed, so `list_at` is always the state at the revision it returns. A watcher wakes on
//!   the directory's keyspace notifications (so it needs them, like `watch_tree`), and each
//!   read fetches only the log entries after its revision. Writes by other clients that
//!   bypass kvstore's scripts (`redis-cli SET`, valkeyrie) are not in the log.
//!   Source: Redis docs, "Streams" (XADD with explicit IDs, XRANGE) and "EXPIRE" (how keys
//!   expire).
//! - `Store::increment` (what `kvstore_core::Counter` uses) is one script: `HINCRBY` on the
//!   pair's value (exact 64-bit arithmetic), a new revision, a logged event. A plain string
//!   another client wrote, a value not in canonical decimal form, or an overflow is left
//!   alone (`None`), and `Counter` falls back to compare-and-swap.
//! - Locks: `SET PX` with an owner id and a token from the revision counter; a waiter subscribes
//!   to the lock key's `del`/`expired` notifications only once it finds the lock held, so an
//!   uncontended lock + unlock is two requests.
//! - `Store::txn` is one Lua script (one round trip): every condition and the type of every
//!   key it writes are checked before the first write (Redis does not roll back a script);
//!   `Held` compares the lock key's `<owner>:<token>` with the token. Up to 1024 conditions
//!   plus operations; every write gets one new revision.
//! - Leader election (`kvstore_core::Candidate`) runs on the lock: the leader's value gets
//!   the lock key's `PX` and each renewal extends both, so a dead leader's value expires with
//!   its lock; the term is the value's `last_index` (the revision counter).
//!
//! Lock holds and `keep_alive` registrations follow the loss rule of
//! [`kvstore_core::backend`]: renewed every quarter TTL, lost at four fifths of the TTL after
//! the send of the last successful renewal whether or not the server said so, and a lost
//! registration is written again as soon as the server answers (unless another client wrote a
//! different value meanwhile).
//!
//! # Behavior on reconnects
//!
//! - Calls go through one multiplexed connection that reconnects by itself; a call made while
//!   the server is down fails with `NotReachable` (or `Timeout`). With Sentinel, the
//!   connection moves to the new primary after a failover (see below).
//! - Each watch owns a pub/sub connection and re-subscribes with backoff after losing it, then
//!   re-reads and emits the current state if it changed (up to
//!   [`RedisConfig::watch_reconnect_timeout`], then it yields the error and ends).
//! - A lock holder that cannot renew within four fifths of the TTL considers the lock lost.
//!
//! # Redis Sentinel and failover
//!
//! `redis+sentinel://[user:password@]s1:26379,s2:26379,s3:26379/SERVICE[/db]` (or
//! [`RedisConfig::sentinel`]) asks the Sentinels for the primary they monitor as `SERVICE`,
//! checks with `ROLE` that it is one, and connects to it (through the redis crate's Sentinel
//! client). The store then asks again every second, and at once when a call fails the way
//! calls fail during a failover (a lost connection, `READONLY` from a demoted primary,
//! `MASTERDOWN`, `LOADING`); when the Sentinels name another server, every later call, watch
//! and lock goes there, and watches subscribe again on it (re-reading the key, so no state is
//! lost). Calls made meanwhile fail with `NotReachable`, a transient error.
//!
//! Redis replicates asynchronously: a write the primary acknowledged may not have reached the
//! replica that Sentinel promotes, and is then lost. [`RedisConfig::wait_replicas`]
//! (`?wait_replicas=1`) closes that gap for kvstore's writes: each write is followed by `WAIT`
//! in the same round trip and succeeds only once that many replicas confirmed it (otherwise
//! it fails with `Timeout` after `wait_timeout`: applied on the primary, outcome unknown). The
//! price is availability: while no replica is connected — after a failover, until the old
//! primary is back as a replica — writes fail. The project's failover check kills the primary
//! of a Sentinel-managed pair twice under load with `wait_replicas=1` and finds no
//! acknowledged write lost.
//!
//! The URL's user and password are the Redis servers' ACL login (the primary's and, after a
//! failover, the promoted replica's); the Sentinels are asked without one. A refused login is
//! `PermissionDenied` at connect, as on a single server (tested against servers whose default
//! user is off). Sentinels that demand a login of their own take it as query options:
//! `?sentinel_user=NAME&sentinel_password=SECRET` (the password is hidden in every error and
//! `Debug`). A refused Sentinel login is `PermissionDenied` too. Sentinel with TLS is not
//! supported yet (refused with `InvalidConfig`).
//!
//! Redis Cluster is not supported (scripts touch several keys of a store, some found through the
//! index, and a cluster allows that only within one hash slot; a hash tag on the prefix would
//! put every key of a store on one node and gain nothing from the cluster): `connect` refuses a
//! server in Cluster mode with `InvalidConfig`.
//!
//! # Examples
//!
//! ```no_run
//! use kvstore_core::Store;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> kvstore_core::Result<()> {
//! let config = "redis://127.0.0.1:6379/0?prefix=app1".parse::<kvstore_redis::RedisConfig>()?;
//! let store = kvstore_redis::RedisStore::open(config).await?;
//! store.put("services/web", b"10.0.0.1:80", None).await?;
//! # Ok(())
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

mod client;
mod config;
mod error;
mod lock;
mod primary;
mod pubsub;
mod scripts;
mod store;
mod txn;
mod watch;

pub use config::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_VALUE_SIZE, DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_SENTINEL_PORT, DEFAULT_WAIT_TIMEOUT, DEFAULT_WATCH_RECONNECT_TIMEOUT, RedisConfig,
    SentinelConfig,
};
pub use store::{Redis, RedisStore};

/// URL schemes: `redis://`, `rediss://` (TLS) and `redis+sentinel://` (a primary found
/// through Redis Sentinel).
pub const SCHEMES: [&str; 3] = ["redis", "rediss", "redis+sentinel"];
/// `Store::backend()` of a Redis store.
pub const BACKEND: &str = "redis";
