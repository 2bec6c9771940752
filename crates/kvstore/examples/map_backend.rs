//! A third-party backend in one file: an in-process store over a `Mutex<BTreeMap>` that
//! implements only [`Backend`], the protocol steps, and gets every other part of
//! [`Store`](kvstore::Store) — key and value checks, spans, registrations, the loss rule, the
//! `Locker`, transactions' pre-checks — from [`BackendStore`]. The repository runs the whole
//! conformance suite against it (`crates/kvstore/tests/map_backend.rs`).
//!
//! Run: `cargo run -p kvstore-any --example map_backend`

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kvstore::backend::prelude::*;
use kvstore::{Store, is_descendant};
use tokio::sync::watch;
use tokio::time::Instant;

/// A stored key: its value, `last_index` and deadline.
#[derive(Debug, Clone)]
struct Entry {
    value: Bytes,
    index: u64,
    expires: Option<Instant>,
}

/// A held lock: its fencing token and deadline.
#[derive(Debug, Clone, Copy)]
struct Hold {
    token: u64,
    expires: Instant,
}

#[derive(Debug, Default)]
struct State {
    revision: u64,
    keys: BTreeMap<String, Entry>,
    locks: HashMap<String, Hold>,
}

impl State {
    fn live(&self, key: &str, now: Instant) -> Option<&Entry> {
        self.keys
            .get(key)
            .filter(|e| e.expires.is_none_or(|t| t > now))
    }

    fn held(&self, key: &str, now: Instant) -> Option<Hold> {
        self.locks.get(key).copied().filter(|h| h.expires > now)
    }

    fn put(&mut self, key: &str, value: Bytes, index: u64, ttl: Option<Duration>) {
        let expires = ttl.map(|ttl| Instant::now() + ttl);
        let entry = Entry {
            value,
            index,
            expires,
        };
        self.keys.insert(key.to_owned(), entry);
    }

    /// The earliest deadline of a key or lock: when a watch or a waiter must look again.
    fn next_deadline(&self) -> Option<Instant> {
        let keys = self.keys.values().filter_map(|e| e.expires);
        keys.chain(self.locks.values().map(|h| h.expires)).min()
    }
}

/// The backend: the map, and a channel that ticks on every change.
#[derive(Debug)]
pub(crate) struct MapBackend {
    state: Arc<Mutex<State>>,
    changes: watch::Sender<u64>,
}

impl Default for MapBackend {
    fn default() -> Self {
        MapBackend {
            state: Arc::default(),
            changes: watch::channel(0).0,
        }
    }
}

impl MapBackend {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `f` to the state and tells the watchers.
    fn change<T>(&self, f: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        let out = f(&mut self.state())?;
        self.changes.send_modify(|n| *n += 1);
        Ok(out)
    }

    fn lease(&self, key: &str, index: u64, ttl: Duration, lock: Option<bool>) -> Arc<dyn Lease> {
        let (key, backend) = (key.to_owned(), self.handle());
        Arc::new(MapLease {
            backend,
            key,
            index,
            ttl,
            lock,
        })
    }

    fn handle(&self) -> MapBackend {
        MapBackend {
            state: self.state.clone(),
            changes: self.changes.clone(),
        }
    }

    fn tree(&self, dir: &str) -> Vec<KvPair> {
        let (state, now) = (self.state(), Instant::now());
        let under = |k: &String| dir.is_empty() || is_descendant(k, dir);
        let live = state
            .keys
            .iter()
            .filter(|(k, e)| under(k) && e.expires.is_none_or(|t| t > now));
        live.map(|(k, e)| KvPair::new(k.as_str(), e.value.clone(), e.index))
            .collect()
    }
}

/// A key's lease (a `keep_alive` registration) or a lock's: renewing pushes the deadline.
#[derive(Debug)]
struct MapLease {
    backend: MapBackend,
    key: String,
    /// The key's `last_index`, or the lock's token.
    index: u64,
    ttl: Duration,
    /// A lock's lease: `Some(delete_on_unlock)`. Its value, when written at the token, lives
    /// as long as the hold with `delete_on_unlock`.
    lock: Option<bool>,
}

