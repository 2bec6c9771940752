//! [`Cache`]: a directory of a [`Store`] kept in memory by its `watch_events` stream.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::{
    Error, EventStream, KvPair, Result, Store, WatchEvent, WatchOptions, is_descendant,
    normalize_dir, normalize_key,
};

/// How many applied items [`Cache::events`] buffers per subscriber; one further behind
/// receives a `Snapshot` of the cache instead.
const EVENTS_CAPACITY: usize = 1024;

/// A directory of a [`Store`] in memory, kept in sync by
/// [`watch_events`](Store::watch_events): `get`, `list` and `exists` are answered without I/O.
///
/// At every moment its content is `list(dir)` as of [`revision()`](Self::revision) — it
/// applies whole stream items under one lock, so it never shows a state the store never had.
/// When the event stream ends with an error (the store unreachable past its reconnect
/// timeout), the cache keeps its last state and watches again from its revision with backoff
/// (50 ms doubling to 5 s) until it is dropped; the store's own resume rule (the changes, or a
/// `Snapshot`) brings it up to date.
///
/// **Staleness**: the cache trails the store by the backend's event delivery (in-process for
/// redb and memory; one watch response for etcd; one blocking query for Consul; one keyspace
/// notification and one read of the change log for Redis; one watch event and one read of the
/// changed znodes for ZooKeeper — 0.7 to 1.6 ms at the median, measured on one machine with
/// the servers on it). A caller that
/// must read its own write waits for the write's index: `cache.wait_for(pair.last_index)`.
///
/// **Memory**: per key, its name twice (map key and pair), its value, and about 100 bytes of
/// map and pair overhead.
///
/// Clones share one view and one watch; the watch stops when the last clone is dropped.
///
/// # Example
///
/// ```
/// # async fn demo(store: std::sync::Arc<dyn kvstore_core::Store>) -> kvstore_core::Result<()> {
/// use kvstore_core::Cache;
///
/// let cache = Cache::new(store.clone(), "services").await?;
/// let written = store.put("services/web", b"10.0.0.1:80", None).await?;
/// cache.wait_for(written.last_index).await?;
/// assert_eq!(cache.get("services/web").map(|p| p.value), Some("10.0.0.1:80".into()));
/// assert_eq!(cache.list("services").len(), 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Cache {
    shared: Arc<Shared>,
    _stop: Arc<DropGuard>,
}

struct Shared {
    dir: String,
    view: RwLock<View>,
    /// The revision applied last, and whether the cache stopped for good.
    progress: watch::Sender<(u64, bool)>,
    /// The applied items, for [`Cache::events`]; `None` once the cache stopped.
    applied: std::sync::Mutex<Option<broadcast::Sender<WatchEvent>>>,
}

#[derive(Default)]
struct View {
    pairs: BTreeMap<String, KvPair>,
    revision: u64,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let view = self.shared.view();
        f.debug_struct("Cache")
            .field("dir", &self.shared.dir)
            .field("keys", &view.pairs.len())
            .field("revision", &view.revision)
            .finish()
    }
}

impl Shared {
    fn view(&self) -> std::sync::RwLockReadGuard<'_, View> {
        self.view.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies one item under the write lock, then tells waiters and subscribers.
    fn apply(&self, item: WatchEvent) {
        {
            let mut view = self.view.write().unwrap_or_else(|e| e.into_inner());
            item.apply(&mut view.pairs);
            view.revision = item.revision();
        }
        self.progress.send_modify(|p| p.0 = item.revision());
        if let Some(applied) = &*self.applied.lock().unwrap_or_else(|e| e.into_inner()) {
            let _ = applied.send(item);
        }
    }

    /// Marks the cache stopped: waiters get `Closed`, event subscribers reach their end.
    fn stop(&self) {
        self.progress.send_modify(|p| p.1 = true);
        self.applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }

    /// The cache's whole content as a `Snapshot` item.
    fn snapshot(&self) -> WatchEvent {
        let view = self.view();
        WatchEvent::Snapshot {
            pairs: view.pairs.values().cloned().collect(),
            revision: view.revision,
        }
    }
}

impl Cache {
    /// Watches `dir` (`""`: the whole keyspace) of `store` and returns once its first
    /// `Snapshot` is applied.
    ///
    /// # Errors
    ///
    /// `InvalidKey` for a bad `dir`; `CallNotSupported` where the store has no
    /// `watch_events`; the store's errors opening the stream or reading the first item
    /// (`Closed` when the stream ended before it).
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: a cache dropped before it returned leaves no watch behind.
    pub async fn new(store: Arc<dyn Store>, dir: &str) -> Result<Cache> {
        let dir = normalize_dir(dir)?.to_owned();
        let mut stream = store.watch_events(&dir, None).await?;
        let first = match stream.next().await {
            Some(item) => item?,
            None => {
                return Err(Error::Closed {
                    backend: store.backend(),
                });
            }
        };
        let (progress, _) = watch::channel((0, false));
        let (applied, _) = broadcast::channel(EVENTS_CAPACITY);
        let shared = Arc::new(Shared {
            dir,
            view: RwLock::new(View::default()),
            progress,
            applied: std::sync::Mutex::new(Some(applied)),
        });
        shared.apply(first);
        let stop = CancellationToken::new();
        tokio::spawn(follow(store, shared.clone(), stream, stop.clone()));
        Ok(Cache {
            shared,
            _stop: Arc::new(stop.drop_guard()),
        })
    }

