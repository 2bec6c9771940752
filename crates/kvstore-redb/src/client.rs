//! The database every handle of a redb store shares: the tables, the change feed, and the
//! transactions of the key and tree reads, conditional writes and TTL expiry (the reaper task
//! that deletes expired keys as their deadline passes); lock rows are in `lock.rs`,
//! `keep_alive` leases in `keep_alive.rs`. Transactions run on the blocking pool; writes go
//! through the group commit of `commit.rs`.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kvstore_core::backend::{Precondition, ttl_millis};
use kvstore_core::{Error, KvPair, Result, is_descendant};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{Notify, broadcast};

use crate::error::from_redb;
use crate::log::{self, next_revision};

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

/// The database and everything shared by all handles on it.
pub(crate) struct Shared {
    /// `None` only while dropping: the close (an fsync for a file) runs on the blocking pool.
    pub(crate) db: Option<Database>,
    pub(crate) backend: &'static str,
    pub(crate) max_value_size: usize,
    pub(crate) changes: broadcast::Sender<Change>,
    pub(crate) expiry_wakeup: Arc<Notify>,
    /// The queue of the group commit (`commit.rs`).
    pub(crate) committer: crate::commit::Committer<Shared>,
    /// The signals of key watches, by key: a change to a key wakes exactly its watches, not
    /// every subscriber of the feed.
    pub(crate) key_watches: std::sync::Mutex<HashMap<Arc<str>, Vec<Weak<Notify>>>>,
    /// The threads of this database's blocking calls ([`Shared::blocking`]).
    pub(crate) blocking_pool: crate::pool::BlockingPool,
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

/// The half-open key range holding every descendant of a non-empty `dir`: `dir/` up to `dir0`
/// (`'0'` is the byte after `'/'`), so `ab/x` is never inside `a`'s range.
pub(crate) fn descendant_range(dir: &str) -> (String, String) {
    (format!("{dir}/"), format!("{dir}0"))
}

impl Shared {
    /// Starts the expiry reaper on a thread of its own (with a single-threaded runtime), so it
    /// runs for as long as the database does, whichever runtimes its handles live in (two
    /// `#[tokio::test]`s of one binary share a file's database, each with its own runtime). It
    /// exits when the last handle is gone: `Drop` wakes it and it cannot upgrade its `Weak`.
    pub(crate) fn start_reaper(self: &Arc<Self>) -> Result<()> {
        let (shared, wakeup) = (Arc::downgrade(self), self.expiry_wakeup.clone());
        std::thread::Builder::new()
            .name("kvstore-redb-expiry".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                {
                    Ok(runtime) => runtime.block_on(reaper(shared, wakeup)),
                    Err(err) => tracing::error!(error = %err, "the expiry reaper cannot start"),
                }
            })
            .map(drop)
            .map_err(|e| Error::backend(self.backend, e))
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
            let mut deleted = Vec::new();
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
                    deleted.push(key.as_str());
                }
            }
            if !deleted.is_empty() {
                let revision = next_revision(&txn)?;
                log::append(
                    &txn,
                    revision,
                    deleted.into_iter().map(|k| log::delete(k, revision)),
                )?;
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

    /// Queues `write` for the next group commit and waits until that commit is durable;
    /// `write` returns its result and the changes to publish once committed (see `commit.rs`
    /// for the batching, refusals and cancel safety).
    pub(crate) async fn group_commit<T, F>(self: &Arc<Self>, write: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Shared, &redb::WriteTransaction) -> Result<(T, Vec<Change>)> + Send + 'static,
    {
        let published = move |shared: &Shared, txn: &redb::WriteTransaction| {
            let (value, changes) = write(shared, txn)?;
            let publish = move |shared: &Shared| {
                for change in changes {
                    shared.publish(change);
                }
            };
            Ok((value, publish))
        };
        self.committer.commit(self.backend, published).await
    }

    pub(crate) fn db(&self) -> &Database {
        self.db
            .as_ref()
            .expect("the database is open until `Shared` is dropped")
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// Wakes the watches `change` concerns: key watches through their own signals (the
    /// watches of that key; for a deleted tree, of every key in it), directory watches and
    /// lock waiters through the feed.
    pub(crate) fn publish(&self, change: Change) {
        {
            let mut watches = self.key_watches.lock().unwrap_or_else(|e| e.into_inner());
            let wake = |signals: &mut Vec<Weak<Notify>>| {
                signals.retain(|signal| match signal.upgrade() {
                    Some(signal) => {
                        // A permit is kept when the watch is not waiting: no wake-up is lost.
                        signal.notify_one();
                        true
                    }
                    None => false,
                });
            };
            // Entries whose watches are all gone are dropped as they are visited, so a key
            // write costs one lookup, not a walk of every watched key.
            match &change {
                Change::Key(key) => {
                    if let Some(signals) = watches.get_mut(key) {
                        wake(signals);
                        if signals.is_empty() {
                            watches.remove(key);
                        }
                    }
                }
                Change::Tree(_) => watches.retain(|key, signals| {
                    if change.touches_key(key) {
                        wake(signals);
                    }
                    !signals.is_empty()
                }),
                Change::Lock(_) => {}
            }
        }
        // No receiver is not an error: nobody is watching a directory or waiting for a lock.
        let _ = self.changes.send(change);
    }

    /// Removes a key watch's signal (its watch was dropped), and the key's entry with the last.
    pub(crate) fn forget_key_signal(&self, key: &str, signal: &Arc<Notify>) {
        let mut watches = self.key_watches.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(signals) = watches.get_mut(key) {
            signals
                .retain(|s| s.strong_count() > 0 && !std::ptr::eq(s.as_ptr(), Arc::as_ptr(signal)));
            if signals.is_empty() {
                watches.remove(key);
            }
        }
    }

    /// A wake-up signal for a watch of `key`, woken by every change to the key until the
    /// returned signal is dropped.
    pub(crate) fn watch_key_signal(&self, key: Arc<str>) -> Arc<Notify> {
        let signal = Arc::new(Notify::new());
        self.key_watches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default()
            .push(Arc::downgrade(&signal));
        signal
    }

    /// Runs `f` on this database's blocking threads (redb is synchronous and may fsync; see
    /// `pool.rs`).
    ///
    /// Cancel-safe up to the start of `f`; once queued, `f` runs to the end even if the
    /// caller's future is dropped.
    pub(crate) async fn blocking<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Shared) -> Result<T> + Send + 'static,
    {
        let shared = self.clone();
        self.blocking_pool.run(move || f(&shared)).await
    }

    pub(crate) fn create_tables(&self) -> Result<()> {
        let txn = self.db().begin_write().map_err(from_redb)?;
        txn.open_table(KV).map_err(from_redb)?;
        txn.open_table(EXPIRY).map_err(from_redb)?;
        txn.open_table(LOCKS).map_err(from_redb)?;
        log::create(&txn)?;
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
        Ok(self
            .read_tree_up_to(dir, usize::MAX)?
            .expect("no limit to exceed"))
    }

    /// [`read_tree`](Self::read_tree) that gives up (`Ok(None)`) once the directory holds
    /// more than `limit` entries, so a caller can read small directories in place and move
    /// large ones off the async worker.
    pub(crate) fn read_tree_up_to(
        &self,
        dir: &str,
        limit: usize,
    ) -> Result<Option<Option<Vec<KvPair>>>> {
        let txn = self.db().begin_read().map_err(from_redb)?;
        tree_in(&txn, dir, limit)
    }

    /// Every live pair under `dir` and the revision they were read at, in one transaction.
    pub(crate) fn read_tree_at(&self, dir: &str) -> Result<(Vec<KvPair>, u64)> {
        let txn = self.db().begin_read().map_err(from_redb)?;
        let pairs = tree_in(&txn, dir, usize::MAX)?.expect("no limit to exceed");
        Ok((pairs.unwrap_or_default(), log::revision(&txn)?))
    }

    /// The events under `dir` after revision `after`, read in one transaction (see `log.rs`).
    pub(crate) fn read_since(&self, dir: &str, after: u64) -> Result<kvstore_core::backend::Since> {
        let txn = self.db().begin_read().map_err(from_redb)?;
        log::since(&txn, dir, after)
    }
}

