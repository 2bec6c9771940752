//! The [`Store`] trait: one async API over every key/value backend.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::{
    Capabilities, EventStream, KvPair, LockOptions, Locker, ReadOptions, Result, Txn, WatchOptions,
    WriteOptions,
};

/// The stream returned by [`Store::watch`]: the key's current state first, then one item per
/// change (`Some(pair)` for a write, `None` for a delete or expiry). An `Err` item ends it.
pub type WatchStream = BoxStream<'static, Result<Option<KvPair>>>;

/// The stream returned by [`Store::watch_tree`]: the directory's full listing first, then the
/// full listing again after every change below it. An `Err` item ends it.
pub type WatchTreeStream = BoxStream<'static, Result<Vec<KvPair>>>;

/// A key/value store.
///
/// Every backend implements the same semantics (see the crate docs of `kvstore` and of each
/// backend crate for what differs); the conformance suite in `kvstore-testutils` is their
/// executable form. Usable as `Arc<dyn Store>`.
///
/// Every method that takes a key normalizes it with [`normalize_key`](crate::normalize_key)
/// (directories with [`normalize_dir`](crate::normalize_dir)) and fails with `InvalidKey`
/// before any I/O. Every method fails with `Closed` after [`close`](Store::close).
///
/// # Cancel safety
///
/// Every call is cancel-safe in the sense that dropping its future never corrupts the store: a
/// single-key write either happened completely or not at all. A dropped write may still have
/// been applied by the server.
///
/// # Examples
///
/// ```
/// use kvstore_core::Store;
///
/// async fn show(store: &dyn Store) -> kvstore_core::Result<()> {
///     store.put("app/config", b"v1", None).await?;
///     let pair = store.get("app/config", None).await?;
///     assert_eq!(&pair.value[..], b"v1");
///     Ok(())
/// }
/// ```
#[async_trait]
pub trait Store: Debug + Send + Sync {
    /// The backend's name: `"consul"`, `"etcd"`, `"zk"`, `"redis"`, `"redb"` or `"memory"`.
    fn backend(&self) -> &'static str;

    /// What this store can do.
    fn capabilities(&self) -> Capabilities;

    /// Writes `value` under `key`, creating or replacing it, and returns the stored pair.
    ///
    /// # Errors
    ///
    /// `InvalidKey`; `ValueTooLarge` (nothing written); `CallNotSupported` when `opts` asks for
    /// a TTL the backend lacks; `NotReachable`, `Timeout`, `Closed`.
    async fn put(&self, key: &str, value: &[u8], opts: Option<&WriteOptions>) -> Result<KvPair>;

    /// Reads a key.
    ///
    /// # Errors
    ///
    /// `KeyNotFound` when absent (or expired); `InvalidKey`; `NotReachable`, `Timeout`,
    /// `Closed`.
    async fn get(&self, key: &str, opts: Option<&ReadOptions>) -> Result<KvPair>;

    /// Deletes a key (not its descendants).
    ///
    /// # Errors
    ///
    /// `KeyNotFound` when absent; `InvalidKey`; `NotReachable`, `Timeout`, `Closed`.
    async fn delete(&self, key: &str) -> Result<()>;

    /// Whether a key exists. Never fails for a missing key.
    ///
    /// # Errors
    ///
    /// `InvalidKey`; `NotReachable`, `Timeout`, `Closed`.
    async fn exists(&self, key: &str, opts: Option<&ReadOptions>) -> Result<bool>;

    /// Lists every descendant of `dir` recursively, sorted by key, excluding `dir` itself.
    /// `""` lists the whole keyspace. A leaf key with no children lists as `Ok(vec![])`.
    ///
    /// # Errors
    ///
    /// `KeyNotFound` when neither `dir` nor any descendant exists; `InvalidKey`;
    /// `NotReachable`, `Timeout`, `Closed`.
    async fn list(&self, dir: &str, opts: Option<&ReadOptions>) -> Result<Vec<KvPair>>;

    /// Deletes `dir` and every descendant, nothing else (`a` never touches `ab`).
    ///
    /// # Errors
    ///
    /// `KeyNotFound` when neither `dir` nor any descendant exists; `InvalidKey`;
    /// `NotReachable`, `Timeout`, `Closed`.
    async fn delete_tree(&self, dir: &str) -> Result<()>;

    /// Compare-and-swap write. With `previous = None` the key must not exist (create-only);
    /// with `Some(prev)` the key's `last_index` must equal `prev.last_index`.
    ///
    /// # Errors
    ///
    /// `KeyExists` (`None`, key present); `KeyModified` (index differs); `KeyNotFound`
    /// (`Some`, key absent); `InvalidKey`; `ValueTooLarge`; `NotReachable`, `Timeout`, `Closed`.
    async fn atomic_put(
        &self,
        key: &str,
        value: &[u8],
        previous: Option<&KvPair>,
        opts: Option<&WriteOptions>,
    ) -> Result<KvPair>;

