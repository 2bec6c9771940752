//! The database every handle of a redb store shares, and its transactions: the tables, the
//! key and tree reads, conditional writes, expiry, lock rows, the change feed, and the key
//! lease and registrar for the lease engine. Transactions run on the blocking pool.

use std::fmt;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use kvstore_core::backend::{
    Lease, Precondition, Registrar, Registrations, Release, Renewal, Tasks, rewrite_precondition,
    ttl_millis, unless_superseded,
};
use kvstore_core::{Error, KvPair, Result, is_descendant};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{Notify, broadcast};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::error::{from_join, from_redb};

/// key → (last_index, expires_at in Unix milliseconds or 0 for never, value).
pub(crate) const KV: TableDefinition<'_, &str, (u64, u64, &[u8])> =
    TableDefinition::new("kvstore_kv");
/// (expires_at in Unix milliseconds, key) → (): the keys with a TTL, soonest first.
pub(crate) const EXPIRY: TableDefinition<'_, (u64, &str), ()> =
    TableDefinition::new("kvstore_expiry");
/// key → (fencing token, expires_at in Unix milliseconds, owner id): held locks. Kept apart from
/// `KV` so lock bookkeeping never shows in `list` or `watch_tree`.
pub(crate) const LOCKS: TableDefinition<'_, &str, (u64, u64, u64)> =
    TableDefinition::new("kvstore_locks");
/// Store-wide counters.
pub(crate) const META: TableDefinition<'_, &str, u64> = TableDefinition::new("kvstore_meta");
/// The last revision handed out; every write takes the next one, so `last_index` and fencing
/// tokens are persisted, store-wide monotonic, and survive a reopen.
pub(crate) const REVISION: &str = "revision";

/// Capacity of the in-process change feed. A watcher that falls further behind re-reads its
/// state, so a small buffer costs nothing but a re-read.
pub(crate) const CHANGE_FEED_CAPACITY: usize = 1024;

/// What changed, published after each commit to wake watchers and lock waiters.
#[derive(Debug, Clone)]
pub(crate) enum Change {
    /// One key was written, deleted or expired.
    Key(Arc<str>),
    /// A directory and everything below it was deleted.
    Tree(Arc<str>),
    /// A lock was released.
    Lock(Arc<str>),
}

impl Change {
    /// Whether this change can alter `watch(key)`'s result.
    pub(crate) fn touches_key(&self, key: &str) -> bool {
        match self {
            Change::Key(k) => &**k == key,
            Change::Tree(d) => &**d == key || is_descendant(key, d),
            Change::Lock(_) => false,
        }
    }

    /// Whether this change can alter `watch_tree(dir)`'s result.
    pub(crate) fn touches_tree(&self, dir: &str) -> bool {
        match self {
            Change::Key(k) => is_descendant(k, dir),
            Change::Tree(d) => {
                dir.is_empty() || &**d == dir || is_descendant(d, dir) || is_descendant(dir, d)
            }
            Change::Lock(_) => false,
        }
    }
}

/// Outcome of one attempt to take a lock.
#[derive(Debug)]
pub(crate) enum Acquire {
    /// Taken, with this fencing token.
    Acquired(u64),
    /// Held by someone else until this time (Unix milliseconds) unless renewed.
    Held(u64),
}

/// The database and everything shared by all handles on it.
pub(crate) struct Shared {
    /// `None` only while dropping: the close (an fsync for a file) runs on the blocking pool.
    pub(crate) db: Option<Database>,
    pub(crate) backend: &'static str,
    pub(crate) max_value_size: usize,
    pub(crate) changes: broadcast::Sender<Change>,
    pub(crate) expiry_wakeup: Arc<Notify>,
    pub(crate) reaper: Mutex<Option<AbortOnDropHandle<()>>>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The deadline of a TTL from now, in ms since the epoch, rounded up (never early).
pub(crate) fn deadline_ms(ttl: Duration) -> u64 {
    now_ms().saturating_add(ttl_millis(ttl))
}

pub(crate) fn is_live(expires_at: u64, now: u64) -> bool {
    expires_at == 0 || expires_at > now
}

pub(crate) fn next_revision(txn: &redb::WriteTransaction) -> Result<u64> {
    let mut meta = txn.open_table(META).map_err(from_redb)?;
    let rev = meta
        .get(REVISION)
        .map_err(from_redb)?
        .map_or(0, |v| v.value())
        + 1;
    meta.insert(REVISION, rev).map_err(from_redb)?;
    Ok(rev)
}

/// The half-open key range holding every descendant of a non-empty `dir`: `dir/` up to `dir0`
/// (`'0'` is the byte after `'/'`), so `ab/x` is never inside `a`'s range.
pub(crate) fn descendant_range(dir: &str) -> (String, String) {
    (format!("{dir}/"), format!("{dir}0"))
}

impl Shared {
    pub(crate) fn db(&self) -> &Database {
        self.db
            .as_ref()
            .expect("the database is open until `Shared` is dropped")
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    pub(crate) fn publish(&self, change: Change) {
        // No receiver is not an error: nobody is watching.
        let _ = self.changes.send(change);
    }

    /// Runs `f` on the blocking pool: redb is synchronous and may fsync.
    pub(crate) async fn blocking<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Shared) -> Result<T> + Send + 'static,
    {
        let shared = self.clone();
        tokio::task::spawn_blocking(move || f(&shared))
            .await
            .map_err(from_join)?
    }

