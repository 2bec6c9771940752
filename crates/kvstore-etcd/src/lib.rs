//! kvstore backend on [etcd](https://etcd.io) v3 (tested against etcd 3.4).
//!
//! # Watch events
//!
//! `watch_events` uses etcd's revisions: the `Snapshot` and `list_at` are one range read at a
//! revision, and the events come from a watch of the directory's range from the revision after
//! the consumer's (one response holds whole revisions, so a transaction is one item). A resume
//! from a revision etcd has compacted away starts with a `Snapshot` (source: etcd docs, "Watch
//! API" — a watch on a compacted revision is cancelled with `compact_revision` set).
//!
//! # Building
//!
//! The etcd client (`etcd-client`) compiles etcd's protobuf files in its build script, which
//! runs `protoc`: from `$PROTOC`, else from `PATH`. Install Debian's `protobuf-compiler
//! libprotobuf-dev` (or your system's protoc), or, with no system package and no root, use the
//! binary that the `protoc-bin-vendored` crate ships:
//!
//! ```sh
//! cargo install --locked protoc-bin-vendored && export PROTOC=$(protoc-bin-which)
//! ```
//!
//! # Mapping
//!
//! - A key is the etcd key `<prefix><key>` holding the raw value (`etcdctl get <key>` shows it
//!   byte for byte); `last_index` is its `mod_revision`.
//! - `atomic_put`/`atomic_delete` are one transaction comparing `mod_revision` (create-only:
//!   `create_revision == 0`), with a read in the else branch to tell `KeyNotFound` from
//!   `KeyModified` in the same round trip. `list` reads the range `dir/`..`dir0` (so `a` never
//!   touches `ab`), and `dir` itself, at the same revision, only when that range is empty;
//!   `delete_tree` is one transaction over the range plus `dir`.
//! - TTL: a lease of the TTL rounded up to whole seconds (one extra round trip to grant it);
//!   etcd checks lease expiry about every 500 ms, so a key disappears within TTL + 1 s.
//!   `keep_alive` keeps the lease alive until the store is closed.
//! - Lock holds and `keep_alive` registrations follow the loss rule of
//!   [`kvstore_core::backend`]: renewed every quarter TTL, lost at four fifths of the TTL after
//!   the send of the last successful renewal whether or not the server said so, and a lost
//!   registration is written again as soon as the server answers (unless another client wrote a
//!   different value meanwhile).
//! - Every watch (and lock wait) of a store rides one gRPC watch stream, each with its own
//!   watch ID; dropping a watch cancels it on the server.
//! - Watches read at revision R and watch from R + 1, resume from the last seen revision after a
//!   disconnect, and re-read if that revision was compacted; see [`watch`](crate#behavior-on-reconnects).
//! - Locks use a lease plus revision-ordered waiter keys under `<prefix>\x01kvstore/lock/`, a
//!   name no valid key can have, so they never show in `list` or `watch_tree`.
//!
//! # Transactions
//!
//! `Store::txn` is one etcd `Txn` (one request): `IndexIs` compares the key's `mod_revision`,
//! `Exists`/`Missing` its `create_revision` against 0, `Held` the `mod_revision` of the lock's
//! hidden holder key `<prefix>\x01kvstore/held/<key>` (written with the lock's lease by the
//! transaction that takes the lock, so its revision is the fencing token and it goes with the
//! lease). The failure branch reads the compared keys, so the first failing condition is named
//! from the same revision. Up to 128 conditions plus operations (etcd's default
//! `--max-txn-ops`); every write of a transaction gets the transaction's revision.
#![cfg_attr(docsrs, feature(doc_cfg))]

//! # Leader election
//!
//! `kvstore_core::Candidate` runs on this store's lock (the value put with the lock's lease,
//! so it lives exactly as long as the hold; the term is the value's revision). etcd's own
//! `Election` service uses the same layout, but its `Campaign` does not return when the
//! candidate's lease expires while it waits (etcd-io/etcd#19597); kvstore's campaign queues
//! again on a new lease instead, and both report the same leader value to followers.

//! # Behavior on reconnects
//!
//! Calls fail with `NotReachable` or `Timeout` while no member answers; the client reconnects
//! by itself. Watches resume (see above) for up to `watch_reconnect_timeout`. A lock whose lease
//! cannot be renewed within four fifths of its TTL is lost (its `LockLost` fires) without
//! waiting for etcd to expire it.
//!
//! # Examples
//!
//! ```no_run
//! use kvstore_core::Store;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> kvstore_core::Result<()> {
//! let config = "etcd://127.0.0.1:2379?prefix=app1".parse::<kvstore_etcd::EtcdConfig>()?;
//! let store = kvstore_etcd::EtcdStore::open(config).await?;
//! store.put("services/web", b"10.0.0.1:80", None).await?;
//! # Ok(())
//! # }
//! ```

mod client;
mod config;
mod error;
mod lock;
mod mux;
mod store;
mod txn;
mod watch;

pub use config::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_VALUE_SIZE, DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_WATCH_RECONNECT_TIMEOUT, EtcdConfig,
};
pub use store::{Etcd, EtcdStore};

/// URL scheme: `etcd://host1:port1,host2:port2`.
pub const SCHEME: &str = "etcd";
/// `Store::backend()` of an etcd store.
pub const BACKEND: &str = "etcd";