/// [`Shared::read_tree_up_to`] in `txn`.
fn tree_in(
    txn: &redb::ReadTransaction,
    dir: &str,
    limit: usize,
) -> Result<Option<Option<Vec<KvPair>>>> {
    {
        let kv = txn.open_table(KV).map_err(from_redb)?;
        let now = now_ms();
        let range = if dir.is_empty() {
            kv.iter().map_err(from_redb)?
        } else {
            let (start, end) = descendant_range(dir);
            kv.range(start.as_str()..end.as_str()).map_err(from_redb)?
        };
        let mut pairs = Vec::new();
        for (seen, entry) in range.enumerate() {
            if seen == limit {
                return Ok(None);
            }
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
        Ok(Some(
            (dir.is_empty() || dir_exists || !pairs.is_empty()).then_some(pairs),
        ))
    }
}

impl Shared {
    /// Writes `key` in `txn` (a group commit's transaction) under `expect`. A refusal returns
    /// before any table is touched. Returns the pair and the change to publish once committed.
    pub(crate) fn write(
        &self,
        txn: &redb::WriteTransaction,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        expect: Precondition,
    ) -> Result<(KvPair, Vec<Change>)> {
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
        let index = next_revision(txn)?;
        let expires_at = ttl.map_or(0, deadline_ms);
        kv.insert(key, (index, expires_at, value))
            .map_err(from_redb)?;
        if expires_at != 0 {
            expiry.insert((expires_at, key), ()).map_err(from_redb)?;
        }
        log::append(txn, index, [log::put(key, value, index)])?;
        Ok((
            KvPair::new(key, value.to_vec(), index),
            vec![Change::Key(key.into())],
        ))
    }

    /// Deletes `key` in `txn` under `expect`; a refusal returns before any table is touched.
    pub(crate) fn remove(
        &self,
        txn: &redb::WriteTransaction,
        key: &str,
        expect: Precondition,
    ) -> Result<((), Vec<Change>)> {
        let mut kv = txn.open_table(KV).map_err(from_redb)?;
        let mut expiry = txn.open_table(EXPIRY).map_err(from_redb)?;
        let current = kv.get(key).map_err(from_redb)?.map(|e| {
            let (index, expires_at, _) = e.value();
            (index, expires_at)
        });
        let Some((index, expires_at)) = current.filter(|&(_, exp)| is_live(exp, now_ms())) else {
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
        let revision = next_revision(txn)?;
        log::append(txn, revision, [log::delete(key, revision)])?;
        Ok(((), vec![Change::Key(key.into())]))
    }

    /// `Store::increment` in `txn` (a group commit's transaction): the live value at `key`
    /// (absent: 0) parsed as a decimal `i64` plus `delta`, written as a plain put. `None`, with
    /// nothing written, for a value that is not such a number or a sum that overflows (the
    /// caller's compare-and-swap then reports it).
    pub(crate) fn increment(
        &self,
        txn: &redb::WriteTransaction,
        key: &str,
        delta: i64,
    ) -> Result<(Option<i64>, Vec<Change>)> {
        let current = {
            let kv = txn.open_table(KV).map_err(from_redb)?;
            let entry = kv.get(key).map_err(from_redb)?;
            entry.and_then(|e| {
                let (_, expires_at, value) = e.value();
                is_live(expires_at, now_ms()).then(|| {
                    std::str::from_utf8(value)
                        .ok()
                        .and_then(|v| v.trim().parse::<i64>().ok())
                })
            })
        };
        let sum = match current {
            None => Some(delta),
            Some(Some(value)) => value.checked_add(delta),
            Some(None) => None,
        };
        let Some(sum) = sum else {
            return Ok((None, Vec::new()));
        };
        let (_, changes) = self.write(
            txn,
            key,
            sum.to_string().as_bytes(),
            None,
            Precondition::None,
        )?;
        Ok((Some(sum), changes))
    }

    /// [`write`](Self::write) through the group commit; wakes the expiry reaper for a TTL.
    pub(crate) async fn commit_write(
        self: &Arc<Self>,
        key: String,
        value: Vec<u8>,
        ttl: Option<Duration>,
        expect: Precondition,
    ) -> Result<KvPair> {
        let pair = self
            .group_commit(move |s, txn| s.write(txn, &key, &value, ttl, expect))
            .await?;
        if ttl.is_some() {
            self.expiry_wakeup.notify_one();
        }
        Ok(pair)
    }

    /// Deletes `dir` and its descendants in one commit; `Ok(false)` (nothing written) when no
    /// live key was there.
    pub(crate) fn remove_tree(&self, dir: &str) -> Result<bool> {
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
                return Ok(false);
            }
            for (key, expires_at) in &doomed {
                kv.remove(key.as_str()).map_err(from_redb)?;
                if *expires_at != 0 {
                    expiry
                        .remove((*expires_at, key.as_str()))
                        .map_err(from_redb)?;
                }
            }
            // Keys already expired but not yet reaped were never listed: no event for them.
            let revision = next_revision(&txn)?;
            let live = doomed.iter().filter(|(_, exp)| is_live(*exp, now));
            log::append(&txn, revision, live.map(|(k, _)| log::delete(k, revision)))?;
        }
        txn.commit().map_err(from_redb)?;
        self.publish(Change::Tree(dir.into()));
        Ok(true)
    }
}

impl crate::commit::Target for Shared {
    fn db(&self) -> &Database {
        Shared::db(self)
    }
    fn backend(&self) -> &'static str {
        self.backend
    }
}

/// Deletes expired keys as their TTL runs out, for as long as any handle on the database lives.
async fn reaper(shared: Weak<Shared>, wakeup: Arc<Notify>) {
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

impl Drop for Shared {
    fn drop(&mut self) {
        // The reaper wakes, finds no database and exits.
        self.expiry_wakeup.notify_one();
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