    pub(crate) fn create_tables(&self) -> Result<()> {
        let txn = self.db().begin_write().map_err(from_redb)?;
        txn.open_table(KV).map_err(from_redb)?;
        txn.open_table(EXPIRY).map_err(from_redb)?;
        txn.open_table(LOCKS).map_err(from_redb)?;
        txn.open_table(META).map_err(from_redb)?;
        txn.commit().map_err(from_redb)
    }

    pub(crate) fn read_key(&self, key: &str) -> Result<Option<KvPair>> {
        let txn = self.db().begin_read().map_err(from_redb)?;
        let kv = txn.open_table(KV).map_err(from_redb)?;
        let now = now_ms();
        Ok(kv.get(key).map_err(from_redb)?.and_then(|entry| {
            let (index, expires_at, value) = entry.value();
            is_live(expires_at, now).then(|| KvPair::new(key, value.to_vec(), index))
        }))
    }

    /// `None` when neither `dir` nor any descendant exists.
    pub(crate) fn read_tree(&self, dir: &str) -> Result<Option<Vec<KvPair>>> {
        let txn = self.db().begin_read().map_err(from_redb)?;
        let kv = txn.open_table(KV).map_err(from_redb)?;
        let now = now_ms();
        let range = if dir.is_empty() {
            kv.iter().map_err(from_redb)?
        } else {
            let (start, end) = descendant_range(dir);
            kv.range(start.as_str()..end.as_str()).map_err(from_redb)?
        };
        let mut pairs = Vec::new();
        for entry in range {
            let (key, value) = entry.map_err(from_redb)?;
            let (index, expires_at, value) = value.value();
            if is_live(expires_at, now) {
                pairs.push(KvPair::new(key.value(), value.to_vec(), index));
            }
        }
        let dir_exists = !dir.is_empty()
            && kv
                .get(dir)
                .map_err(from_redb)?
                .is_some_and(|entry| is_live(entry.value().1, now));
        Ok((dir.is_empty() || dir_exists || !pairs.is_empty()).then_some(pairs))
    }

    pub(crate) fn write(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        expect: Precondition,
    ) -> Result<KvPair> {
        let txn = self.db().begin_write().map_err(from_redb)?;
        let pair = {
            let mut kv = txn.open_table(KV).map_err(from_redb)?;
            let mut expiry = txn.open_table(EXPIRY).map_err(from_redb)?;
            let current = kv.get(key).map_err(from_redb)?.map(|e| {
                let (index, expires_at, _) = e.value();
                (index, expires_at)
            });
            let live_index = current
                .filter(|&(_, exp)| is_live(exp, now_ms()))
                .map(|(i, _)| i);
            match (expect, live_index) {
                (Precondition::Absent, Some(_)) => {
                    return Err(Error::KeyExists { key: key.into() });
                }
                (Precondition::Index(_), None) => return Err(Error::not_found(key)),
                (Precondition::Index(want), Some(have)) if want != have => {
                    return Err(Error::KeyModified { key: key.into() });
                }
                _ => {}
            }
            if let Some((_, old_exp)) = current.filter(|&(_, exp)| exp != 0) {
                expiry.remove((old_exp, key)).map_err(from_redb)?;
            }
            let index = next_revision(&txn)?;
            let expires_at = ttl.map_or(0, deadline_ms);
            kv.insert(key, (index, expires_at, value))
                .map_err(from_redb)?;
            if expires_at != 0 {
                expiry.insert((expires_at, key), ()).map_err(from_redb)?;
            }
            KvPair::new(key, value.to_vec(), index)
        };
        txn.commit().map_err(from_redb)?;
        self.publish(Change::Key(key.into()));
        if ttl.is_some() {
            self.expiry_wakeup.notify_one();
        }
        Ok(pair)
    }

