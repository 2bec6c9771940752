//! kvstore backend on an embedded [redb](https://docs.rs/redb) file, and the in-memory store.
//!
//! [`RedbStore`] implements every call of [`kvstore_core::Store`] with the semantics every
//! kvstore backend shares. It needs no server: the file is owned by one process, and watches
//! and locks are coordinated inside it. redb is synchronous: point reads (`get`, `exists`, a key
//! watch's read), which redb's cache serves in microseconds, run in place; writes go to one
//! committer thread per database (group commit); every other transaction (`list`, `txn`, lock
//! and lease calls, expiry) runs on four threads of the database's own, so a burst of calls (a
//! hundred `keep_alive` renewals falling due together) waits its turn instead of growing
//! tokio's blocking pool by a thread per call.
//!
//! # Layout in the file
//!
//! | table | key | value |
//! | --- | --- | --- |
//! | `kvstore_kv` | normalized key | (last_index, TTL deadline in Unix ms or 0, value bytes) |
//! | `kvstore_expiry` | (TTL deadline, key) | () |
//! | `kvstore_locks` | normalized key | (fencing token, deadline in Unix ms, owner id) |
//! | `kvstore_meta` | `"revision"`, `"log_floor"`, `"log_bytes"` | last revision handed out; the revision after which every change is in the log; the log's size |
//! | `kvstore_log` | (revision, sequence) | (put or delete, key, last_index, value) |
//!
//! A lock is its row in `kvstore_locks`: its fencing token is the store revision when it was
//! taken, its deadline is pushed forward by each renewal, and waiters are woken by the
//! in-process change feed when the holder releases or its deadline passes.
//!
//! # Transactions
//!
//! `Store::txn` is one redb write transaction: every condition is read in it (`Held`: the lock
//! row names the token and its deadline has not passed), then every operation is applied under
//! one new revision and committed durably; a failed condition aborts it. Up to 1024 conditions
//! plus operations.
#![cfg_attr(docsrs, feature(doc_cfg))]

//! # Watch events
//!
//! Every write transaction takes store revisions (a delete, an expiry and a `delete_tree` take
//! one too) and appends its per-key events to `kvstore_log` in the same transaction, so
//! `watch_events` reads exactly what changed after a revision. The log keeps the last 100,000
//! revisions and at most 64 MiB of keys and values; a resume from a revision it no longer
//! holds (or one from before the log existed, on a file written by an older version) starts
//! with a `Snapshot`. `list_at` reads the pairs and the revision in one read transaction.

//! # Leader election
//!
//! `kvstore_core::Candidate` runs on this store's lock: the leader's value is written with the
//! lock's deadline, pushed forward by each renewal, so the reaper deletes it once the hold is
//! lost; a resign or drop deletes it at once. The term is the value's revision.

//! # Examples
//!
//! ```
//! use kvstore_core::Store;
//! use kvstore_redb::{RedbConfig, RedbStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> kvstore_core::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let store = RedbStore::open(RedbConfig::file(dir.path().join("app.redb"))).await?;
//! let first = store.put("services/web", b"10.0.0.1:80", None).await?;
//! store.atomic_put("services/web", b"10.0.0.2:80", Some(&first), None).await?;
//! assert_eq!(store.list("services", None).await?.len(), 1);
//! store.close().await?;
//! # Ok(())
//! # }
//! ```

mod client;
mod commit;
mod config;
mod error;
mod keep_alive;
mod lock;
mod log;
mod pool;
mod store;
mod txn;
mod watch;

pub use config::{
    DEFAULT_CACHE_SIZE, DEFAULT_MAX_VALUE_SIZE, DEFAULT_OPEN_TIMEOUT, Location, RedbConfig,
};
pub use store::{Redb, RedbStore};

/// URL scheme of the file store: `redb:///abs/path.redb` or `redb:rel/path.redb`.
pub const SCHEME: &str = "redb";
/// URL scheme of the in-memory store: `memory://`.
pub const MEMORY_SCHEME: &str = "memory";
/// `Store::backend()` of a file store.
pub const BACKEND: &str = "redb";
/// `Store::backend()` of an in-memory store.
pub const MEMORY_BACKEND: &str = "memory";