    /// The pair at `key`, if the cache holds it (a key outside the directory: `None`).
    pub fn get(&self, key: &str) -> Option<KvPair> {
        let key = normalize_key(key).ok()?;
        self.shared.view().pairs.get(key).cloned()
    }

    /// Whether the cache holds `key`.
    pub fn exists(&self, key: &str) -> bool {
        normalize_key(key).is_ok_and(|key| self.shared.view().pairs.contains_key(key))
    }

    /// Every pair strictly under `dir` (`""`: all the cache holds), sorted by key, as
    /// `Store::list` would give at [`revision()`](Self::revision); empty when there is none
    /// (or `dir` is invalid).
    pub fn list(&self, dir: &str) -> Vec<KvPair> {
        let Ok(dir) = normalize_dir(dir) else {
            return Vec::new();
        };
        let view = self.shared.view();
        if dir.is_empty() {
            return view.pairs.values().cloned().collect();
        }
        let start = format!("{dir}/");
        view.pairs
            .range::<str, _>((Bound::Included(start.as_str()), Bound::Unbounded))
            .take_while(|(k, _)| is_descendant(k, dir))
            .map(|(_, p)| p.clone())
            .collect()
    }

    /// The store revision the cache's content is at.
    pub fn revision(&self) -> u64 {
        self.shared.view().revision
    }

    /// Waits until the cache has applied `revision` (for example a write's `last_index`), so
    /// a caller reads its own writes. Returns at once when it already has. Wrap it in a
    /// timeout to bound the wait.
    ///
    /// The cache's revision moves with changes in its directory. Where revisions are
    /// store-wide (etcd, redb, memory) a revision from elsewhere — `list_at` of another
    /// directory, a write outside it — is reached only with the directory's next change, so
    /// wait for the `last_index` of a write in the directory.
    ///
    /// # Errors
    ///
    /// `Closed` when the cache stopped for good (its store closed).
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe.
    pub async fn wait_for(&self, revision: u64) -> Result<()> {
        let mut seen = self.shared.progress.subscribe();
        match seen
            .wait_for(|&(r, stopped)| r >= revision || stopped)
            .await
        {
            Ok(p) if p.0 >= revision => Ok(()),
            _ => Err(Error::Closed { backend: "cache" }),
        }
    }

    /// The items the cache applies from now on, starting with a `Snapshot` of what it holds:
    /// folded, they give the cache's content (the fold invariant of `watch_events`). A
    /// subscriber more than 1,024 items behind receives a `Snapshot` of the cache in their
    /// place. Ends when the cache stops for good.
    pub fn events(&self) -> EventStream {
        let receiver = match &*self
            .shared
            .applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
        {
            Some(applied) => applied.subscribe(),
            // Stopped: the snapshot, then the end.
            None => broadcast::channel(1).1,
        };
        let shared = self.shared.clone();
        let first = shared.snapshot();
        let start = first.revision();
        let rest = futures::stream::unfold(
            (receiver, shared, start),
            |(mut receiver, shared, last)| async move {
                loop {
                    let item = match receiver.recv().await {
                        Ok(item) if item.revision() <= last => continue,
                        Ok(item) => item,
                        Err(broadcast::error::RecvError::Lagged(_)) => shared.snapshot(),
                        Err(broadcast::error::RecvError::Closed) => return None,
                    };
                    let revision = item.revision();
                    return Some((Ok(item), (receiver, shared, revision)));
                }
            },
        );
        futures::stream::once(async move { Ok(first) })
            .chain(rest)
            .boxed()
    }
}

/// The cache's task: applies the stream's items; after the stream ends with an error, watches
/// again from the cache's revision with backoff, until stopped or the store is closed.
async fn follow(
    store: Arc<dyn Store>,
    shared: Arc<Shared>,
    stream: EventStream,
    stop: CancellationToken,
) {
    run(&*store, &shared, stream, &stop).await;
    shared.stop();
}

async fn run(
    store: &dyn Store,
    shared: &Shared,
    mut stream: EventStream,
    stop: &CancellationToken,
) {
    let mut delays = backoff();
    loop {
        let item = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            item = stream.next() => item,
        };
        match item {
            Some(Ok(item)) => {
                delays = backoff();
                shared.apply(item);
                continue;
            }
            Some(Err(Error::Closed { .. })) => return,
            Some(Err(err)) => {
                tracing::warn!(dir = %shared.dir, error = %err, "cache watch ended; watching again");
            }
            None => {}
        }
        // Watch again from where the cache is, after a pause.
        loop {
            let delay = delays.next().unwrap_or(Duration::from_secs(5));
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
            let since = WatchOptions::default().with_since(shared.view().revision);
            match store.watch_events(&shared.dir, Some(&since)).await {
                Ok(next) => {
                    stream = next;
                    break;
                }
                Err(Error::Closed { .. }) => return,
                Err(err) => {
                    tracing::debug!(dir = %shared.dir, error = %err, "cache watch not back yet");
                }
            }
        }
    }
}

fn backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(5))
        .without_max_times()
        .build()
}
