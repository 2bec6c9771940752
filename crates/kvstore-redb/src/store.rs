//! The [`Store`] implementation: redb transactions on the blocking pool, in-process watches,
//! TTL expiry and keep-alive.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use kvstore_core::backend::{Precondition, check_value_size, lock_arguments, run_txn, write_ttl};
use kvstore_core::{
    Capabilities, Error, KvPair, LockOptions, Locker, ReadOptions, Result, Store, Txn, WatchStream,
    WatchTreeStream, WriteOptions, normalize_dir, normalize_key,
};
use redb::Database;
use tokio::sync::{Notify, broadcast};
use tokio::time::Instant;

use crate::client::{CHANGE_FEED_CAPACITY, Shared};
use crate::config::{Location, RedbConfig};
use crate::error::{from_join, from_redb};
use crate::keep_alive::{CLOSE_TIMEOUT, KeyLease, KeyRegistrar, Session};
use crate::lock::RedbLocker;
use crate::watch::{watch_feed, watch_key_signal};

/// Directories of up to this many entries are listed in place, larger ones on the blocking
/// pool.
const IN_PLACE_LIST: usize = 1024;

/// A kvstore [`Store`] on a redb file or in memory.
///
/// One process owns the file: watches and locks are coordinated in-process, and every handle
/// made with [`new_handle`](RedbStore::new_handle) shares them. All data — values, `last_index`,
/// TTL deadlines, held locks and the revision counter — lives in the file, so it survives a
/// reopen: a compare-and-swap with a pair read before a restart behaves the same after it, and
/// a key or lock whose TTL ran out while the process was down is gone when it comes back.
///
/// # Backend notes
///
/// - `last_index` is a store-wide revision (like etcd's), so it also orders writes of
///   different keys; fencing tokens come from the same counter.
/// - TTL slack: a key is deleted, and watchers told, within a few milliseconds of its deadline
///   (a background task sleeps until the next one). Reads never return an expired key.
/// - `keep_alive` keys and held locks are renewed by the lease engine of
///   `kvstore_core::backend` (every quarter TTL) while the writing handle is open.
/// - `close()` on a handle releases the locks it holds at once.
/// - Every write commits with redb's default durability (fsync before returning). Concurrent
///   `put`, `atomic_put`, `delete` and `atomic_delete` calls share one commit (group commit,
///   as bbolt's `DB.Batch`): each is acknowledged only after the commit that holds it is
///   durable, a refused one (`KeyExists`, `KeyModified`, `KeyNotFound`) writes nothing and
///   leaves the others in, and a failed commit fails every call in it. 32 concurrent writers
///   get about 10× the throughput of one.
/// - `get`, `exists`, `watch` re-reads and `list` of up to 1,024 entries read in place on the
///   caller's task (microseconds from redb's cache); larger lists and transactions run on the
///   blocking pool.
/// - A key watch is woken only by commits that change its key; a directory watch filters
///   the store's change feed.
///
/// # Examples
///
/// ```
/// use kvstore_core::Store;
/// use kvstore_redb::RedbStore;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> kvstore_core::Result<()> {
/// let store = RedbStore::memory().await?;
/// store.put("app/config", b"v1", None).await?;
/// assert_eq!(&store.get("app/config", None).await?.value[..], b"v1");
/// # Ok(())
/// # }
/// ```
pub struct RedbStore {
    shared: Arc<Shared>,
    session: Session,
}

impl fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedbStore")
            .field("backend", &self.shared.backend)
            .field("closed", &self.session.tasks.is_closed())
            .finish_non_exhaustive()
    }
}

/// The files this process has open, by absolute path: a second `open` of one returns a new
/// handle on the same database.
static OPEN_FILES: tokio::sync::Mutex<BTreeMap<PathBuf, std::sync::Weak<Shared>>> =
    tokio::sync::Mutex::const_new(BTreeMap::new());

/// The key of `path` in [`OPEN_FILES`]: absolute, with symlinks in its directory resolved.
fn registry_path(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    match (absolute.parent(), absolute.file_name()) {
        (Some(dir), Some(name)) => std::fs::canonicalize(dir)
            .map(|dir| dir.join(name))
            .unwrap_or(absolute),
        _ => absolute,
    }
}