    pub(crate) fn remove(&self, key: &str, expect: Precondition) -> Result<()> {
        let txn = self.db().begin_write().map_err(from_redb)?;
        {
            let mut kv = txn.open_table(KV).map_err(from_redb)?;
            let mut expiry = txn.open_table(EXPIRY).map_err(from_redb)?;
            let current = kv.get(key).map_err(from_redb)?.map(|e| {
                let (index, expires_at, _) = e.value();
                (index, expires_at)
            });
            let Some((index, expires_at)) = current.filter(|&(_, exp)| is_live(exp, now_ms()))
            else {
                return Err(Error::not_found(key));
            };
            if let Precondition::Index(want) = expect
                && want != index
            {
                return Err(Error::KeyModified { key: key.into() });
            }
            kv.remove(key).map_err(from_redb)?;
            if expires_at != 0 {
                expiry.remove((expires_at, key)).map_err(from_redb)?;
            }
        }
        txn.commit().map_err(from_redb)?;
        self.publish(Change::Key(key.into()));
        Ok(())
    }

    pub(crate) fn remove_tree(&self, dir: &str) -> Result<()> {
        let txn = self.db().begin_write().map_err(from_redb)?;
        {
            let mut kv = txn.open_table(KV).map_err(from_redb)?;
            let mut expiry = txn.open_table(EXPIRY).map_err(from_redb)?;
            let now = now_ms();
            let mut doomed: Vec<(String, u64)> = Vec::new();
            let mut any_live = false;
            let mut collect = |key: &str, expires_at: u64| {
                any_live |= is_live(expires_at, now);
                doomed.push((key.to_owned(), expires_at));
            };
            if dir.is_empty() {
                for entry in kv.iter().map_err(from_redb)? {
                    let (k, v) = entry.map_err(from_redb)?;
                    collect(k.value(), v.value().1);
                }
            } else {
                if let Some(entry) = kv.get(dir).map_err(from_redb)? {
                    collect(dir, entry.value().1);
                }
                let (start, end) = descendant_range(dir);
                for entry in kv.range(start.as_str()..end.as_str()).map_err(from_redb)? {
                    let (k, v) = entry.map_err(from_redb)?;
                    collect(k.value(), v.value().1);
                }
            }
            if !any_live {
                return Err(Error::not_found(dir));
            }
            for (key, expires_at) in &doomed {
                kv.remove(key.as_str()).map_err(from_redb)?;
                if *expires_at != 0 {
                    expiry
                        .remove((*expires_at, key.as_str()))
                        .map_err(from_redb)?;
                }
            }
        }
        txn.commit().map_err(from_redb)?;
        self.publish(Change::Tree(dir.into()));
        Ok(())
    }

    /// Deletes every key whose TTL has run out; returns the next expiry time, if any.
    pub(crate) fn reap(&self) -> Result<Option<u64>> {
        let now = now_ms();
        let txn = self.db().begin_write().map_err(from_redb)?;
        let (expired, next) = {
            let mut kv = txn.open_table(KV).map_err(from_redb)?;
            let mut expiry = txn.open_table(EXPIRY).map_err(from_redb)?;
            let mut expired = Vec::new();
            let mut next = None;
            for entry in expiry.iter().map_err(from_redb)? {
                let (k, _) = entry.map_err(from_redb)?;
                let (expires_at, key) = k.value();
                if expires_at > now {
                    next = Some(expires_at);
                    break;
                }
                expired.push((expires_at, key.to_owned()));
            }
            for (expires_at, key) in &expired {
                expiry
                    .remove((*expires_at, key.as_str()))
                    .map_err(from_redb)?;
                // The index entry and the pair are written together, so the pair's own expiry
                // always matches; checking keeps a stale index entry from deleting a newer pair.
                let matches = kv
                    .get(key.as_str())
                    .map_err(from_redb)?
                    .is_some_and(|e| e.value().1 == *expires_at);
                if matches {
                    kv.remove(key.as_str()).map_err(from_redb)?;
                }
            }
            (expired, next)
        };
        if expired.is_empty() {
            txn.abort().map_err(from_redb)?;
        } else {
            txn.commit().map_err(from_redb)?;
            tracing::debug!(
                backend = self.backend,
                count = expired.len(),
                "expired keys"
            );
            for (_, key) in expired {
                self.publish(Change::Key(key.into()));
            }
        }
        Ok(next)
    }

