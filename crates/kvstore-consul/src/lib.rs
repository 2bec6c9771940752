//! kvstore backend on [Consul](https://www.consul.io)'s HTTP API (tested against Consul 1.21).
//!
//! # Watch events
//!
//! Consul keeps no history a client can read. `watch_events` follows the directory's prefix
//! with the shared blocking query of `watch_tree` and diffs each answer against the listing
//! of the last revision by `ModifyIndex`: a new or changed index is a `Put`, a key gone is a
//! `Delete` at the answer's `X-Consul-Index`. Revisions are `X-Consul-Index` values; a resume
//! with `since` starts with a `Snapshot`. An index that goes backwards (an agent that lost or
//! restored its data) ends the stream with an error, since later revisions would not compare.
//! Every change costs a full listing of the prefix on the server and the wire.
//!
//! # Mapping
//!
//! - A key is the Consul key `<prefix><key>` holding the raw value (`consul kv get <key>`
//!   shows it byte for byte); `last_index` is its `ModifyIndex`. Keys are percent-encoded
//!   segment by segment in URLs.
//! - Every single-key write is one request to `/v1/txn`, which returns the new
//!   `ModifyIndex` (a plain `PUT /v1/kv` returns only `true`): `put` is `delete` + `set` (the
//!   delete detaches the session of an earlier TTL write); create-only `atomic_put` starts with
//!   `check-not-exists`; CAS starts with `get` + `check-index`, so the failing operation's index
//!   tells `KeyNotFound` from `KeyModified` in the same round trip; `delete` is `get` +
//!   `delete`, `atomic_delete` `get` + `delete-cas`. Reads are one `GET /v1/kv`, with
//!   `?consistent` (default) or `?stale` from [`ReadOptions`](kvstore_core::ReadOptions).
//! - `list(dir)` is one `GET /v1/kv/<dir>/?recurse` (plus a read of `dir` itself when it has
//!   no descendants); `delete_tree` reads, then deletes in one transaction.
//! - TTL: a session with that TTL (whole seconds, rounded up) and `Behavior=delete` holds the
//!   key (the `lock` verb): when the session is invalidated, Consul deletes the key. Consul
//!   invalidates a session between its TTL and twice its TTL after the last renewal, so a key
//!   disappears between TTL and 2×TTL (plus a moment). A `keep_alive` registration's session
//!   has half the TTL instead (whole seconds, at least 1 s and at least `session_ttl_min`),
//!   renewed every quarter TTL until the store is closed (see below): a dead or cut-off
//!   owner's registration is gone within the TTL (measured: 1.99 s for a 2 s TTL; 4.0 s with
//!   a whole-TTL session), unless `session_ttl_min` is above half the TTL. The agent needs `session_ttl_min` at or below
//!   the shortest TTL used (default 10 s; kvstore's CI sets 1 s). A TTL write is two requests
//!   (session, then transaction).
//! - Watches are blocking queries; see [`watch`](crate#watches).
//! - Locks: one Consul session per lock, with `Behavior=delete`. The key a holder acquires is `.kvstore-locks/<key>` under the
//!   prefix, so deleting the lock's key or a directory above it never ends the hold.
//!
//! Lock holds and `keep_alive` registrations follow the loss rule of
//! [`kvstore_core::backend`]: renewed every quarter TTL, lost at four fifths of the TTL after
//! the send of the last successful renewal whether or not the server said so, and a lost
//! registration is written again as soon as the server answers (unless another client wrote a
//! different value meanwhile).
//!
//! # Transactions
//!
//! `Store::txn` is one `PUT /v1/txn`: `IndexIs` is `get` then `check-index`, `Exists` is
//! `get`, `Missing` is `check-not-exists`, `Held` is `check-index` of the lock's hidden key
//! `.kvstore-locks/<key>` against the fencing token (the acquisition's index: renewals do not
//! change it, and the key goes with the session); a put is `delete` then `set`, a delete
//! `delete`. A rolled-back transaction (409) names the failing operation, hence the condition.
//! Up to 64 conditions plus operations (at most 128 Consul operations, the limit since 1.14).
#![cfg_attr(docsrs, feature(doc_cfg))]

//! # Leader election
//!
//! `kvstore_core::Candidate` runs on this store's lock: one session (no lock delay,
//! `Behavior=delete`) acquires the hidden lock key and the value key in one transaction, so a
//! clean resign hands over at once — no 15 s lock delay, as Consul's own `consul lock` has by
//! default — and an invalidated session takes the leader's value with it. The term is the
//! transaction's index.

//! # Watches
//!
//! A watch reads the state, then repeats the read as a blocking query with
//! `?index=<X-Consul-Index>` and emits the state when it changed. The query is part of the
//! stream's future: dropping the stream drops the request at once. Errors are retried with
//! backoff by re-reading from scratch, for up to `watch_reconnect_timeout`.
//!
//! # Examples
//!
//! ```no_run
//! use kvstore_core::Store;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> kvstore_core::Result<()> {
//! let config = "consul://127.0.0.1:8500?prefix=app1".parse::<kvstore_consul::ConsulConfig>()?;
//! let store = kvstore_consul::ConsulStore::open(config).await?;
//! store.put("services/web", b"10.0.0.1:80", None).await?;
//! # Ok(())
//! # }
//! ```

mod api;
mod client;
mod config;
mod error;
mod hub;
mod lock;
mod store;
mod txn;
mod watch;

pub use config::{
    ConsulConfig, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_REQUESTS, DEFAULT_MAX_VALUE_SIZE,
    DEFAULT_MAX_WATCH_QUERIES, DEFAULT_REQUEST_TIMEOUT, DEFAULT_WATCH_RECONNECT_TIMEOUT,
    DEFAULT_WATCH_WAIT,
};
pub use store::{Consul, ConsulStore};

/// URL scheme: `consul://host:port`.
pub const SCHEME: &str = "consul";
/// `Store::backend()` of a Consul store.
pub const BACKEND: &str = "consul";