    /// Compare-and-delete: deletes the key only if its `last_index` equals
    /// `previous.last_index`.
    ///
    /// # Errors
    ///
    /// `KeyModified` (index differs); `KeyNotFound` (key absent); `InvalidKey`;
    /// `NotReachable`, `Timeout`, `Closed`.
    async fn atomic_delete(&self, key: &str, previous: &KvPair) -> Result<()>;

    /// Watches one key: yields its current state first (`None` if absent), then an item per
    /// change. A slow consumer may see consecutive states coalesced but always gets the latest.
    /// Dropping the stream cancels the watch.
    ///
    /// # Errors
    ///
    /// `InvalidKey`; `CallNotSupported`; connection errors while setting up. Later failures
    /// arrive as a final `Err` item after in-stream recovery has given up.
    async fn watch(&self, key: &str, opts: Option<&ReadOptions>) -> Result<WatchStream>;

    /// Watches a directory: yields the full `list(dir)` result first (empty for an empty or
    /// missing directory), then again after every create, update or delete below `dir`.
    ///
    /// # Errors
    ///
    /// As for [`watch`](Store::watch).
    async fn watch_tree(&self, dir: &str, opts: Option<&ReadOptions>) -> Result<WatchTreeStream>;

    /// Prepares a lock on `key` (session, lease) without taking it; see [`Locker`].
    ///
    /// # Errors
    ///
    /// `InvalidKey`; `CallNotSupported`; `InvalidConfig` for an unusable TTL; connection errors.
    async fn new_lock(&self, key: &str, opts: Option<&LockOptions>) -> Result<Box<dyn Locker>>;

    /// Runs `txn` as one atomic step: every condition holds and every operation is applied, or
    /// nothing is. Returns one entry per operation, in order: `Some(pair)` (with its new
    /// `last_index`) for a put, `None` for a delete.
    ///
    /// Watches see the writes like any others; backends that deliver a transaction as one
    /// event (etcd, Consul, Redis, redb) never show a `watch_tree` a half-applied state.
    ///
    /// # Errors
    ///
    /// Before any I/O: `InvalidKey`; `InvalidTxn` for no operation, a key in two operations,
    /// or more conditions plus operations than `Capabilities::max_txn_ops`; `ValueTooLarge`.
    /// A failed condition gives its single-key twin's error, for the first failing condition
    /// in order: `KeyModified` (`IndexIs` with another index), `KeyNotFound` (`IndexIs` or
    /// `Exists` on an absent key), `KeyExists` (`Missing` on a present key), `LockNotHeld`
    /// (`Held`); nothing is written. `CallNotSupported` on a store without transactions (the
    /// default body, so third-party backends compile); connection errors.
    async fn txn(&self, txn: &Txn) -> Result<Vec<Option<KvPair>>> {
        let _ = txn;
        Err(crate::Error::CallNotSupported {
            backend: self.backend(),
            operation: "txn",
        })
    }

    /// Every pair under `dir` (as [`list`](Store::list), recursive and sorted) and the store
    /// revision they were read at: what [`watch_events`](Store::watch_events) then resumes
    /// from (`WatchOptions::with_since`) with no gap. A missing directory gives an empty list,
    /// not `KeyNotFound`.
    ///
    /// # Errors
    ///
    /// `InvalidKey`; `CallNotSupported` on a store without revisions (the default body, so
    /// third-party backends compile); connection errors.
    async fn list_at(&self, dir: &str, opts: Option<&ReadOptions>) -> Result<(Vec<KvPair>, u64)> {
        let _ = (dir, opts);
        Err(crate::Error::CallNotSupported {
            backend: self.backend(),
            operation: "list_at",
        })
    }

    /// Per-key changes under `dir` (`""`: the whole keyspace): a
    /// [`Snapshot`](crate::WatchEvent::Snapshot) first, or with `since` the changes after that
    /// revision (a `Snapshot` when the store can no longer tell them), then one
    /// [`Changes`](crate::WatchEvent::Changes) item per batch of writes, a transaction's in one item.
    ///
    /// Folding the items received so far over an empty map ([`WatchEvent::apply`](crate::WatchEvent::apply)) always
    /// gives `list(dir)` as of the last item's revision: no event lost, duplicated, reordered
    /// or invented, across reconnects. A consumer slower than the writers receives larger
    /// batches, never fewer facts. Each backend's crate docs say where its revisions come from
    /// and when a resume starts with a `Snapshot`.
    ///
    /// # Errors
    ///
    /// `InvalidKey`; `CallNotSupported` (the default body); connection errors. An `Err` item
    /// ends the stream. Dropping the stream frees its server-side watch.
    async fn watch_events(&self, dir: &str, opts: Option<&WatchOptions>) -> Result<EventStream> {
        let _ = (dir, opts);
        Err(crate::Error::CallNotSupported {
            backend: self.backend(),
            operation: "watch_events",
        })
    }