    /// Pushes the expiry of a kept-alive key to now + `ttl`; `false` when the key is no
    /// longer the write that registered it (rewritten, deleted or expired).
    pub(crate) fn renew_key(&self, key: &str, index: u64, ttl: Duration) -> Result<bool> {
        let txn = self.db().begin_write().map_err(from_redb)?;
        {
            let mut kv = txn.open_table(KV).map_err(from_redb)?;
            let mut expiry = txn.open_table(EXPIRY).map_err(from_redb)?;
            let current = kv.get(key).map_err(from_redb)?.map(|e| {
                let (index, expires_at, value) = e.value();
                (index, expires_at, value.to_vec())
            });
            match current {
                Some((have, expires_at, value))
                    if have == index && is_live(expires_at, now_ms()) =>
                {
                    let renewed = deadline_ms(ttl);
                    expiry.remove((expires_at, key)).map_err(from_redb)?;
                    expiry.insert((renewed, key), ()).map_err(from_redb)?;
                    kv.insert(key, (index, renewed, value.as_slice()))
                        .map_err(from_redb)?;
                }
                _ => return Ok(false),
            }
        }
        txn.commit().map_err(from_redb)?;
        Ok(true)
    }

    /// Takes the lock on `key` for `owner` if it is free or its holder's TTL ran out; writes the
    /// lock's value in the same transaction.
    pub(crate) fn try_acquire(
        &self,
        key: &str,
        owner: u64,
        ttl: Duration,
        value: Option<&[u8]>,
    ) -> Result<Acquire> {
        let txn = self.db().begin_write().map_err(from_redb)?;
        let token = {
            let mut locks = txn.open_table(LOCKS).map_err(from_redb)?;
            if let Some(entry) = locks.get(key).map_err(from_redb)? {
                let (_, expires_at, _) = entry.value();
                if expires_at > now_ms() {
                    return Ok(Acquire::Held(expires_at));
                }
            }
            let token = next_revision(&txn)?;
            locks
                .insert(key, (token, deadline_ms(ttl), owner))
                .map_err(from_redb)?;
            if let Some(value) = value {
                let mut kv = txn.open_table(KV).map_err(from_redb)?;
                let mut expiry = txn.open_table(EXPIRY).map_err(from_redb)?;
                let old_exp = kv.get(key).map_err(from_redb)?.map(|e| e.value().1);
                if let Some(old_exp) = old_exp.filter(|&e| e != 0) {
                    expiry.remove((old_exp, key)).map_err(from_redb)?;
                }
                kv.insert(key, (token, 0, value)).map_err(from_redb)?;
            }
            token
        };
        txn.commit().map_err(from_redb)?;
        if value.is_some() {
            self.publish(Change::Key(key.into()));
        }
        Ok(Acquire::Acquired(token))
    }

    /// Extends a held lock; `false` when it is no longer held by `owner` with `token`.
    pub(crate) fn renew_lock(
        &self,
        key: &str,
        owner: u64,
        token: u64,
        ttl: Duration,
    ) -> Result<bool> {
        let txn = self.db().begin_write().map_err(from_redb)?;
        {
            let mut locks = txn.open_table(LOCKS).map_err(from_redb)?;
            let held = locks.get(key).map_err(from_redb)?.is_some_and(|e| {
                e.value().0 == token && e.value().2 == owner && e.value().1 > now_ms()
            });
            if !held {
                return Ok(false);
            }
            locks
                .insert(key, (token, deadline_ms(ttl), owner))
                .map_err(from_redb)?;
        }
        txn.commit().map_err(from_redb)?;
        Ok(true)
    }