impl RedbStore {
    /// Opens (creating if needed) the store described by `config`.
    ///
    /// A file this process already has open (through another `open`, for example by another
    /// component or another test of the same binary) gives a new handle on the same database,
    /// as [`new_handle`](Self::new_handle) does; the settings of the first open apply. A file
    /// held by another process is retried with backoff until `config.open_timeout` has passed.
    ///
    /// # Errors
    ///
    /// [`Error::NotReachable`] when the file stays held by another process past the timeout;
    /// [`Error::Backend`] for I/O errors or a corrupt file.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: dropping the future leaves the file closed.
    #[tracing::instrument(level = "debug", skip_all, fields(op = "open"))]
    pub async fn open(config: RedbConfig) -> Result<Self> {
        let Location::File(path) = &config.location else {
            return Self::open_new(config).await;
        };
        // One database per file and process: a path this process already holds gets a new
        // handle on it (redb itself refuses a second open of the file).
        let path = registry_path(path);
        let mut open = OPEN_FILES.lock().await;
        open.retain(|_, shared| shared.strong_count() > 0);
        if let Some(shared) = open.get(&path).and_then(std::sync::Weak::upgrade) {
            return Ok(RedbStore {
                shared,
                session: Session::new(),
            });
        }
        let store = Self::open_new(config).await?;
        open.insert(path, Arc::downgrade(&store.shared));
        Ok(store)
    }

    async fn open_new(config: RedbConfig) -> Result<Self> {
        let backend = match config.location {
            Location::File(_) => crate::BACKEND,
            Location::Memory => crate::MEMORY_BACKEND,
        };
        let (location, cache_size) = (config.location.clone(), config.cache_size);
        let open_once = move || {
            let location = location.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    let mut builder = Database::builder();
                    builder.set_cache_size(cache_size);
                    match &location {
                        Location::File(path) => builder.create(path),
                        Location::Memory => {
                            builder.create_with_backend(redb::backends::InMemoryBackend::new())
                        }
                    }
                })
                .await
                .map_err(from_join)?
                .map_err(|e| match e {
                    redb::DatabaseError::DatabaseAlreadyOpen => Error::not_reachable(
                        backend,
                        "the database file is open in another process or store",
                    ),
                    other => from_redb(other),
                })
            }
        };
        let db = open_once
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(20))
                    .with_max_delay(Duration::from_millis(500))
                    .with_total_delay(Some(config.open_timeout))
                    .without_max_times(),
            )
            .when(|e| matches!(e, Error::NotReachable { .. }))
            .await?;
        let wakeup = Arc::new(Notify::new());
        let (changes, _) = broadcast::channel(CHANGE_FEED_CAPACITY);
        let (committer, commit_thread) = crate::commit::Committer::new(backend);
        let shared = Arc::new(Shared {
            db: Some(db),
            backend,
            max_value_size: config.max_value_size,
            changes,
            expiry_wakeup: wakeup.clone(),
            committer,
            key_watches: std::sync::Mutex::default(),
            blocking_pool: crate::pool::BlockingPool::start(backend)?,
        });
        shared.blocking(Shared::create_tables).await?;
        commit_thread.spawn(Arc::downgrade(&shared))?;
        shared.start_reaper()?;
        Ok(RedbStore {
            shared,
            session: Session::new(),
        })
    }

    /// Opens a new in-memory store.
    ///
    /// # Errors
    ///
    /// [`Error::Backend`] if redb cannot initialise its in-memory backend.
    pub async fn memory() -> Result<Self> {
        Self::open(RedbConfig::memory()).await
    }

    /// Another handle on the same database with its own lifetime: closing or dropping it
    /// stops only its own keep-alives, watches and locks. Tests use it as the "second client".
    ///
    /// # Examples
    ///
    /// ```
    /// use kvstore_core::Store;
    /// use kvstore_redb::RedbStore;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> kvstore_core::Result<()> {
    /// let store = RedbStore::memory().await?;
    /// let other = store.new_handle();
    /// other.put("k", b"v", None).await?;
    /// other.close().await?;
    /// assert!(store.exists("k", None).await?);
    /// # Ok(())
    /// # }
    /// ```
    pub fn new_handle(&self) -> RedbStore {
        RedbStore {
            shared: self.shared.clone(),
            session: Session::new(),
        }
    }

    fn check_open(&self) -> Result<()> {
        if self.session.tasks.is_closed() {
            return Err(Error::Closed {
                backend: self.shared.backend,
            });
        }
        Ok(())
    }

    async fn write(
        &self,
        key: &str,
        value: &[u8],
        expect: Precondition,
        opts: Option<&WriteOptions>,
    ) -> Result<KvPair> {
        self.check_open()?;
        let key = normalize_key(key)?.to_owned();
        check_value_size(&key, value, self.shared.max_value_size)?;
        let ttl = write_ttl(self.shared.backend, opts)?;
        let value = value.to_vec();
        let k = key.clone();
        let sent = Instant::now();
        let pair = self.shared.commit_write(k, value, ttl, expect).await?;
        match ttl.filter(|_| opts.is_some_and(|o| o.keep_alive)) {
            Some(ttl) => self.session.registrations.insert(
                &key,
                pair.value.clone(),
                ttl,
                Arc::new(KeyLease {
                    shared: self.shared.clone(),
                    key: key.clone(),
                    index: pair.last_index,
                    ttl,
                }),
                sent,
                Arc::new(KeyRegistrar(self.shared.clone())),
            ),
            None => self.session.registrations.remove(&key),
        }
        Ok(pair)
    }

    async fn remove(&self, key: &str, expect: Precondition) -> Result<()> {
        self.check_open()?;
        let key = normalize_key(key)?.to_owned();
        let k = key.clone();
        self.shared
            .group_commit(move |s, txn| s.remove(txn, &k, expect))
            .await?;
        self.session.registrations.remove(&key);
        Ok(())
    }
}