    /// Adds `delta` to the decimal `i64` stored at `key` (absent: 0) in one atomic step of the
    /// server, where the backend has such a step, and returns the new value; `Ok(None)` where
    /// it has not — the default, and on Redis for a value its script does not take (a plain
    /// string another client wrote, one not in canonical form, a sum that overflows) — and
    /// then nothing was written. [`Counter`](crate::Counter) calls this first and falls back
    /// to its compare-and-swap loop on `None`; the two mix safely on one key, since the step
    /// gives the pair a new `last_index` like any write.
    ///
    /// Native on Redis (one script: `HINCRBY`, a new revision, the change log) and on redb and
    /// the in-memory store (read, add and write in one write transaction); elsewhere `None`
    /// (etcd, ZooKeeper and Consul have no increment inside one atomic step).
    ///
    /// # Errors
    ///
    /// `InvalidKey`; connection errors.
    async fn increment(&self, key: &str, delta: i64) -> Result<Option<i64>> {
        let _ = (key, delta);
        Ok(None)
    }

    /// Closes the store: stops every keep-alive, lock renewal and watch started through it and
    /// releases its connections. Every later call fails with `Closed`. Idempotent.
    ///
    /// # Errors
    ///
    /// Connection errors while releasing server-side resources (the store is closed anyway).
    async fn close(&self) -> Result<()>;
}

macro_rules! forward_store {
    ($($ty:ty),*) => {$(
        #[deny(clippy::missing_trait_methods)]
        #[async_trait]
        impl<T: Store + ?Sized> Store for $ty {
            fn backend(&self) -> &'static str {
                (**self).backend()
            }
            fn capabilities(&self) -> Capabilities {
                (**self).capabilities()
            }
            async fn put(&self, key: &str, value: &[u8], opts: Option<&WriteOptions>) -> Result<KvPair> {
                (**self).put(key, value, opts).await
            }
            async fn get(&self, key: &str, opts: Option<&ReadOptions>) -> Result<KvPair> {
                (**self).get(key, opts).await
            }
            async fn delete(&self, key: &str) -> Result<()> {
                (**self).delete(key).await
            }
            async fn exists(&self, key: &str, opts: Option<&ReadOptions>) -> Result<bool> {
                (**self).exists(key, opts).await
            }
            async fn list(&self, dir: &str, opts: Option<&ReadOptions>) -> Result<Vec<KvPair>> {
                (**self).list(dir, opts).await
            }
            async fn delete_tree(&self, dir: &str) -> Result<()> {
                (**self).delete_tree(dir).await
            }
            async fn atomic_put(
                &self,
                key: &str,
                value: &[u8],
                previous: Option<&KvPair>,
                opts: Option<&WriteOptions>,
            ) -> Result<KvPair> {
                (**self).atomic_put(key, value, previous, opts).await
            }
            async fn atomic_delete(&self, key: &str, previous: &KvPair) -> Result<()> {
                (**self).atomic_delete(key, previous).await
            }
            async fn watch(&self, key: &str, opts: Option<&ReadOptions>) -> Result<WatchStream> {
                (**self).watch(key, opts).await
            }
            async fn watch_tree(&self, dir: &str, opts: Option<&ReadOptions>) -> Result<WatchTreeStream> {
                (**self).watch_tree(dir, opts).await
            }
            async fn new_lock(&self, key: &str, opts: Option<&LockOptions>) -> Result<Box<dyn Locker>> {
                (**self).new_lock(key, opts).await
            }
            async fn txn(&self, txn: &Txn) -> Result<Vec<Option<KvPair>>> {
                (**self).txn(txn).await
            }
            async fn list_at(&self, dir: &str, opts: Option<&ReadOptions>) -> Result<(Vec<KvPair>, u64)> {
                (**self).list_at(dir, opts).await
            }
            async fn watch_events(&self, dir: &str, opts: Option<&WatchOptions>) -> Result<EventStream> {
                (**self).watch_events(dir, opts).await
            }
            async fn increment(&self, key: &str, delta: i64) -> Result<Option<i64>> {
                (**self).increment(key, delta).await
            }
            async fn close(&self) -> Result<()> {
                (**self).close().await
            }
        }
    )*};
}

forward_store!(Arc<T>, Box<T>);
