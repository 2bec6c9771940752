//! [`Redb`]: the redb file and the in-memory store as a [`Backend`] — redb transactions on
//! the blocking pool, in-process watches, TTL expiry and keep-alive.

use kvstore_core::backend::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use backon::{ExponentialBuilder, Retryable};
use redb::Database;
use tokio::sync::{Notify, broadcast};

use crate::client::{CHANGE_FEED_CAPACITY, Shared};
use crate::config::{Location, RedbConfig};
use crate::error::{from_join, from_redb};

use crate::watch::{watch_feed, watch_key_signal};

/// Directories of up to this many entries are listed in place, larger ones on the blocking
/// pool.
const IN_PLACE_LIST: usize = 1024;

/// A redb store: a file (`redb:`), or memory (`memory://`). Every call of
/// [`Store`](kvstore_core::Store) with the semantics of every backend.
///
/// # Example
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> kvstore_core::Result<()> {
/// use kvstore_core::Store;
/// use kvstore_redb::{RedbConfig, RedbStore};
///
/// let store = RedbStore::open(RedbConfig::memory()).await?;
/// store.put("app/config", b"on", None).await?;
/// assert_eq!(store.get("app/config", None).await?.value, "on");
/// store.close().await?;
/// # Ok(()) }
/// ```
pub type RedbStore = BackendStore<Redb>;

/// The redb backend of [`RedbStore`]: the open database, shared by every handle on it.
#[derive(Debug)]
pub struct Redb {
    shared: Arc<Shared>,
}

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

impl Open for Redb {
    type Config = RedbConfig;

    fn open(config: RedbConfig) -> impl std::future::Future<Output = Result<Self>> + Send {
        Self::open_shared(config)
    }
}

impl Redb {
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
    /// Cancel-safe: dropping the future leaves the file closed.
    async fn open_shared(config: RedbConfig) -> Result<Self> {
        let Location::File(path) = &config.location else {
            return Self::open_new(config).await;
        };
        // One database per file and process: a path this process already holds gets a new
        // handle on it (redb itself refuses a second open of the file).
        let path = registry_path(path);
        let mut open = OPEN_FILES.lock().await;
        open.retain(|_, shared| shared.strong_count() > 0);
        if let Some(shared) = open.get(&path).and_then(std::sync::Weak::upgrade) {
            return Ok(Redb { shared });
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
        Ok(Redb { shared })
    }
}

#[async_trait]
impl Backend for Redb {
    const NAME: &str = crate::BACKEND;

    /// `redb`, or `memory` for a `memory://` store.
    fn name(&self) -> &'static str {
        self.shared.backend
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::all()
            .with_max_value_size(self.shared.max_value_size)
            .with_max_txn_ops(crate::txn::MAX_TXN_OPS)
    }

    async fn read(&self, key: &str, _consistent: bool) -> Result<Option<KvPair>> {
        // Read in place: a point read that redb's cache serves takes microseconds, less than
        // the hop to the blocking pool (see `docs/benchmarks.md`, "redb reads without the hop").
        self.shared.read_key(key)
    }

    async fn list(&self, dir: &str, _consistent: bool) -> Result<Option<Vec<KvPair>>> {
        // A directory of up to `IN_PLACE_LIST` entries is read in place (a 100-key list takes
        // ~20 µs, less than the hop to the blocking pool); a larger one is read again there,
        // so no scan holds an async worker for long.
        match self.shared.read_tree_up_to(dir, IN_PLACE_LIST)? {
            Some(pairs) => Ok(pairs),
            None => {
                let d = dir.to_owned();
                self.shared.blocking(move |s| s.read_tree(&d)).await
            }
        }
    }

    async fn write(&self, w: WriteRequest<'_>) -> Result<Written> {
        let ttl = w.expiry.map(|e| e.ttl);
        let pair = self
            .shared
            .commit_write(w.key.to_owned(), w.value.to_vec(), ttl, w.precondition)
            .await?;
        let lease = ttl.map(|ttl| self.key_lease(w.key, pair.last_index, ttl));
        Ok(Written { pair, lease })
    }

    async fn delete(&self, key: &str, precondition: Precondition) -> Result<()> {
        let k = key.to_owned();
        self.shared
            .group_commit(move |s, txn| s.remove(txn, &k, precondition))
            .await
    }

    /// Read, add and write in one write transaction of the group commit.
    async fn increment(&self, key: &str, delta: i64) -> Result<Option<i64>> {
        let k = key.to_owned();
        self.shared
            .group_commit(move |s, txn| s.increment(txn, &k, delta))
            .await
    }

    async fn delete_tree(&self, dir: &str) -> Result<bool> {
        let d = dir.to_owned();
        self.shared.blocking(move |s| s.remove_tree(&d)).await
    }

    async fn txn(&self, txn: Arc<CheckedTxn>) -> Result<Vec<Option<KvPair>>> {
        self.shared.group_commit(move |s, w| s.txn(w, &txn)).await
    }

    async fn register_again(&self, lost: LostRegistration<'_>) -> Result<Option<Arc<dyn Lease>>> {
        let LostRegistration { key, value, ttl } = lost;
        let read = || {
            let k = key.to_owned();
            self.shared.blocking(move |s| s.read_key(&k))
        };
        let write = |expect| {
            self.shared
                .commit_write(key.to_owned(), value.to_vec(), Some(ttl), expect)
        };
        Ok(write_again(value, read, write)
            .await?
            .map(|pair| self.key_lease(key, pair.last_index, ttl)))
    }

    async fn watch(&self, w: WatchRequest<'_>) -> Result<WatchStream> {
        let (key, cancel) = (w.key, w.cancel);
        watch_key_signal(&self.shared, cancel, key.into()).await
    }

    async fn watch_tree(&self, w: WatchRequest<'_>) -> Result<WatchTreeStream> {
        let (dir, cancel) = (w.key, w.cancel);
        let dir: Arc<str> = dir.into();
        let d = dir.clone();
        watch_feed(
            &self.shared,
            cancel,
            move |c| c.touches_tree(&d),
            move |s| Ok(s.read_tree(&dir)?.unwrap_or_default()),
        )
        .await
    }

    async fn list_at(&self, dir: &str, _consistent: bool) -> Result<(Vec<KvPair>, u64)> {
        let dir = dir.to_owned();
        self.shared.blocking(move |s| s.read_tree_at(&dir)).await
    }

    async fn watch_events(&self, w: WatchRequest<'_>, since: Option<u64>) -> Result<EventStream> {
        Ok(crate::watch::watch_events(&self.shared, w, since))
    }

    async fn acquire(&self, lock: &LockSpec, tasks: &Tasks) -> Result<HeldLease> {
        crate::lock::acquire(&self.shared, lock, tasks).await
    }
}

impl Redb {
    fn key_lease(&self, key: &str, index: u64, ttl: Duration) -> Arc<dyn Lease> {
        KeyLease::shared(self.shared.clone(), key, index, ttl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvstore_core::Store;

    fn watched_keys(store: &RedbStore) -> usize {
        store.backend_ref().shared.key_watches.lock().unwrap().len()
    }

    #[tokio::test]
    async fn dropped_key_watches_leave_no_signal_behind() {
        let store = RedbStore::open(RedbConfig::memory()).await.unwrap();
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

        let store = RedbStore::open(RedbConfig::memory()).await.unwrap();
        let (running, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let limit = crate::pool::THREADS;
        let calls = (0..limit * 8).map(|_| {
            let (shared, running, peak) = (
                store.backend_ref().shared.clone(),
                running.clone(),
                peak.clone(),
            );
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