#[async_trait]
impl Store for RedbStore {
    fn backend(&self) -> &'static str {
        self.shared.backend
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::all()
            .with_max_value_size(self.shared.max_value_size)
            .with_max_txn_ops(crate::txn::MAX_TXN_OPS)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = self.shared.backend, op = "txn", ops = txn.ops.len()))]
    async fn txn(&self, txn: &Txn) -> Result<Vec<Option<KvPair>>> {
        self.check_open()?;
        let shared = self.shared.clone();
        run_txn(
            txn,
            crate::txn::MAX_TXN_OPS,
            self.shared.max_value_size,
            &self.session.registrations,
            |txn| async move { shared.blocking(move |s| s.txn(&txn)).await },
        )
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = self.shared.backend, op = "put", key = %key))]
    async fn put(&self, key: &str, value: &[u8], opts: Option<&WriteOptions>) -> Result<KvPair> {
        self.write(key, value, Precondition::None, opts).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = self.shared.backend, op = "get", key = %key))]
    async fn get(&self, key: &str, _opts: Option<&ReadOptions>) -> Result<KvPair> {
        self.check_open()?;
        let key = normalize_key(key)?;
        // Read in place: a point read that redb's cache serves takes microseconds, less than
        // the hop to the blocking pool (see `docs/benchmarks.md`, "redb reads without the hop").
        self.shared
            .read_key(key)?
            .ok_or_else(|| Error::KeyNotFound {
                key: key.to_owned(),
            })
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = self.shared.backend, op = "delete", key = %key))]
    async fn delete(&self, key: &str) -> Result<()> {
        self.remove(key, Precondition::None).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = self.shared.backend, op = "exists", key = %key))]
    async fn exists(&self, key: &str, _opts: Option<&ReadOptions>) -> Result<bool> {
        self.check_open()?;
        // In place, as `get`.
        Ok(self.shared.read_key(normalize_key(key)?)?.is_some())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = self.shared.backend, op = "list", key = %dir))]
    async fn list(&self, dir: &str, _opts: Option<&ReadOptions>) -> Result<Vec<KvPair>> {
        self.check_open()?;
        let dir = normalize_dir(dir)?.to_owned();
        // A directory of up to `IN_PLACE_LIST` entries is read in place (a 100-key list takes
        // ~20 µs, less than the hop to the blocking pool); a larger one is read again there,
        // so no scan holds an async worker for long.
        let pairs = match self.shared.read_tree_up_to(&dir, IN_PLACE_LIST)? {
            Some(pairs) => pairs,
            None => {
                let d = dir.clone();
                self.shared.blocking(move |s| s.read_tree(&d)).await?
            }
        };
        pairs.ok_or(Error::KeyNotFound { key: dir })
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = self.shared.backend, op = "delete_tree", key = %dir))]
    async fn delete_tree(&self, dir: &str) -> Result<()> {
        self.check_open()?;
        let dir = normalize_dir(dir)?.to_owned();
        let d = dir.clone();
        self.shared.blocking(move |s| s.remove_tree(&d)).await?;
        self.session.registrations.remove_tree(&dir);
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = self.shared.backend, op = "atomic_put", key = %key))]
    async fn atomic_put(
        &self,
        key: &str,
        value: &[u8],
        previous: Option<&KvPair>,
        opts: Option<&WriteOptions>,
    ) -> Result<KvPair> {
        let expect = previous.map_or(Precondition::Absent, |p| Precondition::Index(p.last_index));
        self.write(key, value, expect, opts).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = self.shared.backend, op = "atomic_delete", key = %key))]
    async fn atomic_delete(&self, key: &str, previous: &KvPair) -> Result<()> {
        self.remove(key, Precondition::Index(previous.last_index))
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = self.shared.backend, op = "watch", key = %key))]
    async fn watch(&self, key: &str, _opts: Option<&ReadOptions>) -> Result<WatchStream> {
        self.check_open()?;
        let key: Arc<str> = normalize_key(key)?.into();
        watch_key_signal(&self.shared, self.session.cancel().clone(), key).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = self.shared.backend, op = "watch_tree", key = %dir))]
    async fn watch_tree(&self, dir: &str, _opts: Option<&ReadOptions>) -> Result<WatchTreeStream> {
        self.check_open()?;
        let dir: Arc<str> = normalize_dir(dir)?.into();
        let d = dir.clone();
        watch_feed(
            &self.shared,
            self.session.cancel().clone(),
            move |c| c.touches_tree(&d),
            move |s| Ok(s.read_tree(&dir)?.unwrap_or_default()),
        )
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = self.shared.backend, op = "new_lock", key = %key))]
    async fn new_lock(&self, key: &str, opts: Option<&LockOptions>) -> Result<Box<dyn Locker>> {
        self.check_open()?;
        let (key, opts) = lock_arguments(
            self.shared.backend,
            key,
            opts,
            Duration::ZERO,
            self.shared.max_value_size,
        )?;
        Ok(Box::new(RedbLocker::new(
            self.shared.clone(),
            self.session.tasks.clone(),
            key,
            opts,
        )))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = self.shared.backend, op = "close"))]
    async fn close(&self) -> Result<()> {
        // Stops registrations (their keys expire with their TTL), ends watches, and releases
        // held locks; waits for the releases.
        self.session.tasks.close(CLOSE_TIMEOUT).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watched_keys(store: &RedbStore) -> usize {
        store.shared.key_watches.lock().unwrap().len()
    }

    #[tokio::test]
    async fn dropped_key_watches_leave_no_signal_behind() {
        let store = RedbStore::memory().await.unwrap();
        let a = store.watch("a", None).await.unwrap();
        let a2 = store.watch("a", None).await.unwrap();
        let b = store.watch("b", None).await.unwrap();
        assert_eq!(watched_keys(&store), 2);
        drop(a);
        assert_eq!(watched_keys(&store), 2, "a still has a watch");
        drop((a2, b));
        assert_eq!(
            watched_keys(&store),
            0,
            "no key stays registered without a watch"
        );
        store.close().await.unwrap();
    }

    /// A burst of calls (as renewals falling due together make) runs at most `THREADS` at
    /// once, on the database's own threads, and every call still completes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blocking_calls_are_bounded_per_database() {
        use std::sync::atomic::{AtomicUsize, Ordering};

        let store = RedbStore::memory().await.unwrap();
        let (running, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let limit = crate::pool::THREADS;
        let calls = (0..limit * 8).map(|_| {
            let (shared, running, peak) = (store.shared.clone(), running.clone(), peak.clone());
            async move {
                shared
                    .blocking(move |_| {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        // Long enough that the calls overlap, so the bound is what stops them.
                        std::thread::sleep(Duration::from_millis(20));
                        running.fetch_sub(1, Ordering::SeqCst);
                        Ok(())
                    })
                    .await
            }
        });
        let results =
            tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(calls))
                .await
                .expect("every call completes");
        assert!(results.iter().all(Result::is_ok));
        let peak = peak.load(Ordering::SeqCst);
        assert!(
            peak <= limit,
            "{peak} calls ran at once; the bound is {limit}"
        );
        assert!(peak > 1, "the calls overlapped ({peak} at once)");
        store.close().await.unwrap();
    }
}