    /// Releases a lock held by `owner` with `token`, deleting the key too when asked.
    pub(crate) fn release_lock(
        &self,
        key: &str,
        owner: u64,
        token: u64,
        delete_value: bool,
    ) -> Result<()> {
        let txn = self.db().begin_write().map_err(from_redb)?;
        let deleted_value = {
            let mut locks = txn.open_table(LOCKS).map_err(from_redb)?;
            let ours = locks
                .get(key)
                .map_err(from_redb)?
                .is_some_and(|e| e.value().0 == token && e.value().2 == owner);
            if !ours {
                return Ok(());
            }
            locks.remove(key).map_err(from_redb)?;
            let mut deleted = false;
            if delete_value {
                let mut kv = txn.open_table(KV).map_err(from_redb)?;
                let mut expiry = txn.open_table(EXPIRY).map_err(from_redb)?;
                if let Some(old_exp) = kv.remove(key).map_err(from_redb)?.map(|e| e.value().1) {
                    deleted = true;
                    if old_exp != 0 {
                        expiry.remove((old_exp, key)).map_err(from_redb)?;
                    }
                }
            }
            deleted
        };
        txn.commit().map_err(from_redb)?;
        if deleted_value {
            self.publish(Change::Key(key.into()));
        }
        self.publish(Change::Lock(key.into()));
        Ok(())
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Ok(mut reaper) = self.reaper.lock() {
            reaper.take();
        }
        // Closing a file database syncs it: never on an async worker. (A reopen right after
        // waits for it through `open`'s retry.)
        if let Some(db) = self.db.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn_blocking(move || drop(db))),
                Err(_) => drop(db),
            }
        }
    }
}

/// Deletes expired keys as their TTL runs out, for as long as any handle on the database lives.
pub(crate) async fn reaper(shared: Weak<Shared>, wakeup: Arc<Notify>) {
    loop {
        let Some(strong) = shared.upgrade() else {
            return;
        };
        let next = match strong.blocking(Shared::reap).await {
            Ok(next) => next,
            Err(err) => {
                tracing::warn!(backend = strong.backend, error = %err, "expiring keys failed; retrying");
                Some(now_ms() + 1000)
            }
        };
        drop(strong);
        let sleep = next.map(|at| Duration::from_millis(at.saturating_sub(now_ms())));
        match sleep {
            Some(d) => {
                tokio::select! {
                    () = tokio::time::sleep(d) => {}
                    () = wakeup.notified() => {}
                }
            }
            None => wakeup.notified().await,
        }
    }
}

/// A `keep_alive` key's lease: its own deadline in the file, pushed forward while the key
/// still holds the write that registered it.
pub(crate) struct KeyLease {
    pub(crate) shared: Arc<Shared>,
    pub(crate) key: String,
    pub(crate) index: u64,
    pub(crate) ttl: Duration,
}

impl fmt::Debug for KeyLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyLease")
            .field("key", &self.key)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Lease for KeyLease {
    async fn renew(&self) -> Result<Renewal> {
        let (key, index, ttl) = (self.key.clone(), self.index, self.ttl);
        let renewed = self
            .shared
            .blocking(move |s| s.renew_key(&key, index, ttl))
            .await?;
        Ok(Renewal::held(renewed))
    }

    /// Nothing to give back: the key's deadline is the lease.
    async fn release(&self, _why: Release) -> Result<()> {
        Ok(())
    }
}

/// Writes a lost registration again (the process was paused past its TTL and the key
/// expired): only where the key is absent or still holds the registered value.
pub(crate) struct KeyRegistrar(pub(crate) Arc<Shared>);

#[async_trait]
impl Registrar for KeyRegistrar {
    async fn register_again(
        &self,
        key: &str,
        value: &Bytes,
        ttl: Duration,
    ) -> Result<Option<(Arc<dyn Lease>, Instant)>> {
        let k = key.to_owned();
        let current = self.0.blocking(move |s| s.read_key(&k)).await?;
        let Some(expect) = rewrite_precondition(current.as_ref(), value) else {
            return Ok(None);
        };
        let sent = Instant::now();
        let (k, v) = (key.to_owned(), value.to_vec());
        let written = self
            .0
            .blocking(move |s| s.write(&k, &v, Some(ttl), expect))
            .await;
        Ok(unless_superseded(written)?.map(|pair| {
            let lease: Arc<dyn Lease> = Arc::new(KeyLease {
                shared: self.0.clone(),
                key: key.to_owned(),
                index: pair.last_index,
                ttl,
            });
            (lease, sent)
        }))
    }
}

/// How long `close` waits for lock releases.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Per-handle state: its background work (lock renewals, registrations) and the token that
/// ends its watches and locks.
pub(crate) struct Session {
    pub(crate) tasks: Tasks,
    pub(crate) registrations: Registrations,
}

impl Session {
    pub(crate) fn new() -> Self {
        let tasks = Tasks::new();
        Session {
            registrations: Registrations::new(&tasks),
            tasks,
        }
    }

    pub(crate) fn cancel(&self) -> &CancellationToken {
        self.tasks.cancel_token()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.tasks.cancel_token().cancel();
    }
}