#[async_trait]
impl Lease for MapLease {
    async fn renew(&self) -> Result<Renewal> {
        let (mut state, now) = (self.backend.state(), Instant::now());
        let expires = now + self.ttl;
        let held = match self.lock {
            Some(_) => state
                .held(&self.key, now)
                .is_some_and(|h| h.token == self.index),
            None => state
                .live(&self.key, now)
                .is_some_and(|e| e.index == self.index),
        };
        if let (true, Some(_)) = (held, self.lock) {
            state.locks.get_mut(&self.key).expect("held").expires = expires;
        }
        // The key (a registration, or a lock's bound value) expires with the lease.
        if let Some(entry) = state
            .keys
            .get_mut(&self.key)
            .filter(|e| held && e.index == self.index)
            && entry.expires.is_some()
        {
            entry.expires = Some(expires);
        }
        Ok(Renewal::held(held))
    }

    async fn release(&self, _why: Release) -> Result<()> {
        let Some(delete_on_unlock) = self.lock else {
            return Ok(());
        };
        self.backend.change(|state| {
            if state
                .locks
                .get(&self.key)
                .is_none_or(|h| h.token != self.index)
            {
                return Ok(());
            }
            state.locks.remove(&self.key);
            if delete_on_unlock {
                state.keys.remove(&self.key);
            }
            Ok(())
        })
    }
}

/// One watch: the state it reads, woken by the change channel or the next deadline.
struct MapWatch<T> {
    backend: MapBackend,
    changes: watch::Receiver<u64>,
    read: fn(&MapBackend, &str) -> T,
    key: String,
}

#[async_trait]
impl<T: PartialEq + Clone + Send + 'static> WatchSource for MapWatch<T> {
    type Item = T;

    async fn read(&mut self) -> Result<T> {
        Ok((self.read)(&self.backend, &self.key))
    }

    async fn changed(&mut self) -> Result<()> {
        let deadline = self.backend.state().next_deadline();
        let expiry = tokio::time::sleep_until(deadline.unwrap_or_else(far_future));
        tokio::select! {
            _ = self.changes.changed() => Ok(()),
            () = expiry => Ok(()),
        }
    }

    async fn reconnect(&mut self) -> Result<()> {
        Ok(())
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

impl MapBackend {
    fn watch_of<T: PartialEq + Clone + Send + Sync + 'static>(
        &self,
        key: &str,
        read: fn(&MapBackend, &str) -> T,
        cancel: CancellationToken,
    ) -> futures::stream::BoxStream<'static, Result<T>> {
        let source = MapWatch {
            backend: self.handle(),
            changes: self.changes.subscribe(),
            read,
            key: key.to_owned(),
        };
        let first = read(self, key);
        watch_stream(source, first, cancel, Duration::MAX)
    }
}

#[async_trait]
impl Backend for MapBackend {
    const NAME: &str = "map";

    fn capabilities(&self) -> Capabilities {
        // No history kept: `watch_events` and `list_at` stay `CallNotSupported` (the trait's
        // default bodies), which the conformance suite checks.
        Capabilities::all().with_events(false)
    }

    async fn read(&self, key: &str, _consistent: bool) -> Result<Option<KvPair>> {
        Ok(self.pair(key))
    }

    async fn list(&self, dir: &str, _consistent: bool) -> Result<Option<Vec<KvPair>>> {
        let pairs = self.tree(dir);
        let exists = dir.is_empty() || !pairs.is_empty() || self.read(dir, true).await?.is_some();
        Ok(exists.then_some(pairs))
    }

    async fn write(&self, w: WriteRequest<'_>) -> Result<Written> {
        let (key, value, expiry) = (w.key, w.value, w.expiry);
        let index = self.change(|state| {
            let found = state.live(key, Instant::now()).map(|e| e.index);
            match (w.precondition, found) {
                (Precondition::Absent, Some(_)) => {
                    return Err(Error::KeyExists { key: key.into() });
                }
                (Precondition::Index(_), None) => return Err(Error::not_found(key)),
                (Precondition::Index(want), Some(have)) if want != have => {
                    return Err(Error::KeyModified { key: key.into() });
                }
                _ => {}
            }
            state.revision += 1;
            let index = state.revision;
            state.put(
                key,
                Bytes::copy_from_slice(value),
                index,
                expiry.map(|e| e.ttl),
            );
            Ok(index)
        })?;
        let lease = expiry.map(|e| self.lease(key, index, e.ttl, None));
        let pair = KvPair::new(key, value.to_vec(), index);
        Ok(Written { pair, lease })
    }

    async fn delete(&self, key: &str, precondition: Precondition) -> Result<()> {
        self.change(|state| {
            let found = state.live(key, Instant::now()).map(|e| e.index);
            match (precondition, found) {
                (_, None) => Err(Error::not_found(key)),
                (Precondition::Index(want), Some(have)) if want != have => {
                    Err(Error::KeyModified { key: key.into() })
                }
                _ => {
                    state.keys.remove(key);
                    Ok(())
                }
            }
        })
    }

    async fn delete_tree(&self, dir: &str) -> Result<bool> {
        let gone: Vec<String> = self.tree(dir).into_iter().map(|p| p.key).collect();
        self.change(|state| {
            let own = state.live(dir, Instant::now()).is_some() && !dir.is_empty();
            for key in gone.iter().map(String::as_str).chain(own.then_some(dir)) {
                state.keys.remove(key);
            }
            Ok(!gone.is_empty() || own)
        })
    }

    async fn txn(&self, txn: Arc<CheckedTxn>) -> Result<Vec<Option<KvPair>>> {
        self.change(|state| {
            let now = Instant::now();
            let failed = first_failure(&txn.checks, |check| match check {
                Check::Held {
                    lock_key,
                    fencing_token,
                } => Found::Held(
                    state
                        .held(lock_key, now)
                        .is_some_and(|h| h.token == *fencing_token),
                ),
                other => Found::Key(state.live(other.key(), now).map(|e| e.index)),
            });
            if let Some(err) = failed {
                return Err(err);
            }
            state.revision += 1;
            let index = state.revision;
            for write in &txn.writes {
                match write {
                    Write::Put { key, value } => state.put(key, value.clone(), index, None),
                    Write::Delete { key } => drop(state.keys.remove(key)),
                }
            }
            Ok(txn.written(index))
        })
    }

    async fn register_again(&self, lost: LostRegistration<'_>) -> Result<Option<Arc<dyn Lease>>> {
        let LostRegistration { key, value, ttl } = lost;
        let index = self.change(|state| {
            let current = state.live(key, Instant::now());
            if current.is_some_and(|e| e.value != *value) {
                return Ok(None);
            }
            state.revision += 1;
            let index = state.revision;
            state.put(key, value.clone(), index, Some(ttl));
            Ok(Some(index))
        })?;
        Ok(index.map(|index| self.lease(key, index, ttl, None)))
    }

    async fn watch(&self, w: WatchRequest<'_>) -> Result<WatchStream> {
        let (key, cancel) = (w.key, w.cancel);
        Ok(self.watch_of(key, MapBackend::pair, cancel))
    }

    async fn watch_tree(&self, w: WatchRequest<'_>) -> Result<WatchTreeStream> {
        let (dir, cancel) = (w.key, w.cancel);
        Ok(self.watch_of(dir, MapBackend::tree, cancel))
    }

    async fn acquire(&self, lock: &LockSpec, tasks: &Tasks) -> Result<HeldLease> {
        let (key, opts) = (lock.key.as_str(), &lock.opts);
        loop {
            let mut changes = self.changes.subscribe();
            let sent = Instant::now();
            let taken = self.change(|state| {
                if let Some(hold) = state.held(key, sent) {
                    return Ok(Err(hold.expires));
                }
                state.revision += 1;
                let token = state.revision;
                let expires = sent + opts.ttl;
                state.locks.insert(key.to_owned(), Hold { token, expires });
                if let Some(value) = &opts.value {
                    // With `delete_on_unlock` the value expires with the hold.
                    let bound = opts.delete_on_unlock.then_some(opts.ttl);
                    state.put(key, value.clone(), token, bound);
                }
                Ok(Ok(token))
            })?;
            match taken {
                Ok(token) => {
                    let lease = self.lease(key, token, opts.ttl, Some(opts.delete_on_unlock));
                    return Ok(HeldLease::start(lease, opts.ttl, sent, token, tasks));
                }
                Err(expires) => {
                    // Held: wait for a release or the holder's deadline.
                    tokio::select! {
                        _ = changes.changed() => {}
                        () = tokio::time::sleep_until(expires) => {}
                    }
                }
            }
        }
    }
}

impl MapBackend {
    /// The live pair at `key`, if any.
    fn pair(&self, key: &str) -> Option<KvPair> {
        let (state, now) = (self.state(), Instant::now());
        let entry = state.live(key, now);
        entry.map(|e| KvPair::new(key, e.value.clone(), e.index))
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let store = BackendStore::new(MapBackend::default());
    store.put("app/config", b"on", None).await?;
    let mut lock = store.new_lock("app/leader", None).await?;
    lock.lock().await?;
    println!(
        "app/config = {:?}; lock held with fencing token {:?}",
        store.get("app/config", None).await?.value,
        lock.fencing_token()
    );
    lock.unlock().await?;
    store.close().await
}
